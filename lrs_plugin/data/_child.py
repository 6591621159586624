"""Child processes that do not outlive the fetch that started them.

Extracting the 57 GB LRS-VQA archive with a 7-Zip binary takes minutes. An ordinary child survives its parent: a
``SIGKILL``-ed (or OOM-killed) ``lrs-plugin fetch`` leaves ``7zz`` writing into the ``.extract-partial-*`` folder
while the rerun extracts beside it. :func:`tied_popen` starts the child so that it goes with its parent:

* on Linux the child asks the kernel for ``SIGKILL`` when its parent dies (``prctl(PR_SET_PDEATHSIG)``), and kills
  itself at once when the parent already died between ``fork`` and that call (elsewhere this step is skipped);
* it runs in a session (process group) of its own, which is killed as a whole when the parent raises, a
  ``KeyboardInterrupt`` included (Ctrl-C in the terminal does not reach a child in another session);
* the descriptors in ``pass_fds`` are inherited: pass a held ``flock`` and the lock stays held until the child has
  exited too, so even a child that outlived its parent (no ``PR_SET_PDEATHSIG`` on this platform) never has a
  second fetch extracting beside it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["child_options", "kill_group", "tied_popen"]

_PR_SET_PDEATHSIG = 1
"""``PR_SET_PDEATHSIG`` of ``<linux/prctl.h>``."""


def _die_with_parent() -> Callable[[], None] | None:
    """Return a ``preexec_fn`` that sets ``PR_SET_PDEATHSIG`` to ``SIGKILL``, or ``None`` off Linux / without libc.

    ``prctl`` is looked up here, in the parent, so the child only calls it between ``fork`` and ``exec``.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl: no signal will come
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def child_options(pass_fds: Sequence[int] = ()) -> dict[str, Any]:
    """Keyword arguments for :class:`subprocess.Popen` / :func:`subprocess.run` that tie the child to this process.

    Args:
        pass_fds: Open descriptors the child inherits (e.g. a held lock).

    Returns:
        ``start_new_session`` (POSIX), ``preexec_fn`` (Linux) and ``pass_fds`` (when given).
    """
    options: dict[str, Any] = {}
    if os.name == "posix":
        options["start_new_session"] = True
    preexec = _die_with_parent()
    if preexec is not None:
        options["preexec_fn"] = preexec
    if pass_fds:
        options["pass_fds"] = tuple(pass_fds)
    return options


def kill_group(proc: subprocess.Popen) -> None:
    """``SIGKILL`` the process group led by ``proc`` (POSIX; elsewhere ``proc`` itself), then reap ``proc``.

    A no-op once ``proc`` has been reaped: its id may then belong to another process.
    """
    if proc.returncode is None:
        try:
            if os.name == "posix":
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                proc.kill()
        except (ProcessLookupError, PermissionError):  # not a group leader (started elsewhere): the child alone
            proc.kill()
    proc.wait()


@contextmanager
def tied_popen(cmd: Sequence[str], *, pass_fds: Sequence[int] = (), **kwargs: Any) -> Iterator[subprocess.Popen]:
    """Start ``cmd`` tied to this process (see the module docstring) and yield it.

    On leaving the block the pipes are closed and the child is waited for; when the block raises, the child's
    process group is killed first.

    Args:
        cmd: The command line.
        pass_fds: Open descriptors the child inherits.
        **kwargs: Further :class:`subprocess.Popen` arguments (``stdout``, ``stderr``, ``env``, ...).

    Yields:
        The running child.
    """
    proc = subprocess.Popen(list(cmd), **kwargs, **child_options(pass_fds))
    try:
        yield proc
    except BaseException:
        kill_group(proc)
        raise
    finally:
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        proc.wait()
