"""An exclusive lock file that a child process can keep holding (``flock`` on POSIX, ``filelock`` elsewhere).

The rule of the data modules (applied once, in :func:`lrs_plugin.data._install.install_lock`): one lock file per
destination, held for the whole fetch; a second fetch of the same destination waits for it. On POSIX the lock is a
plain ``fcntl.flock`` (what ``filelock.FileLock`` uses there too, so both kinds exclude each other) and
:func:`exclusive_lock` yields its descriptor: a child started with it in ``pass_fds`` (see
:mod:`lrs_plugin.data._child`) holds the lock until it exits, even if the parent was killed. The lock is never
removed from disk (removing it would let two processes lock two different files of the same name).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["exclusive_lock"]


@contextmanager
def exclusive_lock(path: str | Path, *, on_wait: Callable[[], None] | None = None) -> Iterator[int | None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the block; wait while another process holds it.

    Args:
        path: The lock file.
        on_wait: Called once, before waiting, when the lock is held elsewhere (e.g. to say so on stderr).

    Yields:
        The locked descriptor on POSIX (pass it to a child to extend the lock to its lifetime), else ``None``.
    """
    if fcntl is None:
        from filelock import FileLock, Timeout

        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            if on_wait is not None:
                on_wait()
            lock.acquire()
        try:
            yield None
        finally:
            lock.release()
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)  # no LOCK_UN: a child that inherited the descriptor keeps the lock until it exits
