"""QA's typed edges (ragctx.protocols): Index and Generator have the shapes QA depends on, duck-typed objects of the
same shapes work in their place, a wrong object is named; the typed stream events and their order; the memory meter
that the evaluation, ``ragctx ask`` and ``ragctx serve`` wrap generators in."""

from __future__ import annotations

import dataclasses
import re

import pytest

from ragctx import ChunkConfig, Document, Index, RagctxError
from ragctx.evaluation.memory import MeteredGenerator, metered
from ragctx.generator import ByteTokenizer, Generation
from ragctx.protocols import (ChunkSpan, Corpus, Generated, SpanSearch, ScoredSpan, SearchableCorpus, TextDelta,
                              TextGenerator, Tokenizer, members)
from ragctx.qa import QA, FallbackStarted, Finished

DOCS = {
    "a-volcano.txt": "Mount Zirkel erupted in 1842. The ash covered the valley for a week. Farmers moved north.",
    "b-bakery.txt": "The bakery on Quince Street sells the Midnight Crust loaf. It opens at five.",
}


@pytest.fixture(scope="module")
def index(embedder):
    return Index.build([Document.from_text(k, v) for k, v in DOCS.items()], embedder=embedder,
                       chunking=ChunkConfig(max_tokens=12, overlap=0), device="cpu")


@pytest.fixture()
def gen(tiny_generator):
    return tiny_generator


# -- duck-typed stand-ins: no store, no model ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Piece:
    """A sentence of a document: the Span shape (ScoredSpan and ChunkSpan both)."""

    doc_id: str
    start: int
    end: int
    text: str
    ordinal: int
    score: float = 0.0
    n_tokens: int = 0


class SentenceCorpus:
    """A retriever and corpus over DOCS, a sentence per chunk, ranked by words shared with the query."""

    def __init__(self, docs: dict[str, str]) -> None:
        self.pieces = [Piece(d, m.start(), m.end(), m.group(), i, n_tokens=len(m.group().split()))
                       for d, text in sorted(docs.items())
                       for i, m in enumerate(re.finditer(r"[^.]+\.", text)) if m.group().strip()]
        self.pieces = [dataclasses.replace(p, start=p.start + len(p.text) - len(p.text.lstrip()),
                                           text=p.text.lstrip()) for p in self.pieces]
        self.searched: list[tuple[str, int, dict | None, str]] = []

    def __len__(self) -> int:
        return len(self.pieces)

    def search(self, query: str, k: int = 5, *, filter: dict | None = None, mode: str = "dense") -> list[Piece]:
        self.searched.append((query, k, filter, mode))
        words = set(query.lower().split())
        allowed = [p for p in self.pieces if filter is None or p.doc_id in filter["doc_id"]]
        scored = [dataclasses.replace(p, score=float(len(words & set(p.text.lower().rstrip(".").split()))))
                  for p in allowed]
        return sorted(scored, key=lambda p: -p.score)[:k]

    def document_chunks(self, doc_ids=None) -> list[Piece]:
        return [p for p in self.pieces if doc_ids is None or p.doc_id in doc_ids]


class ScriptedGenerator:
    """Answers ``answer`` when the prompt holds ``needle``, else "unanswerable"; streams it a word at a time."""

    def __init__(self, needle: str, answer: str) -> None:
        self.tokenizer = ByteTokenizer()
        self.max_context = 2048
        self.needle, self.answer = needle, answer
        self.prompts: list[str] = []

    def chat_prompt(self, messages):
        return self.tokenizer.encode(messages[-1]["content"], bos=False)

    def _reply(self, prompt: list[int], probes) -> Generation:
        text = self.tokenizer.decode(prompt)
        self.prompts.append(text)
        said = self.answer if self.needle in text else "unanswerable"
        return Generation(said, [], len(prompt), "eos", 0.01, 0.02, probe_logprobs=[-9.0] * len(probes))

    def run(self, prompt, *, max_new_tokens, stop, probes):
        result = self._reply(prompt, probes)
        for i, word in enumerate(result.text.split(" ")):
            yield TextDelta(word if i == 0 else " " + word)
        yield Generated(result)

    def generate_batch(self, prompts, *, max_new_tokens, stop, probes):
        return [self._reply(p, probes) for p in prompts]


