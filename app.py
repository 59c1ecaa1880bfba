"""Gradio app (the Hugging Face Space) for gfp blind face restoration.

Drop a photo, compare before and after on a slider, look at every face before and after, and download
the full-resolution result as the exact file (PNG by default, so alpha and 16-bit survive). The same
function is the API endpoint ``/restore`` (gradio_client) and an MCP tool. The Video tab restores the faces
of a clip and keeps its sound (endpoint and MCP tool ``/restore_video``).

    python app.py                                  # http://127.0.0.1:7860, GFPGAN v1.4
    python app.py --model owner/repo --device cuda # add a Hub model (or a file path) and make it the default

Every flag has an environment variable (shown by ``--help``) so a Space can be configured without code.
Networks are loaded lazily, once per weight file, into one shared :class:`gfp.pipeline.Restorer`. The app
itself is the package :mod:`gfp.app`; this file starts it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence

from gfp.app.settings import check_weights, default_model_spec, listen_problem, parse_args
from gfp.app.ui import build_app, launch
from gfp.atomic import unwinding_on_termination
from gfp.pipeline import RestoreOptions, Restorer


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: parse flags, check (and on a Space download) the weights, build, serve."""
    settings = parse_args(argv)
    problem = listen_problem(settings)
    if problem:  # said now, not after the weights are checked (downloaded, on a Space)
        raise SystemExit(f"app.py: error: {problem}")
    try:
        restorer = Restorer(settings.weights_dir, settings.device, backend=settings.backend)
    except ValueError as exc:  # e.g. --device cuda on a machine without CUDA, --backend openvino on a GPU
        raise SystemExit(f"app.py: error: {exc}") from None
    weights = check_weights(settings, restorer)
    for message in weights.missing + weights.fallbacks:  # whole, for the owner: where it looked, how to fix
        print(f"app.py: {message}")
    if not weights.missing:
        warm_up(restorer, default_model_spec(settings))
    # A stopped service (SIGTERM) ends as Ctrl-C does: the server closes and the results' folder is removed;
    # during gradio's start-up (after it listens, before it waits) either leaves quietly too.
    with unwinding_on_termination(), contextlib.suppress(KeyboardInterrupt):
        launch(build_app(settings, restorer, weights), settings)


def warm_up(restorer: Restorer, spec: str) -> list[threading.Thread]:
    """Start loading the default generator and the face parser while the server starts, so the first request
    does not wait for them: :meth:`gfp.pipeline.Restorer.prepare` in background threads (returned; join to
    wait), which with the OpenVINO backend also converts and compiles them for a request's batch of faces.
    A request that comes sooner waits on the same load (the Restorer loads each model once); a failure is
    left for the request that needs the network to report."""
    return restorer.prepare(RestoreOptions(version=spec))


if __name__ == "__main__":
    main()
