"""Question answering over an index: ``rag``, ``full`` and ``auto`` (Self-Route) with citations.

- ``rag``: the top-k chunks, put back in document order (OP-RAG, Yu et al. 2024: order-preserving retrieval beats
  score order), overlapping neighbours merged, separated by ``template.separator``, and trimmed to the
  generator's context budget counted in the generator's own tokens (lowest-scoring chunks go first).
- ``full``: every document (or the named ones) in document order. Too long for the generator: an error, unless
  the caller picks a truncation policy, ``truncate="start"`` (keep the beginning) or ``"end"`` (keep the end).
- ``auto`` (Self-Route, Li et al. 2024): answer from RAG first; when the generator answers ``unanswerable``, or the
  best retrieval score is under ``score_threshold``, ask again with the full context if it fits. With
  ``escalate=(k2, k3, ...)`` larger retrievals are tried before the full context. The Answer keeps every attempt
  and its cost. A full context that does not fit the generator, or that runs out of device memory (the reference
  softmax at 64K tokens on an H200), leaves the RAG answer in place, with the reason in ``fallback_reason``.

Documents are rebuilt from their chunks (chunks cover a document up to whitespace, so the rebuilt text differs
from the file only in whitespace between chunks).

QA depends on shapes, not classes (:mod:`ragctx.protocols`): the index is a retriever and a corpus
(:class:`~ragctx.protocols.SearchableCorpus`; an :class:`~ragctx.index.Index` is one), the generator prefills and
decodes (:class:`~ragctx.protocols.TextGenerator`; a :class:`~ragctx.generator.Generator` is one). A run streams typed
events: :class:`~ragctx.protocols.TextDelta` as the text comes, :class:`FallbackStarted` where ``auto`` goes on to the
full context, :class:`Finished` with the :class:`Answer` (:meth:`AnswerStream.events`). QA measures tokens and
seconds; peak memory is measured by a metered generator (:mod:`ragctx.evaluation.memory`), not by QA.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from .answer import Answer, AnswerStream, Attempt, Citation, FallbackStarted, Finished, StreamEvent, TextDelta
from .errors import RagctxError, is_out_of_memory, release_memory
from .protocols import Generated, GenerationResult, SearchableCorpus, TextGenerator, Tokenizer, require
from .retrieval import retriever_names

__all__ = ["QA", "ask_many", "Generate", "Answer", "AnswerStream", "Attempt", "Citation", "FallbackStarted",
           "Finished", "StreamEvent", "TextDelta", "PromptTemplate", "CHAT_TEMPLATE", "MODES"]

MODES = ("rag", "full", "auto")
TRUNCATE = (None, "start", "end")


@dataclass(frozen=True)
class PromptTemplate:
    """How a prompt is laid out. The default is the layout the built-in generators were trained on; a generator
    with a chat template gets :data:`CHAT_TEMPLATE` (see :meth:`for_generator`)."""

    prompt: str = "{context}\n\nQuestion: {question}\nAnswer:"  # the text (chat models: the user's message)
    separator: str = "\n\n"  # between pieces of context that are not contiguous in one document
    unanswerable: str = "unanswerable"  # what the generator says when the context does not hold the answer
    stop: tuple[str, ...] = ("\n",)  # the answer ends at the first of these
    system: str | None = None  # chat models: the system message; "{unanswerable}" in it is filled in
    chat: bool = True  # a generator with a chat template gets the prompt through it (False: the plain text)

    def __post_init__(self) -> None:
        for name, text, required in (("prompt", self.prompt, ("{context}", "{question}")),
                                     ("system", self.system or "", ())):
            missing = [r for r in required if r not in text]
            if missing:
                raise RagctxError(f"PromptTemplate.{name} lacks {', '.join(missing)}; it is where the retrieved text "
                                  "and the question go")
            try:
                text.format(context="", question="", unanswerable="")
            except (KeyError, IndexError, ValueError) as e:
                raise RagctxError(f"PromptTemplate.{name}: a brace that is not {{context}}, {{question}} or "
                                  f"{{unanswerable}} ({type(e).__name__}: {e}); write a literal brace twice: {{{{ }}}}"
                                  ) from None

    @classmethod
    def for_generator(cls, generator) -> PromptTemplate:
        """The default template for ``generator``: :data:`CHAT_TEMPLATE` when its tokenizer has a chat template,
        else the plain layout."""
        return CHAT_TEMPLATE if getattr(generator.tokenizer, "chat_template", None) is not None else cls()

    def messages(self, context: str, question: str) -> list[dict[str, str]]:
        """The chat messages of one prompt: the system instruction (if any), then the user's message."""
        system = ([{"role": "system", "content": self.system.format(unanswerable=self.unanswerable)}] if self.system
                  else [])
        user = self.prompt.format(context=context, question=question, unanswerable=self.unanswerable)
        return system + [{"role": "user", "content": user}]

    def refused(self, text: str) -> bool:
        """Whether an answer is this template's refusal: it holds the ``unanswerable`` word (any case)."""
        word = _words(self.unanswerable)
        return bool(word.strip()) and word in _words(text)