# -- the shapes ----------------------------------------------------------------------------------------------------
def test_index_and_generator_have_the_shapes_qa_depends_on(index, gen):
    assert isinstance(index, SearchableCorpus) and isinstance(index, SpanSearch) and isinstance(index, Corpus)
    assert isinstance(gen, TextGenerator) and isinstance(gen.tokenizer, Tokenizer)
    assert isinstance(metered(gen), TextGenerator)
    hit = index.search("Zirkel", k=1, mode="bm25")[0]
    chunk = index.document_chunks()[0]
    span = ["doc_id", "start", "end", "text", "ordinal"]  # Span's fields (the two below add one each)
    assert all(hasattr(hit, m) for m in [*ScoredSpan.__annotations__, *span])
    assert all(hasattr(chunk, m) for m in [*ChunkSpan.__annotations__, *span])
    # Index.document_chunks: the store's chunks, ordered by document then position; one id or several
    assert index.document_chunks() == index.store.document_chunks()
    assert index.document_chunks("b-bakery.txt") == index.document_chunks(["b-bakery.txt"]) != []
    assert [c.start for c in index.document_chunks(["a-volcano.txt"])] == sorted(
        c.start for c in index.document_chunks(["a-volcano.txt"]))
    assert index.document_chunks(["nope.txt"]) == []
    assert members(SearchableCorpus) == ["search", "__len__", "document_chunks"]
    assert members(TextGenerator) == ["tokenizer", "max_context", "chat_prompt", "run", "generate_batch"]


def test_generator_run_streams_text_deltas_then_one_generated(gen):
    events = list(gen.run("Hello", max_new_tokens=8))
    assert all(isinstance(e, TextDelta) for e in events[:-1]) and isinstance(events[-1], Generated)
    result = events[-1].generation
    assert "".join(e.text for e in events[:-1]) == result.text == gen.generate("Hello", max_new_tokens=8).text
    assert result.peak_memory_bytes is None  # a Generator does not meter itself


@pytest.mark.parametrize("mode", ["rag", "full", "auto"])
def test_a_duck_typed_corpus_and_generator_answer_through_qa(mode):
    corpus, scripted = SentenceCorpus(DOCS), ScriptedGenerator("1842", "In 1842")
    qa = QA(corpus, scripted, max_new_tokens=8, retrieval="bm25")
    answer = qa.ask("When did Mount Zirkel erupt?", mode=mode, k=1)
    assert answer.text == "In 1842" and answer.route == ("full" if mode == "full" else "rag")
    for c in answer.citations:
        assert DOCS[c.doc_id][c.start : c.end] == c.text
    if mode == "full":  # every sentence of both documents, in document order, adjacent ones joined by a space
        assert [(c.doc_id, c.start) for c in answer.citations] == [(p.doc_id, p.start) for p in corpus.pieces]
        assert corpus.searched == []
        assert qa._join(answer.citations)[0] == qa.template.separator.join(DOCS[d] for d in sorted(DOCS))
    else:
        assert corpus.searched == [("When did Mount Zirkel erupt?", 1, None, "bm25")]
        assert [c.text for c in answer.citations] == ["Mount Zirkel erupted in 1842."]
    assert answer.peak_memory_bytes is None and answer.timings["prefill_s"] == 0.01
    named = qa.ask("When did Mount Zirkel erupt?", mode=mode, k=1, documents=["b-bakery.txt"])
    assert {c.doc_id for c in named.citations} == {"b-bakery.txt"} and named.text == "unanswerable"
    assert qa.ask_batch(["When did Mount Zirkel erupt?"], mode=mode, k=1)[0].text == "In 1842"


def test_a_wrong_object_is_named_with_what_it_lacks(index, gen):
    with pytest.raises(RagctxError, match=r"QA's index: a list lacks search\(\), document_chunks\(\); .*"
                                          r"SearchableCorpus.*Index\.load"):
        QA([], gen)

    class SearchOnly:
        def search(self, query, k=5, *, filter=None, mode="dense"):
            return []

    with pytest.raises(RagctxError, match=r"a SearchOnly lacks __len__\(\), document_chunks\(\);"):
        QA(SearchOnly(), gen)
    with pytest.raises(RagctxError, match=r"QA's generator: a object lacks tokenizer, max_context, chat_prompt\(\), "
                                          r"run\(\), generate_batch\(\); .*TextGenerator.*Generator\.open"):
        QA(index, object())

    class NotCallable(ScriptedGenerator):
        run = "not a method"

    with pytest.raises(RagctxError, match=r"a NotCallable lacks run\(\);"):
        QA(index, NotCallable("x", "y"))
    broken = ScriptedGenerator("x", "y")
    broken.tokenizer = object()
    with pytest.raises(RagctxError, match=r"QA's generator.tokenizer: a object lacks encode\(\)"):
        QA(index, broken)


# -- the typed events --------------------------------------------------------------------------------------------
def _kinds(events) -> str:
    """The event sequence as letters, consecutive text deltas as one: T (text), F (fallback), D (done)."""
    letters = "".join({TextDelta: "T", FallbackStarted: "F", Finished: "D"}[type(e)] for e in events)
    return re.sub("T+", "T", letters)


