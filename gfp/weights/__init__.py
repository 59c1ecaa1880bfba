"""Weight files, split by job.

- :mod:`gfp.weights.resolve`: where a model's file is found (the resolution order), returned as a
  :class:`~gfp.weights.resolve.Resolved` (path, registry entry, format);
- :mod:`gfp.weights.download`: downloading a registry entry atomically and verifying it;
- :mod:`gfp.weights.files`: reading checkpoints without running pickled code, and our published format;
- :mod:`gfp.weights.errors`: the errors all of them raise.

What each model is lives in :mod:`gfp.registry`; building networks from weights in :mod:`gfp.loading`.
"""
