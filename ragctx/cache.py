"""ragctx's cache of derived files (an embedder's ONNX export, a GGUF file's tokenizer): ``RAGCTX_CACHE`` or
``~/.cache/ragctx``. Each file is made once, under a key of its source's path, size and modification time, written
to a temporary name and renamed (atomic: a crash leaves no half file, two processes at once both end with a whole
one). A cache that cannot be written is not an error: the file is made again next time."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["cache_dir", "source_key", "cached"]


def cache_dir() -> Path:
    return Path(os.environ.get("RAGCTX_CACHE") or Path.home() / ".cache" / "ragctx")


def source_key(path: Path, version: str) -> str:
    """A key that changes when the file at ``path`` (resolved) is replaced or touched, or ``version`` changes."""
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{version}".encode()).hexdigest()[:16]


def cached(target: Path, make: Callable[[Path], None]) -> Path | None:
    """``target``, made by ``make(temporary_path)`` when it is missing; None when the cache is not writable."""
    if target.is_file():
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    tmp = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        make(tmp)
        tmp.replace(target)
    except PermissionError:
        return None
    finally:
        tmp.unlink(missing_ok=True)
    return target
