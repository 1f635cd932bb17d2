"""Write a file so that readers only ever see the previous version or the complete new one."""

import os
import tempfile
from typing import BinaryIO, Callable

# The name of a file being written: ".tmp-<name><random>" beside the target (never read as the
# target).
TEMPORARY_PREFIX = ".tmp-"


def _umask() -> int:
    """The process umask, read without changing it where /proc tells it (changing it races with
    other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(file)`` on a temporary file beside ``path`` (usual permissions, fsynced), then
    rename it over ``path`` and fsync the folder. On any error the temporary file is removed and
    ``path`` is left as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TEMPORARY_PREFIX + os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600 files
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    folder_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(folder_fd)  # the rename itself survives a power loss
    finally:
        os.close(folder_fd)
