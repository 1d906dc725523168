"""The evaluation harness: RAG against full context, across attention variants and context lengths."""

from .metrics import bootstrap_ci, exact_match, loglog_slope, spans_overlap, token_f1
from .runner import EvalConfig, run_eval

__all__ = ["EvalConfig", "bootstrap_ci", "exact_match", "loglog_slope", "run_eval", "spans_overlap", "token_f1"]
