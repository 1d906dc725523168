"""Evaluation and training tasks (RULER-style needle documents)."""

from .needles import HAYSTACKS, KINDS, NeedleExample, NeedleTask, string_match_all

__all__ = ["HAYSTACKS", "KINDS", "NeedleExample", "NeedleTask", "string_match_all"]