def join_pieces(pieces: list[Citation], separator: str = "\n\n") -> tuple[str, list[Citation]]:
    """Context text in document order. Overlapping chunks of a document merge into one span; consecutive
    chunks that do not overlap (only whitespace lies between them) stay separate citations but are joined
    by a space, other pieces by ``separator``."""
    ordered = sorted(pieces, key=lambda c: (c.doc_id, c.start))
    merged: list[Citation] = []
    for c in ordered:
        last = merged[-1] if merged else None
        if last is not None and last.doc_id == c.doc_id and c.start <= last.end:
            text = last.text + c.text[last.end - c.start :] if c.end > last.end else last.text
            scores = [x for x in (last.score, c.score) if x is not None]
            merged[-1] = Citation(c.doc_id, last.start, max(last.end, c.end), text, max(scores) if scores else None,
                                  (last.ordinals[0], max(last.ordinals[1], c.ordinals[1])))
        else:
            merged.append(c)
    parts = []
    for i, c in enumerate(merged):
        if i:
            prev = merged[i - 1]
            adjacent = prev.doc_id == c.doc_id and c.ordinals[0] == prev.ordinals[1] + 1
            parts.append(" " if adjacent else separator)
        parts.append(c.text)
    return "".join(parts), merged


FOCUS = 2  # passages a chat model reads by default (QA's focus)
# a sentence ends at . ! ? (with closing quotes or brackets) followed by whitespace or the end, or at a blank line:
# "1.5", "e.g." inside a sentence and hard-wrapped lines do not end it
_BOUNDARY = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)|\n[ \t]*\n")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of ``text``: up to ., ! or ? (with closing quotes and brackets) or a blank
    line (a single line break is a hard wrap inside a sentence); surrounding whitespace excluded."""
    out, start = [], 0
    for end in [m.end() for m in _BOUNDARY.finditer(text)] + [len(text)]:
        piece = text[start:end]
        if piece.strip():
            lead = len(piece) - len(piece.lstrip())
            out.append((start + lead, start + len(piece.rstrip())))
        start = end
    return out


def focus_passages(question: str, pieces: list[Citation], n: int, sentences: int) -> list[Citation]:
    """The ``n`` best non-overlapping passages of ``sentences`` consecutive sentences inside ``pieces`` (retrieved
    chunks), ranked by BM25 against the question; each is a :class:`Citation` of its exact span, scored by BM25.
    Pieces with no sentence boundary stay whole; no match at all keeps the pieces as they are."""
    import bm25s

    candidates = []
    for c in pieces:
        spans = sentence_spans(c.text)
        for i in range(max(1, len(spans) - sentences + 1)):
            if not spans:
                break
            a, b = spans[i][0], spans[min(i + sentences, len(spans)) - 1][1]
            candidates.append(Citation(c.doc_id, c.start + a, c.start + b, c.text[a:b], c.score, c.ordinals))
    if not candidates:
        return pieces
    query = bm25s.tokenize([question], stopwords="en", return_ids=False, show_progress=False)
    if not query[0]:
        return pieces
    try:
        retriever = bm25s.BM25()
        retriever.index(bm25s.tokenize([c.text for c in candidates], stopwords="en", show_progress=False),
                        show_progress=False)
        order, scores = retriever.retrieve(query, k=len(candidates), show_progress=False)
    except ValueError:  # the passages hold no word to rank by (bm25s: empty vocabulary)
        return pieces
    chosen: list[Citation] = []
    for i, score in zip(order[0], scores[0]):
        c = candidates[int(i)]
        if score <= 0 or any(x.doc_id == c.doc_id and x.start < c.end and c.start < x.end for x in chosen):
            continue
        chosen.append(Citation(c.doc_id, c.start, c.end, c.text, float(score), c.ordinals))
        if len(chosen) == n:
            break
    return chosen or pieces


def _words(text: str) -> str:
    return " " + " ".join("".join(ch if ch.isalnum() else " " for ch in text.lower()).split()) + " "


# instruct models: the question before and after the context, a few words, the refusal word when the context
# does not say. Picked on the essays set's dev split with SmolLM2-135M-Instruct given the supporting passage: 0.62
# string match against 0.44-0.56 for a system instruction or an instruction-first layout (eval/reports/qa-real/)
CHAT_TEMPLATE = PromptTemplate(
    prompt="Question: {question}\n\nText:\n{context}\n\nUsing only the text above, answer the question in a few "
           "words: {question}\nIf the text does not contain the answer, say \"{unanswerable}\".",
    stop=(),  # the model's end-of-turn token ends the answer
)


@dataclass
class Generate:
    """What a question's steps ask of the generator (answered by a driver: one question streams, many batch)."""

    ids: list[int]
    max_new_tokens: int
    stop: list[str]
    probes: list[list[int]]


