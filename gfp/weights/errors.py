"""Errors for missing, broken or unsafe weight files; every message is fit for end users."""

from __future__ import annotations


class WeightsError(Exception):
    """Base class of every error raised for a missing, broken or unsafe weight file."""


class WeightsNotFoundError(WeightsError):
    """No copy of the requested weights could be found or downloaded."""


class ChecksumMismatchError(WeightsError):
    """A downloaded file is not the published one: another sha256 or size, or, where neither is known, no
    PyTorch checkpoint at all (it has been deleted)."""


class DownloadError(WeightsError):
    """A download started but did not complete (nothing was kept)."""


class UnsafeCheckpointError(WeightsError):
    """A checkpoint holds pickled objects other than tensors and plain containers; it was not loaded."""


class CheckpointError(WeightsError):
    """A file that is not a readable checkpoint of the expected kind."""
