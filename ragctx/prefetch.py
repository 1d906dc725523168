"""Run a function ahead of its consumer on a worker thread."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["prefetch"]

T = TypeVar("T")
R = TypeVar("R")


def prefetch(fn: Callable[[T], R], items: Iterable[T], depth: int) -> Iterator[R]:
    """Yields ``fn(item)`` for each item in order, with up to ``depth`` calls running ahead on one worker thread
    (depth 0: plain, in this thread). Worth it where ``fn`` releases the GIL or overlaps device work."""
    if depth == 0:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) > depth:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
