"""Errors a user can act on.

Every error ragctx raises for bad input is a :class:`RagctxError`: its message names the input that was wrong
and what to do about it. The CLI prints the message on one line and exits with code 2, without a traceback.
"""

from __future__ import annotations

__all__ = ["RagctxError", "IndexFormatError", "DocumentError"]


class RagctxError(Exception):
    """Bad input or state that the user can fix; the message says how."""


class IndexFormatError(RagctxError):
    """A saved index is missing, damaged, or incompatible with the requested embedder or format version."""


class DocumentError(RagctxError):
    """A document could not be read (raised in ``strict`` mode; otherwise the file is skipped and reported)."""
