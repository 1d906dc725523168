"""The shapes the QA pipeline depends on, so that it depends on a shape rather than on a concrete class (Haystack 2's
typed edges): a :class:`SpanSearch` that finds spans, a :class:`Corpus` that returns a document's chunks in order, and
a :class:`TextGenerator` that prefills a prompt and decodes its answer, streaming :class:`TextDelta` events and ending
with a :class:`Generated` one.

:class:`~ragctx.index.Index` is a :class:`SearchableCorpus` (both a retriever and a corpus) and
:class:`~ragctx.generator.Generator` is a :class:`TextGenerator`; any object of the same shape works with
:class:`~ragctx.qa.QA` in its place (tests/test_protocols.py holds a duck-typed pair). :func:`require` turns a missing
member into a :class:`~ragctx.errors.RagctxError` naming it.

This module sits in the bottom layer (it imports nothing of ragctx but the errors), so the index, the generator and
QA can all import it.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .errors import RagctxError

__all__ = ["Span", "ScoredSpan", "ChunkSpan", "SpanSearch", "Corpus", "SearchableCorpus", "Tokenizer",
           "GenerationResult", "TextGenerator", "TextDelta", "Generated", "members", "require"]


# -- what flows along the edges ----------------------------------------------------------------------------------
class Span(Protocol):
    """A piece of one document: ``text == document.text[start:end]``; ``ordinal`` is its chunk's position among the
    document's chunks (consecutive ordinals are adjacent chunks)."""

    doc_id: str
    start: int
    end: int
    text: str
    ordinal: int


class ScoredSpan(Span, Protocol):
    """A retrieved span with its score (the retriever's scale; higher is better), e.g. a :class:`~ragctx.index.Hit`."""

    score: float


class ChunkSpan(Span, Protocol):
    """A stored chunk with its length in the index's tokens, e.g. a :class:`~ragctx.store.StoredChunk`."""

    n_tokens: int


@dataclass(frozen=True)
class TextDelta:
    """The next piece of generated text, as it becomes final."""

    text: str


class GenerationResult(Protocol):
    """What QA reads of a finished generation (:class:`~ragctx.generator.Generation` has it)."""

    text: str
    prefill_s: float
    decode_s: float
    timings: dict[str, float]  # "batch": how many prompts shared the times
    probe_logprobs: list[float]  # log P(probe | prompt), one per probe asked for
    peak_memory_bytes: int | None  # set where a meter measured it (ragctx.evaluation.memory), else None


@dataclass(frozen=True)
class Generated:
    """The last event of a generation: its result (text, timings, probe log-probabilities, ...)."""

    generation: GenerationResult


# -- the three edges -----------------------------------------------------------------------------------------------
@runtime_checkable
class SpanSearch(Protocol):
    """Finds the ``k`` spans most relevant to a query, best first (:meth:`Index.search
    <ragctx.index.Index.search>`). QA passes ``filter={"doc_id": [...]}`` when the caller names documents, and its
    ``retrieval`` setting as ``mode`` (a retriever's name: "bm25", "dense", "hybrid" or one registered with
    :func:`ragctx.retrieval.register_retriever`). Not to be confused with :class:`ragctx.retrieval.Retriever`, which
    ranks an index's chunk ids and is what ``mode`` names."""

    def search(self, query: str, k: int = 5, *, filter: dict[str, Any] | None = None,
               mode: str = "dense") -> Sequence[ScoredSpan]: ...


@runtime_checkable
class Corpus(Protocol):
    """Whole documents as their chunks (:meth:`Index.document_chunks <ragctx.index.Index.document_chunks>`): what
    QA's ``full`` mode reads."""

    def __len__(self) -> int:
        """How many chunks it holds (0: nothing to answer from)."""
        ...

    def document_chunks(self, doc_ids: Sequence[str] | None = None) -> Sequence[ChunkSpan]:
        """Every chunk of the named documents (all when None), ordered by document id, then position."""
        ...


@runtime_checkable
class SearchableCorpus(SpanSearch, Corpus, Protocol):
    """A retriever over a corpus: what QA answers from (an :class:`~ragctx.index.Index`)."""


@runtime_checkable
class Tokenizer(Protocol):
    """Text to token ids. A tokenizer with a ``chat_template`` attribute (not None) makes QA build chat prompts
    through :meth:`TextGenerator.chat_prompt`."""

    def encode(self, text: str, *, bos: bool | None = None) -> list[int]: ...


@runtime_checkable
class TextGenerator(Protocol):
    """A model that prefills a prompt and decodes its completion (:class:`~ragctx.generator.Generator`)."""

    tokenizer: Tokenizer
    max_context: int  # prompt + completion tokens it takes

    def chat_prompt(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of chat ``messages`` through the tokenizer's chat template, ending where the reply starts."""
        ...

    def run(self, prompt: list[int], *, max_new_tokens: int, stop: list[str],
            probes: list[list[int]]) -> Iterator[TextDelta | Generated]:
        """One completion: :class:`TextDelta` events as the text comes, then one :class:`Generated`."""
        ...

    def generate_batch(self, prompts: list[list[int]], *, max_new_tokens: int, stop: list[str],
                       probes: list[list[int]]) -> list[GenerationResult]:
        """One result per prompt, decoded together (the same texts as :meth:`run` one at a time, greedy)."""
        ...


# -- checks ----------------------------------------------------------------------------------------------------------
def members(protocol: type) -> list[str]:
    """The attributes and methods a protocol asks for, its bases' included (``__len__`` the one dunder kept)."""
    names: list[str] = []
    for base in protocol.__mro__:
        if base in (object, Protocol) or not getattr(base, "_is_protocol", False):
            continue
        own = [*inspect.get_annotations(base), *(n for n, v in vars(base).items() if callable(v))]
        names += [n for n in own if (n == "__len__" or not n.startswith("_")) and n not in names]
    return names


def require(obj: object, protocols: Sequence[type], role: str, hint: str) -> None:
    """Raises a :class:`~ragctx.errors.RagctxError` naming what ``obj`` lacks of ``protocols`` (methods as
    ``name()``); ``role`` says where it was passed, ``hint`` what would do."""
    wanted = dict.fromkeys(n for p in protocols for n in members(p))
    methods = {n for p in protocols for n in members(p) if callable(getattr(p, n, None))}
    missing = [f"{n}()" if n in methods else n for n in wanted
               if not hasattr(obj, n) or (n in methods and not callable(getattr(obj, n)))]
    if missing:
        shape = " and ".join(f"ragctx.protocols.{p.__name__}" for p in protocols)
        raise RagctxError(f"{role}: a {type(obj).__name__} lacks {', '.join(missing)}; it needs the shape of {shape}. "
                          f"{hint}")
