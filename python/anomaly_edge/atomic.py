"""Files and folders that appear complete or not at all, with ordinary permissions.

Every output anomaly-edge writes (metrics, checkpoints, curves, JSON Lines, overlays, run
folders) goes through here: written under a temporary name in the target's own folder, then
renamed into place, so a reader or a crash never leaves a half-written file. ``mkstemp``
creates files mode 0600 and ``mkdtemp`` folders 0700; the result gets the mode a plain
``open()`` / ``mkdir`` would have given it (0666 / 0777 less the umask).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def current_umask() -> int:
    """The process umask, read without changing it where the system allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-by-setting, restored at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a library that writes by file name
    (``savefig``, ``torch.save``); renamed onto ``path`` when the block ends without error."""
    path = Path(path)
    # The temporary name adds about 14 characters: shorten its prefix so that a name close
    # to the file system's limit (255 bytes) can still be written.
    prefix = "." + os.fsencode(path.name)[:64].decode(errors="ignore") + "-"
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w", **open_kwargs: Any) -> Iterator[IO[Any]]:
    """``open(path, mode)`` that lands complete: yields the handle of a temporary file."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode 'w' or 'wb', not {mode!r}")
    if mode == "w":
        open_kwargs.setdefault("encoding", "utf-8")
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


def make_staging_folder(target: str | Path) -> Path:
    """An empty folder beside ``target`` (same file system, ordinary mode) to build it in."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-new-", dir=target.parent))
    staging.chmod(0o777 & ~current_umask())
    return staging


def swap_in_folder(staging: Path, target: Path) -> None:
    """Put the folder ``staging`` at ``target``, replacing a previous ``target`` as a whole.

    On Linux the two are exchanged in one atomic step (``renameat2(RENAME_EXCHANGE)``), so a
    reader sees the old folder or the new one, never a mix, and never none. Elsewhere the old
    folder is first renamed aside (a reader may briefly find no folder, still never a mix).
    The old content is deleted afterwards.
    """
    if not target.exists():
        os.replace(staging, target)
        return
    if _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # staging now holds the old folder
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
    os.replace(target, old / target.name)
    os.replace(staging, target)
    shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    result = renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return bool(result == 0)
