"""What a question's run produces: the :class:`Citation` spans the generator read, each :class:`Attempt` (one
generation: what went in, what came out, what it cost), the final :class:`Answer`, and the typed events of a run as it
happens (:class:`~ragctx.protocols.TextDelta`, :class:`FallbackStarted`, :class:`Finished`), which an
:class:`AnswerStream` yields. :mod:`ragctx.qa` makes them; tested in tests/test_qa.py and tests/test_protocols.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from .protocols import TextDelta

__all__ = ["Answer", "AnswerStream", "Attempt", "Citation", "FallbackStarted", "Finished", "StreamEvent", "TextDelta"]


@dataclass(frozen=True)
class Citation:
    """A span the generator saw: ``text == document.text[start:end]``."""

    doc_id: str
    start: int
    end: int
    text: str
    score: float | None = None  # retrieval score (None in full-context mode)
    ordinals: tuple[int, int] = (0, 0)  # first and last chunk ordinal in this span (consecutive ones join)


@dataclass
class Attempt:
    """One generation: what went in, what came out, what it cost."""

    route: str  # "rag" or "full"
    text: str
    citations: list[Citation]
    input_tokens: int
    timings: dict[str, float]  # retrieve_s, prefill_s, decode_s
    peak_memory_bytes: int | None  # measured by a metered generator (ragctx.evaluation.memory), else None
    k: int | None = None
    top_score: float | None = None
    truncated: bool = False
    retrieved: list[Citation] = field(default_factory=list)  # rag: the chunks retrieved (before focus picked passages)
    said_unanswerable: bool = False  # the text holds the template's refusal word
    refusal_probability: float | None = None  # P(the answer is the refusal word | prompt), when measured
    refused: bool = False  # said it, or its probability reached QA's refusal_threshold


@dataclass
class Answer:
    """The final answer, the route taken, and every attempt on the way."""

    text: str
    # "rag", "full", "given" (read()), or "rag->full" (auto fell back to the corpus), "rag->full(documents)" (to the
    # retrieved documents, the corpus being too long); "rag(k=20)" for an escalated retrieval
    route: str
    citations: list[Citation]
    input_tokens: int  # summed over attempts
    timings: dict[str, float]  # summed over attempts
    peak_memory_bytes: int | None  # the largest attempt's, where a metered generator measured it (else None)
    attempts: list[Attempt] = field(default_factory=list)
    fallback_reason: str | None = None
    refused: bool = False  # the final attempt refused (see Attempt.refused): the sources do not hold the answer

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FallbackStarted:
    """An ``auto`` run goes on from its RAG attempt to the full context (``route``: ``"full"``, or
    ``"full(documents)"`` for the retrieved documents). Should that fail (too long, out of memory), the RAG answer
    stands and :class:`Finished` says why in ``fallback_reason``."""

    reason: str  # why the RAG answer was not kept
    route: str


@dataclass(frozen=True)
class Finished:
    """The last event of a run: its :class:`Answer`."""

    answer: Answer


StreamEvent = TextDelta | FallbackStarted | Finished  # what AnswerStream.events() yields


class AnswerStream:
    """One question's run as it happens. Iterating yields the answer's text (``str`` pieces) as it is generated;
    ``.answer`` holds the :class:`Answer` afterwards. :meth:`events` yields the typed events instead.

    When ``auto`` falls back, the full-context answer's text follows the RAG attempt's; ``fallback_marker`` (a format
    string with ``{reason}`` and ``{route}``) is yielded between the two if given."""

    def __init__(self, events: Iterator[StreamEvent], fallback_marker: str | None = None) -> None:
        self._events = events
        self._marker = fallback_marker
        self.answer: Answer | None = None

    def __iter__(self) -> Iterator[str]:
        for event in self.events():
            match event:
                case TextDelta(text):
                    yield text
                case FallbackStarted(reason, route) if self._marker:
                    yield self._marker.format(reason=reason, route=route)

    def events(self) -> Iterator[StreamEvent]:
        """:class:`~ragctx.protocols.TextDelta` events as the text comes; where ``auto`` falls back, a
        :class:`FallbackStarted` between the two attempts' texts; last a :class:`Finished` with the :class:`Answer`
        (``.answer`` is set then too). Stopping early stops the generation (it runs as the events are asked for)."""
        for event in self._events:
            if isinstance(event, Finished):
                self.answer = event.answer
            yield event