def test_events_of_a_rag_answer_are_text_then_finished(index, gen):
    stream = QA(index, gen, max_new_tokens=10).stream("When did Mount Zirkel erupt?", mode="rag", k=2)
    events = list(stream.events())
    assert _kinds(events) in ("TD", "D") and isinstance(events[-1], Finished)
    assert stream.answer is events[-1].answer and stream.answer.route == "rag"
    assert "".join(e.text for e in events if isinstance(e, TextDelta)).strip() == stream.answer.text
    with pytest.raises(dataclasses.FrozenInstanceError):
        events[-1].answer = None


def test_events_of_an_auto_fallback_and_their_text(index):
    scripted = ScriptedGenerator("Quince", "the Midnight Crust loaf")  # only the bakery's first sentence answers
    qa = QA(SentenceCorpus(DOCS), scripted, max_new_tokens=8)
    stream = qa.stream("Which loaf does the bakery sell?", k=1, documents=None)
    events = list(stream.events())
    assert _kinds(events) == "TD"  # the best sentence holds "Quince": no fallback
    stream = qa.stream("What time does it open?", k=1)  # retrieves "It opens at five.": no "Quince"
    events = list(stream.events())
    assert _kinds(events) == "TFTD"
    fallback = next(e for e in events if isinstance(e, FallbackStarted))
    assert fallback == FallbackStarted("the generator found no answer in the retrieved chunks", "full")
    cut = events.index(fallback)
    rag, full = stream.answer.attempts
    assert "".join(e.text for e in events[:cut]) == rag.text == "unanswerable"
    assert "".join(e.text for e in events[cut + 1 : -1]) == full.text == stream.answer.text == "the Midnight Crust loaf"
    assert events[-1] == Finished(stream.answer) and stream.answer.route == "rag->full"
    # iterating yields the text (README's quickstart), the marker between the attempts when one is given
    marked = qa.stream("What time does it open?", k=1, fallback_marker="[{route}: {reason}]")
    assert "".join(marked) == "unanswerable[full: the generator found no answer in the retrieved chunks]" \
                              "the Midnight Crust loaf"
    assert "".join(qa.stream("What time does it open?", k=1)) == \
           "unanswerablethe Midnight Crust loaf"


def test_a_fallback_to_the_retrieved_documents_says_so():
    scripted = ScriptedGenerator("Quince", "the Midnight Crust loaf")
    scripted.max_context = 150  # the prompt over both documents does not fit; the bakery's alone does
    events = list(QA(SentenceCorpus(DOCS), scripted, max_new_tokens=8).stream(
        "What time does it open?", k=1).events())
    fallback = next(e for e in events if isinstance(e, FallbackStarted))
    assert fallback.route == "full(documents)" and events[-1].answer.route == "rag->full(documents)"


# -- the memory meter ----------------------------------------------------------------------------------------------
def test_a_metered_generator_reports_each_generations_peak(index, gen):
    meter = metered(gen)
    assert metered(meter) is meter and isinstance(meter, MeteredGenerator)
    assert meter.tokenizer is gen.tokenizer and meter.max_context == gen.max_context and meter.device == gen.device
    events = list(meter.run(gen.tokenizer.encode("Hello"), max_new_tokens=4))
    assert events[-1].generation.peak_memory_bytes > 0 and events[:-1] == list(gen.run("Hello", max_new_tokens=4))[:-1]
    batch = meter.generate_batch(["Hello", "World"], max_new_tokens=4)
    assert len({g.peak_memory_bytes for g in batch}) == 1 and batch[0].peak_memory_bytes > 0
    plain = QA(index, gen, max_new_tokens=4).ask("Zirkel", mode="rag", k=1)
    answer = QA(index, meter, max_new_tokens=4).ask("Zirkel", mode="rag", k=1)
    assert plain.peak_memory_bytes is None and plain.attempts[0].peak_memory_bytes is None
    assert answer.peak_memory_bytes == answer.attempts[0].peak_memory_bytes > 0 and answer.text == plain.text


def test_a_duck_typed_corpus_gets_its_own_search_mode_and_an_index_refuses_an_unknown_one(index, gen):
    """QA checks ``retrieval`` against ragctx's retriever registry only for ragctx's Index: another corpus receives
    the name as its search mode."""
    corpus, scripted = SentenceCorpus(DOCS), ScriptedGenerator("1842", "In 1842")
    qa = QA(corpus, scripted, max_new_tokens=8, retrieval="sentences")
    assert qa.ask("When did Mount Zirkel erupt?", mode="rag", k=1).text == "In 1842"
    assert corpus.searched[-1][3] == "sentences"
    with pytest.raises(RagctxError, match="retrieval 'sentences' is unknown"):
        QA(index, gen, retrieval="sentences")
