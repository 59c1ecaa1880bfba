"""Files that appear whole: written under a temporary name beside their destination, then renamed.

A reader never sees half a file under the final name, even if the writer dies. The temporary file is
created with the permissions any new file gets (0666 less the umask, as ``open`` would give), not
``tempfile.mkstemp``'s owner-only 0600, so outputs, downloads and published models are as readable as
the user's other files.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _temp_beside(dest: Path, suffix: str) -> tuple[int, Path]:
    """(open write descriptor, path) of a new file named ``.{dest.name}.{random}{suffix}`` beside ``dest``."""
    while True:
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(4)}{suffix}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:  # another writer drew the same name
            continue


@contextmanager
def atomic_path(dest: Path, suffix: str = ".part") -> Iterator[Path]:
    """Yield a temp path beside ``dest``: renamed to ``dest`` if the block succeeds, else deleted."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_beside(dest, suffix)
    mode = os.fstat(fd).st_mode & 0o777
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)  # a writer that made the file anew (safetensors' save_file) made it 0600
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
