"""Errors for missing, broken or unsafe weight files; every message is fit for end users."""

from __future__ import annotations


class WeightsError(Exception):
    """Base class of every error raised for a missing, broken or unsafe weight file."""


class WeightsNotFoundError(WeightsError):
    """No copy of the requested weights could be found or downloaded."""


class ChecksumMismatchError(WeightsError):
    """A downloaded file does not have the official sha256 (it has been deleted)."""


class DownloadError(WeightsError):
    """A download started but did not complete (nothing was kept)."""


class UnsafeCheckpointError(WeightsError):
    """A checkpoint holds pickled objects other than tensors and plain containers; it was not loaded."""


class CheckpointError(WeightsError):
    """A file that is not a readable checkpoint of the expected kind."""
