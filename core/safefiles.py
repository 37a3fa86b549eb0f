"""Files a store written by anyone (a broken or hostile training job) may hold, read and written safely.

- read_small_file: regular files only, without following symlinks or blocking on a FIFO, bounded in size;
- fsync_file / fsync_dir: what makes a publish durable before its rename;
- held: whether a live process holds a lock file (flock), which tells a killed writer's leftovers;
- without_paths / describe: error texts that name files, never where the server keeps them.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
from pathlib import Path


def held(lock: Path) -> bool:
    """Whether a live process holds this lock file. A missing file, or anything but a regular file (a
    FIFO, which a plain open would wait on forever; a symlink), is held by nobody."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def read_small_file(path: Path, max_bytes: int) -> bytes:
    """A regular file's bytes, refusing anything else without blocking on it.

    O_NONBLOCK makes opening a FIFO return at once (a plain open would wait for a writer forever);
    the fstat check then refuses it, like any device, directory or file over max_bytes. O_NOFOLLOW
    refuses a symlink (ELOOP): a version's file that points at /proc/self/environ is not read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError("is not a regular file")
        if info.st_size > max_bytes:
            raise OSError(f"has {info.st_size} bytes, more than {max_bytes}")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            data = handle.read(max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise OSError(f"has more than {max_bytes} bytes")
    return data


def fsync_file(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            fsync_file(child)
        fsync_dir(path)
        return
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def without_paths(text: str) -> str:
    """The text with each absolute path cut to its last part: reasons that reach clients name files, not
    where the server keeps them (ONNX Runtime's messages spell out the version folder, for one)."""
    return _ABSOLUTE_PATH.sub(lambda found: Path(found[0]).name or "/", text)


_ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/[^\s\"'():,;]+")


def describe(exc: BaseException) -> str:
    """What went wrong, without the path an OSError names (reasons reach clients)."""
    if isinstance(exc, OSError) and exc.strerror:
        return "is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror.lower()
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
