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

import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import RagctxError

__all__ = ["writer_lock", "swap_lock", "read_lock", "lock_files"]


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
    lock = FileLock(str(file), is_singleton=True)  # one instance per path: nested holds count, never deadlock
    try:
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
    try:
        yield
    finally:
        lock.release()


def _rw(path: Path):
    from filelock import ReadWriteLock

    return ReadWriteLock(str(lock_files(path)[1]), is_singleton=True)


@contextmanager
def read_lock(path: str | Path) -> Iterator[None]:
    """Shares the swap lock while an index is read (no save swaps folders meanwhile). A folder whose parent does not
    exist has nothing to protect: no lock is taken."""
    path = Path(path)
    if not path.absolute().parent.is_dir():
        yield
        return
    try:
        lock = _rw(path).read_lock()
        lock.__enter__()
    except (OSError, sqlite3.Error):  # a read-only folder: no writer can swap it either, so read it as it is
        yield
        return
    try:
        yield
    finally:
        lock.__exit__(None, None, None)


@contextmanager
def swap_lock(path: str | Path) -> Iterator[None]:
    """Takes the swap lock alone while folders are renamed (waits for readers that are loading)."""
    with _rw(Path(path)).write_lock():
        yield
