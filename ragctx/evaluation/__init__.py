"""The evaluation harness: RAG against full context, across attention variants and context lengths.

The names below load on first use: importing one module of the package (the trainers import ``results`` to score
their in-training evaluation into rows) does not import the runner and everything above it.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["EvalConfig", "bootstrap_ci", "exact_match", "loglog_slope", "run_eval", "spans_overlap", "token_f1"]

_HOME = {"EvalConfig": "runner", "run_eval": "runner", "bootstrap_ci": "metrics", "exact_match": "metrics",
         "loglog_slope": "metrics", "spans_overlap": "metrics", "token_f1": "metrics"}


def __getattr__(name: str) -> Any:
    if name in _HOME:
        return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