def ask_many(jobs: Sequence[tuple[QA, str, dict[str, Any]]], *, batch_size: int = 8) -> list[Answer | Exception]:
    """Answers many questions, possibly of different :class:`QA` objects (other indexes) that share one generator:
    each job is ``(qa, question, ask_kwargs)``. Every question runs its own steps (retrieval, routes, ``auto``'s
    fallback) up to its next generation; the generations waiting at one time are decoded together, up to
    ``batch_size`` at once, sorted by length so that a batch pads little. An ``auto`` question that falls back
    waits for the next round. Returns, in the jobs' order, each question's :class:`Answer`, or the
    :class:`~ragctx.errors.RagctxError` (or out-of-memory error) that ended it, as :meth:`QA.ask` would have raised
    it. Prefill and decode times are their batch's (``timings["batch"]``)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise RagctxError(f"batch_size={batch_size!r}: pass a positive number of prompts")
    if not jobs:
        return []
    gens = {id(qa.generator) for qa, _, _ in jobs}
    if len(gens) > 1:
        raise RagctxError("ask_many: every job's QA must share one generator (batches decode on one model)")
    gen = jobs[0][0].generator
    runs = [qa._run(q, **kw) for qa, q, kw in jobs]
    results: list[Any] = [None] * len(jobs)
    waiting: dict[int, Generate] = {}

    def advance(i: int, reply=None, error: BaseException | None = None) -> None:
        """Runs job i to its next request or its end; ``error``: its generation's, thrown into its steps."""
        while True:
            try:
                event = runs[i].throw(error) if error is not None else runs[i].send(reply)
            except StopIteration:
                return
            except (RagctxError, RuntimeError, MemoryError) as e:
                if isinstance(e, RagctxError) or is_out_of_memory(e):
                    results[i] = e
                    return
                raise
            reply, error = None, None
            if isinstance(event, Generate):
                waiting[i] = event
                return
            if isinstance(event, Finished):
                results[i] = event.answer

    for i in range(len(jobs)):
        advance(i, None)
    while waiting:
        ready = sorted(waiting, key=lambda i: len(waiting[i].ids))
        for start in range(0, len(ready), batch_size):
            rows = ready[start : start + batch_size]
            asks = [waiting.pop(i) for i in rows]
            groups: dict[tuple, list[int]] = {}  # rows that can share a batch: the same limits, stops and probes
            for i, a in zip(rows, asks):
                key = (a.max_new_tokens, tuple(a.stop), tuple(map(tuple, a.probes)))
                groups.setdefault(key, []).append(i)
            requests = dict(zip(rows, asks))
            for same in groups.values():
                first = requests[same[0]]
                try:
                    done = gen.generate_batch([requests[i].ids for i in same], max_new_tokens=first.max_new_tokens,
                                              stop=first.stop, probes=first.probes)
                except (RagctxError, RuntimeError, MemoryError) as e:
                    if not isinstance(e, RagctxError) and not is_out_of_memory(e):
                        raise
                    release_memory()
                    for i in same:  # each question's steps decide (auto keeps its RAG answer), as ask() does
                        advance(i, error=e)
                    continue
                for i, generation in zip(same, done):
                    advance(i, generation)
    return results


