"""What a killed data command must not leave behind: worker processes and temporary files.

- `pool`: a process pool whose workers never outlive the command. A `cmt data cache` killed with
  SIGTERM or SIGKILL used to leave its reading processes running (and holding memory) until they
  had drained their queue. Each worker asks the kernel to send it SIGTERM when its parent dies
  (Linux `prctl(PR_SET_PDEATHSIG)`), and also polls for its parent once a second (other systems,
  and the start-up window before prctl takes effect), exiting at once when the parent is gone.
- `exclusive_build`: one build at a time in a folder (a lock the kernel drops when its holder
  dies, however it dies), and the hidden temporary files of an interrupted build removed at the
  start of the next (`fileio.atomic_path` names them `.<target name>.<random>`).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

from cmtlib.errors import CmtError

try:
    import fcntl
except ImportError:  # not POSIX: builds take no lock and clean nothing (a live build's files look the same)
    fcntl = None

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_SECONDS = 1.0


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(POLL_SECONDS)
        if os.getppid() != parent:
            os._exit(1)  # no cleanup to run: the parent that wanted our results is gone


def die_with_parent(parent: int, init: Callable[..., Any] | None = None, args: tuple = ()) -> None:
    """Worker initializer: end this process when `parent` (the pid that started the pool) dies,
    then run the caller's own initializer."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # no prctl (an unusual libc): the poll below still ends us
    if os.getppid() != parent:
        os._exit(1)  # the parent died before prctl was in place
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="parent-watch").start()
    if init is not None:
        init(*args)


def pool(workers: int, init: Callable[..., Any] | None = None, args: tuple = ()) -> ProcessPoolExecutor:
    """A ProcessPoolExecutor whose workers die with this process (module docstring)."""
    return ProcessPoolExecutor(max_workers=workers, initializer=die_with_parent, initargs=(os.getpid(), init, args))


class BusyError(CmtError):
    """Another process is building into the same folder."""


@contextlib.contextmanager
def exclusive_build(folder: Path, targets: tuple[str, ...], wait: float = 10.0) -> Iterator[int]:
    """Hold the folder's build lock; yields how many stale temporary files of `targets` were removed.

    The lock is taken on the folder itself (flock on its descriptor), so no lock file is left in it,
    and the kernel releases it when its holder ends, even by SIGKILL.

    Raises:
        BusyError: another build still holds the lock after `wait` seconds.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield 0
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        _lock(fd, folder, wait)
        yield _remove_stale(folder, targets)
    finally:
        os.close(fd)  # releases the lock


def _lock(fd: int, folder: Path, wait: float) -> None:
    """flock `fd`, retrying for `wait` seconds: the workers of a build killed a moment ago share its
    descriptor and release the lock only as they finish exiting."""
    end = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError as err:
            if time.monotonic() >= end:
                raise BusyError(f"another build is writing into {folder} right now; wait for it to finish "
                                "(or stop it), then run the command again") from err
        time.sleep(0.2)


def _remove_stale(folder: Path, targets: tuple[str, ...]) -> int:
    """Under the lock no build is running, so every `.<target>.*` temporary file is a leftover."""
    n = 0
    for name in targets:
        for tmp in folder.glob(f".{name}.*"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                n += 1
    return n
