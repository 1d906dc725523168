"""Locks that keep an index folder consistent when several processes use it (the ``filelock`` package).

Two lock files live beside an index folder ``NAME`` (not inside it: the folder itself is replaced by a save):

- ``.NAME.lock``, the **writer lock** (exclusive): held for a whole read-modify-save (``ragctx index add``,
  ``delete``, ``build --out``, :meth:`Index.editing <ragctx.index.Index.editing>`, and every
  :meth:`~ragctx.index.Index.save`), so two writers never both start from the same old index. A second writer
  waits, saying so, or refuses at once with ``wait=False`` (the CLI's ``--no-wait``). The OS releases it when its
  process dies, kill -9 included.
- ``.NAME.swap.lock``, the **swap lock** (readers share it, the swap takes it alone, for milliseconds): a load reads
  the manifest and files of one version only, and no reader ever finds the folder missing between the two renames
  of a swap.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import RagctxError

__all__ = ["writer_lock", "swap_lock", "read_lock", "lock_files", "umask"]


def lock_files(path: Path) -> tuple[Path, Path]:
    """(writer lock, swap lock) of the index folder ``path``."""
    path = Path(path).absolute()
    return path.parent / f".{path.name}.lock", path.parent / f".{path.name}.swap.lock"


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@contextmanager
def writer_lock(path: str | Path, *, wait: bool = True, timeout: float | None = None,
                notify: Callable[[str], None] | None = _say) -> Iterator[None]:
    """Holds the writer lock of index folder ``path`` (re-entrant within a process). Busy: with ``wait``, tells
    ``notify`` and waits (at most ``timeout`` seconds, None: as long as it takes); without, raises RagctxError."""
    from filelock import FileLock, Timeout

    path = Path(path)
    file = lock_files(path)[0]
    if not file.parent.is_dir():
        raise RagctxError(f"{file.parent}: no such folder for the index {path.name}")
    lock = FileLock(str(file), is_singleton=True, mode=0o666 & ~umask())  # one instance per path: nested holds
    try:                                                                   # count, never deadlock
        lock.acquire(blocking=False)
    except Timeout:
        if not wait:
            raise RagctxError(f"another process is writing the index {path} (it holds {file}); try again when it "
                              "is done, or leave out --no-wait to wait for it") from None
        if notify is not None:
            notify(f"waiting for another process writing the index {path} (lock {file.name}) ...")
        try:
            lock.acquire(timeout=-1 if timeout is None else timeout)
        except Timeout:
            raise RagctxError(f"the index {path} stayed locked by another writer for {timeout} s ({file})") from None
    except OSError as e:  # after Timeout, which is an OSError too
        raise RagctxError(f"cannot lock the index {path} for writing ({file}: {e.strerror or e}); check that its "
                          "folder is writable") from None
    try:
        yield
    finally:
        lock.release()


_THREADS: dict[str, threading.RLock] = {}  # one per swap-lock file: the file lock coordinates processes, not threads
_THREADS_GUARD = threading.Lock()


def umask() -> int:
    """The process's umask (read without changing it for longer than the call)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def _swap(path: Path, mode: str) -> Iterator[None]:
    """The swap lock in ``mode`` ("read" or "write"): threads of this process take turns (filelock's reader/writer
    lock is one instance per file and process), processes share reads and exclude a swap."""
    from filelock import ReadWriteLock

    file = lock_files(path)[1]
    with _THREADS_GUARD:
        local = _THREADS.setdefault(str(file), threading.RLock())
    with local:
        fresh = not file.exists()
        lock = ReadWriteLock(str(file), is_singleton=True)
        with lock.read_lock() if mode == "read" else lock.write_lock():
            if fresh:  # SQLite creates it 0600: follow the umask, so other users of a shared index can lock it too
                try:
                    os.chmod(file, 0o666 & ~umask())
                except OSError:
                    pass
            yield


@contextmanager
def read_lock(path: str | Path) -> Iterator[None]:
    """Shares the swap lock while an index is read (no save swaps folders meanwhile). A folder that does not exist
    has nothing to protect (no lock file is left behind for a mistyped path); a read-only one cannot be swapped
    either: both are read without a lock."""
    path = Path(path)
    if not path.exists():
        yield
        return
    try:
        held = _swap(path, "read")
        held.__enter__()
    except (OSError, sqlite3.Error):  # a read-only folder: no writer can swap it either, so read it as it is
        yield
        return
    try:
        yield
    finally:
        held.__exit__(None, None, None)


@contextmanager
def swap_lock(path: str | Path) -> Iterator[None]:
    """Takes the swap lock alone while folders are renamed (waits for readers that are loading)."""
    try:
        held = _swap(Path(path), "write")
        held.__enter__()
    except (OSError, sqlite3.Error) as e:
        raise RagctxError(f"cannot lock the index {path} to swap in the new version ({e}); check that its folder "
                          "is writable") from None
    try:
        yield
    finally:
        held.__exit__(None, None, None)
