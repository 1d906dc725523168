"""Errors a user can act on.

Every error ragctx raises for bad input is a :class:`RagctxError`: its message names the input that was wrong
and what to do about it. The CLI prints the message on one line and exits with code 2, without a traceback.
"""

from __future__ import annotations

__all__ = ["RagctxError", "IndexFormatError", "DocumentError", "is_out_of_memory", "release_memory"]


class RagctxError(Exception):
    """Bad input or state that the user can fix; the message says how."""


class IndexFormatError(RagctxError):
    """A saved index is missing, damaged, or incompatible with the requested embedder or format version."""


class DocumentError(RagctxError):
    """A document could not be read (raised in ``strict`` mode; otherwise the file is skipped and reported)."""


def is_out_of_memory(e: BaseException) -> bool:
    """Whether ``e`` is a failed allocation: torch's ``OutOfMemoryError`` (a GPU), ``MemoryError``, or the
    RuntimeError a CPU allocator raises ("can't allocate memory")."""
    import torch

    text = str(e)
    return isinstance(e, (torch.OutOfMemoryError, MemoryError)) or "out of memory" in text \
        or "can't allocate memory" in text


def release_memory() -> None:
    """Gives back what a failed allocation left: unreachable tensors, and the GPU allocator's cached blocks."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