class QA:
    """Answers questions from an :class:`~ragctx.index.Index` with a :class:`~ragctx.generator.Generator`.

    Args:
        index: where chunks are retrieved from (and full documents rebuilt from): an :class:`~ragctx.index.Index`, or
            any object of its :class:`~ragctx.protocols.SearchableCorpus` shape (``search``, ``document_chunks``,
            ``len``).
        generator: the model that answers: a :class:`~ragctx.generator.Generator` (any attention variant, built-in,
            packaged or ``from_pretrained``; any :class:`~ragctx.protocols.TextGenerator`, e.g. one metered by
            :class:`~ragctx.evaluation.memory.MeteredGenerator`) or a name for ``Generator.open``. None: the packaged
            instruct model (``smollm2``) when installed.
        template: the prompt layout (default: :meth:`PromptTemplate.for_generator`).
        max_new_tokens: answer length limit.
        retrieval: ``"bm25"`` (the default: on the essays set it found the supporting passage in the top 3 for 0.89
            of the questions, hybrid 0.80, dense 0.63; eval/reports/qa-real/), ``"dense"`` or ``"hybrid"`` (both,
            reciprocal rank fusion).
        score_threshold: ``auto`` also falls back when the best retrieval score is below this (None: never); the
            retriever's own scale: cosine for dense, BM25 for bm25, reciprocal-rank fusion for hybrid.
        refusal_threshold: an answer counts as a refusal when the model's probability of answering with the
            template's ``unanswerable`` word reaches this, even if it went on to write something else (``auto``
            then falls back). None: the generator's calibrated value (``Generator.qa_defaults``), else only the
            written word counts. Measuring the probability costs a few decode steps per answer.
        bos: prepend BOS to plain-text prompts (None: as the generator's tokenizer does).
        focus: read only the ``focus`` best passages of ``focus_sentences`` consecutive sentences from the
            retrieved chunks (ranked by BM25 against the question; citations become those spans), or the whole
            chunks (None). A small reader answers better from less: on the essays set's dev split SmolLM2 read
            the 2 best 2-sentence passages of 5 chunks at 0.33 string match, 3 whole chunks at 0.16, the
            supporting passage alone at 0.62 (eval/reports/qa-real/). Default: 2 for a chat model, None else.
    """

    def __init__(self, index: SearchableCorpus, generator: TextGenerator | str | None = None, *,
                 template: PromptTemplate | None = None, max_new_tokens: int = 48, retrieval: str = "bm25",
                 score_threshold: float | None = None, refusal_threshold: float | None = None, bos: bool | None = None,
                 focus: int | None | str = "auto", focus_sentences: int = 2) -> None:
        if generator is None or isinstance(generator, str):
            from .generator import Generator
            from .generator.checkpoints import DEFAULT_GENERATOR, PACKAGED, default_generator

            name = generator or default_generator()
            if name is None:
                raise RagctxError(f"QA needs a generator and the default one is not installed: "
                                  f"{PACKAGED[DEFAULT_GENERATOR].pip} (or pass one, e.g. Generator.open(...))")
            generator = Generator.open(name)
        require(index, [SearchableCorpus], "QA's index",
                "Pass an Index (Index.load(path)) or an object with these members.")
        require(generator, [TextGenerator], "QA's generator",
                "Pass a Generator (Generator.open(name)), a name for Generator.open, or None for the default model.")
        require(generator.tokenizer, [Tokenizer], "QA's generator.tokenizer", "Give the generator a tokenizer.")
        # ragctx's own index searches through the retriever registry: a wrong name fails here, before any question;
        # another SearchableCorpus gets the name as its search mode and judges it itself
        if hasattr(index, "retriever") and retrieval not in retriever_names():
            raise RagctxError(f"retrieval '{retrieval}' is unknown; use one of {', '.join(retriever_names())}")
        self.index = index
        self.generator = generator
        self.template = template or PromptTemplate.for_generator(generator)
        self.max_new_tokens = max_new_tokens
        self.retrieval = retrieval
        self.score_threshold = score_threshold
        defaults = getattr(generator, "qa_defaults", None) or {}
        self.refusal_threshold = refusal_threshold if refusal_threshold is not None else \
            defaults.get("refusal_threshold")
        self.measure_refusal = self.refusal_threshold is not None  # the evaluation turns it on to calibrate
        self.bos = bos
        self.focus = (FOCUS if self._chat() else None) if focus == "auto" else focus
        if self.focus is not None and (not isinstance(self.focus, int) or self.focus < 1 or focus_sentences < 1):
            raise RagctxError(f"focus={focus!r}, focus_sentences={focus_sentences!r}: pass positive numbers (or "
                              "focus=None to read whole chunks)")
        self.focus_sentences = focus_sentences
        self._probes: list[list[int]] | None = None

    # -- public ------------------------------------------------------------------------------------------
    def ask(self, question: str, *, mode: str = "auto", k: int = 5, budget: int | None = None,
            documents: Sequence[str] | None = None, truncate: str | None = None,
            escalate: Sequence[int] = ()) -> Answer:
        """Answers ``question``. ``budget``: max input tokens (default: the generator's context minus the answer);
        ``documents``: restrict to these document ids; ``truncate``: full-context policy (None, "start", "end")."""
        stream = self.stream(question, mode=mode, k=k, budget=budget, documents=documents, truncate=truncate,
                             escalate=escalate)
        for _ in stream:
            pass
        assert stream.answer is not None
        return stream.answer

    def stream(self, question: str, *, fallback_marker: str | None = None, **kwargs: Any) -> AnswerStream:
        """Like :meth:`ask`, but iterate to receive the answer's text as it is generated (an ``auto`` run streams
        its RAG attempt, then, if it falls back, the full-context one, with ``fallback_marker`` between);
        ``.answer`` is set at the end. :meth:`AnswerStream.events` yields typed events instead of text."""
        return AnswerStream(self._drive(self._run(question, **kwargs)), fallback_marker)

    def read(self, question: str, passages: Sequence[str | Citation]) -> Answer:
        """Answers ``question`` from the given passages only (no retrieval; route ``"given"``): texts, or
        :class:`Citation` spans. What the generator can do with the right passage in hand."""
        self._check_question(question)
        if isinstance(passages, (str, bytes)) or not passages or \
                not all(isinstance(p, (str, Citation)) for p in passages):
            raise RagctxError("read() needs a list of passages (strings or Citations), e.g. qa.read(q, [text])")
        pieces = [p if isinstance(p, Citation) else Citation(f"passage-{i:06d}", 0, len(p), p)  # ids keep the order
                  for i, p in enumerate(passages)]
        ids, cited = self._prompt(question, pieces)

        def given():
            attempt = yield from self._generate("given", ids, cited, 0.0)
            yield Finished(Answer(attempt.text, "given", attempt.citations, attempt.input_tokens, attempt.timings,
                                  attempt.peak_memory_bytes, [attempt], None, attempt.refused))

        *_, finished = self._drive(given())
        return finished.answer

    def ask_batch(self, questions: Sequence[str], *, batch_size: int = 8, errors: str = "raise",
                  **kwargs: Any) -> list[Answer | Exception]:
        """Answers several questions, decoding up to ``batch_size`` prompts at once
        (:meth:`Generator.generate_batch <ragctx.generator.Generator.generate_batch>`): the same answers as
        :meth:`ask` one at a time (greedy; up to rounding in near ties), in less time on a GPU. ``kwargs`` as for
        :meth:`ask`, the same for every question. Each answer's prefill and decode times are its batch's
        (``timings["batch"]`` says how many prompts shared them). ``errors``: ``"raise"`` raises the first
        question's error (in the questions' order) once all are done, ``"return"`` puts each error in its
        question's place. See :func:`ask_many` for questions over different indexes."""
        if isinstance(questions, str):
            raise RagctxError("ask_batch takes a list of questions; use ask() for one")
        if errors not in ("raise", "return"):
            raise RagctxError(f"errors='{errors}': use 'raise' or 'return'")
        answers = ask_many([(self, q, kwargs) for q in questions], batch_size=batch_size)
        failed = next((a for a in answers if isinstance(a, Exception)), None)
        if failed is not None and errors == "raise":
            raise failed
        return answers

    def _drive(self, run: Iterator[Generate | FallbackStarted | Finished]) -> Iterator[StreamEvent]:
        """Runs one question's steps (:meth:`_run`), answering each :class:`Generate` request with a streamed
        generation (its :class:`~ragctx.protocols.TextDelta` events passed on as they come) and passing every other
        event on. An error of the generation is thrown back into the steps, where ``auto`` handles a full context
        that ran out of memory."""
        reply: GenerationResult | None = None
        error: BaseException | None = None
        while True:
            try:
                event = run.throw(error) if error is not None else run.send(reply)
            except StopIteration:
                return
            reply, error = None, None
            if not isinstance(event, Generate):
                yield event
                continue
            try:
                for piece in self.generator.run(event.ids, max_new_tokens=event.max_new_tokens, stop=event.stop,
                                                probes=event.probes):
                    if isinstance(piece, Generated):
                        reply = piece.generation
                    else:
                        yield piece
            except (RagctxError, RuntimeError, MemoryError) as e:
                error = e

    # -- routes ------------------------------------------------------------------------------------------
    @staticmethod
    def _check_question(question) -> None:
        if not isinstance(question, str) or not question.strip():
            raise RagctxError("empty question: pass the question to answer")

    def _run(self, question, *, mode="auto", k=5, budget=None, documents=None, truncate=None, escalate=()):
        self._check_question(question)
        if mode not in MODES:
            raise RagctxError(f"mode '{mode}' is unknown; use one of {', '.join(MODES)}")
        if truncate not in TRUNCATE:
            raise RagctxError(f"truncate='{truncate}': use None (error when too long), 'start' or 'end'")
        if len(self.index) == 0:
            raise RagctxError("the index is empty; add documents with `ragctx index add`")
        budget = self._budget(question, budget)
        attempts: list[Attempt] = []
        reason = None
        if mode == "full":
            attempts.append((yield from self._full(question, budget, documents, truncate)))
        else:
            for kk in [k, *escalate]:
                attempt = yield from self._rag(question, kk, budget, documents)
                attempts.append(attempt)
                reason = self._why_fall_back(attempt) if mode == "auto" else None
                if reason is None:
                    break
            if reason is not None:
                try:
                    scope = documents
                    if scope is None and not self._fits(question, None, budget):
                        # the corpus does not fit: read the whole documents RAG retrieved from, best first
                        scope = self._retrieved_documents(question, attempts[-1], budget)
                    onto = "full(documents)" if scope is not None and documents is None else "full"
                    yield FallbackStarted(reason, onto)
                    attempts.append((yield from self._full(question, budget, scope, truncate)))
                    attempts[-1].route = onto
                except RagctxError as e:  # nothing fits: keep the RAG answer, say why
                    reason = f"{reason}; full context not tried: {e}"
                except (RuntimeError, MemoryError) as e:  # it fit the context but not the device: same
                    if not is_out_of_memory(e):
                        raise
                    release_memory()
                    reason = f"{reason}; the full context ran out of memory ({str(e).splitlines()[0][:120]}): " \
                             "the RAG answer stands"
        final = attempts[-1]
        route = final.route if len(attempts) == 1 else "->".join(
            a.route + (f"(k={a.k})" if a.route == "rag" and i else "") for i, a in enumerate(attempts))
        timings = {key: sum(a.timings.get(key, 0.0) for a in attempts) for key in ("retrieve_s", "prefill_s", "decode_s")}
        if any("batch" in a.timings for a in attempts):
            timings["batch"] = max(a.timings.get("batch", 1) for a in attempts)
        peaks = [a.peak_memory_bytes for a in attempts if a.peak_memory_bytes is not None]
        yield Finished(Answer(final.text, route, final.citations, sum(a.input_tokens for a in attempts), timings,
                              max(peaks, default=None), attempts, reason, final.refused))

    def _why_fall_back(self, attempt: Attempt) -> str | None:
        if attempt.said_unanswerable:
            return "the generator found no answer in the retrieved chunks"
        if attempt.refused:
            return (f"the generator's probability of refusing ({attempt.refusal_probability:.2f}) reached the "
                    f"threshold {self.refusal_threshold}")
        if self.score_threshold is not None and (attempt.top_score is None or attempt.top_score < self.score_threshold):
            return f"best retrieval score {attempt.top_score} is under the threshold {self.score_threshold}"
        return None

    def _rag(self, question, k, budget, documents):
        t0 = time.perf_counter()
        filt = {"doc_id": list(documents)} if documents else None
        hits = self.index.search(question, k=k, filter=filt, mode=self.retrieval)
        retrieve = time.perf_counter() - t0
        retrieved = [Citation(h.doc_id, h.start, h.end, h.text, h.score, (h.ordinal, h.ordinal)) for h in hits]
        pieces = list(retrieved)  # trimming below must not shorten the record of what was retrieved
        if self.focus is not None:
            pieces = focus_passages(question, pieces, self.focus, self.focus_sentences)
        while True:  # trim: drop the lowest-scoring chunk until the prompt fits
            ids, cited = self._prompt(question, pieces)
            if len(ids) <= budget or not pieces:
                break
            pieces.remove(min(pieces, key=lambda c: c.score))
        top = max((h.score for h in hits), default=None)
        attempt = yield from self._generate("rag", ids, cited, retrieve)
        attempt.k, attempt.top_score, attempt.retrieved = k, top, retrieved
        return attempt

    def _full(self, question, budget, documents, truncate):
        chunks = self.index.document_chunks(documents)
        if documents and not chunks:
            raise RagctxError(f"none of the documents {list(documents)} is in the index")
        pieces = [Citation(c.doc_id, c.start, c.end, c.text, None, (c.ordinal, c.ordinal)) for c in chunks]
        estimate = sum(c.n_tokens for c in chunks)  # the index's token counts: a corpus far too long is not tokenized
        exact = estimate <= 2 * budget or truncate is not None
        ids, cited = self._prompt(question, pieces) if exact else ([], pieces)
        truncated = False
        if not exact or len(ids) > budget:
            if truncate is None:
                size = f"{len(ids)} tokens" if exact else f"about {estimate} tokens"
                raise RagctxError(
                    f"the full context is {size}; the generator takes {budget} (its context minus the answer). "
                    "Use the rag or auto mode, name fewer documents, or truncate it at the start or end "
                    "(CLI: --mode, --documents, --truncate; Python: mode=, documents=, truncate=)")
            ids, cited = self._prompt(question, self._truncate(question, cited, budget, keep=truncate))
            truncated = True
        attempt = yield from self._generate("full", ids, cited, 0.0)
        attempt.truncated = truncated
        return attempt

    def _fits(self, question: str, documents: Sequence[str] | None, budget: int) -> bool:
        chunks = self.index.document_chunks(documents)
        if sum(c.n_tokens for c in chunks) > 2 * budget:  # far too long by the index's own token counts: no need
            return False                                  # to tokenize a whole corpus to know
        pieces = [Citation(c.doc_id, c.start, c.end, c.text, None, (c.ordinal, c.ordinal)) for c in chunks]
        return len(self._prompt(question, pieces)[0]) <= budget

    def _retrieved_documents(self, question: str, attempt: Attempt, budget: int) -> list[str]:
        """The documents of the RAG attempt's chunks, best-scored first, as many whole ones as fit the budget."""
        best: dict[str, float] = {}
        for c in attempt.retrieved or attempt.citations:  # every chunk retrieved, not only the passages read
            best[c.doc_id] = max(best.get(c.doc_id, float("-inf")), c.score if c.score is not None else 0.0)
        chosen: list[str] = []
        for doc in sorted(best, key=lambda d: -best[d]):
            if self._fits(question, chosen + [doc], budget):
                chosen.append(doc)
        if not chosen:
            raise RagctxError("the corpus and each retrieved document are longer than the generator's context")
        return chosen

    def _truncate(self, question, pieces: list[Citation], budget: int, keep: str) -> list[Citation]:
        """Whole chunks from the start (or the end) that fit the budget."""
        order = pieces if keep == "start" else pieces[::-1]
        kept: list[Citation] = []
        for piece in order:
            trial = kept + [piece]
            if len(self._prompt(question, trial if keep == "start" else trial[::-1])[0]) > budget:
                break
            kept = trial
        return kept if keep == "start" else kept[::-1]

    def _refusal_probes(self) -> list[list[int]]:
        """Token sequences of the refusal word as an answer would start with it (as written and capitalized)."""
        if self._probes is None:
            word = self.template.unanswerable.strip()
            variants = dict.fromkeys([word, word[:1].upper() + word[1:]])
            self._probes = [self.generator.tokenizer.encode(v, bos=False) for v in variants if v]
        return self._probes

    def _generate(self, route, ids, cited, retrieve_s):
        probes = self._refusal_probes() if self.measure_refusal else []
        result = yield Generate(ids, self.max_new_tokens, list(self.template.stop), probes)  # the driver answers
        timings = {"retrieve_s": retrieve_s, "prefill_s": result.prefill_s, "decode_s": result.decode_s}
        if "batch" in result.timings:  # decoded with other prompts (ask_many): the times are the batch's
            timings["batch"] = result.timings["batch"]
        text = result.text.strip()
        said = self.template.refused(text)
        p = float(sum(math.exp(lp) for lp in result.probe_logprobs)) if probes else None
        refused = said or (p is not None and self.refusal_threshold is not None and p >= self.refusal_threshold)
        return Attempt(route, text, cited, len(ids), timings, result.peak_memory_bytes, said_unanswerable=said,
                       refusal_probability=p, refused=refused)

    # -- helpers -----------------------------------------------------------------------------------------
    def _budget(self, question: str, budget: int | None) -> int:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise RagctxError(f"max_new_tokens={self.max_new_tokens!r}: pass a positive number of tokens")
        if self.max_new_tokens >= self.generator.max_context:
            raise RagctxError(f"max_new_tokens={self.max_new_tokens} leaves no room for a prompt in the generator's "
                              f"context of {self.generator.max_context} tokens; ask for fewer (e.g. 48)")
        limit = self.generator.max_context - self.max_new_tokens
        if budget is not None:
            if budget <= 0:
                raise RagctxError(f"budget={budget}: pass a positive number of tokens")
            limit = min(limit, budget)
        empty = len(self._prompt(question, [])[0])
        if empty > limit:
            raise RagctxError(f"the question alone takes {empty} tokens, over the budget of {limit}")
        return limit

    def _chat(self) -> bool:
        return self.template.chat and getattr(self.generator.tokenizer, "chat_template", None) is not None

    def _prompt(self, question: str, pieces: list[Citation]) -> tuple[list[int], list[Citation]]:
        """The prompt's token ids over ``pieces`` (joined by :meth:`_join`; through the generator's chat template
        when it has one and the template says ``chat``) and the citations it holds."""
        context, cited = self._join(pieces)
        if self._chat():
            return self.generator.chat_prompt(self.template.messages(context, question)), cited
        prompt = self.template.prompt.format(context=context, question=question,
                                             unanswerable=self.template.unanswerable)
        return self.generator.tokenizer.encode(prompt, bos=self.bos), cited

    def _join(self, pieces: list[Citation]) -> tuple[str, list[Citation]]:
        return join_pieces(pieces, self.template.separator)
