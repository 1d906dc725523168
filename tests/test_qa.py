"""QA mechanics with a real (small, untrained) generator: routes, ordering, budgets, citations, errors.
Answer quality with a trained model is tested where the built-in models are (issue 4's fixtures)."""

from __future__ import annotations

import json

import pytest
import torch

from ragctx import ChunkConfig, Document, Index, RagctxError
from ragctx.cli import main
from ragctx.evaluation.memory import metered
from ragctx.generator import ByteTokenizer, Generator, ModelConfig, Transformer
from ragctx.qa import QA, ask_many

DOCS = {
    "a-volcano.txt": "Mount Zirkel erupted in 1842. The ash covered the valley for a week. Farmers moved north. "
    "The crater lake is green and cold.",
    "b-bakery.txt": "The bakery on Quince Street sells the Midnight Crust loaf. It opens at five. The owner trained "
    "in Copenhagen and bakes rye on Sundays.",
    "c-probe.txt": "The probe Kestrel-9 reached Enceladus after eleven years. It found salt water plumes. "
    "Engineers celebrated in Pasadena.",
}


@pytest.fixture(scope="module")
def index(embedder):
    docs = [Document.from_text(k, v) for k, v in DOCS.items()]
    return Index.build(docs, embedder=embedder, chunking=ChunkConfig(max_tokens=16, overlap=4), device="cpu")


@pytest.fixture(scope="module")
def gen():
    torch.manual_seed(0)
    return Generator(Transformer(ModelConfig.from_name("tiny", max_seq_len=1024)), ByteTokenizer())


def test_rag_cites_top_chunks_in_document_order_with_exact_spans(index, gen):
    qa = QA(index, metered(gen), max_new_tokens=8)  # metered: QA itself measures tokens and seconds, not memory
    answer = qa.ask("When did Mount Zirkel erupt?", mode="rag", k=3)
    assert answer.route == "rag" and len(answer.attempts) == 1
    keys = [(c.doc_id, c.start) for c in answer.citations]
    assert keys == sorted(keys)  # document order, not score order
    for c in answer.citations:
        assert DOCS[c.doc_id][c.start : c.end] == c.text
    assert any("1842" in c.text for c in answer.citations)
    prompt = qa.template.prompt.format(context=qa.template.separator.join(c.text for c in answer.citations),
                                       question="When did Mount Zirkel erupt?")
    assert answer.input_tokens == len(gen.tokenizer.encode(prompt))
    assert set(answer.timings) == {"retrieve_s", "prefill_s", "decode_s"} and answer.timings["retrieve_s"] > 0
    assert answer.peak_memory_bytes > 0


def test_overlapping_chunks_are_merged(index, gen):
    qa = QA(index, gen, max_new_tokens=4, retrieval="dense")  # dense search returns every chunk asked for
    answer = qa.ask("bakery Quince Street Midnight Crust loaf owner Copenhagen rye", mode="rag", k=len(index))
    for c in answer.citations:
        assert DOCS[c.doc_id][c.start : c.end] == c.text
    assert len(answer.citations) < len(index)  # overlapping chunks merged into single spans
    context, _ = qa._join(answer.citations)
    # every document reads whole, in order: overlaps merged, consecutive chunks joined by one space
    assert context == qa.template.separator.join(DOCS[d] for d in sorted(DOCS))


def test_budget_trims_lowest_scoring_chunks(index, gen):
    qa = QA(index, gen, max_new_tokens=4, retrieval="dense")
    full = qa.ask("When did Mount Zirkel erupt?", mode="rag", k=6)
    small = qa.ask("When did Mount Zirkel erupt?", mode="rag", k=6, budget=full.input_tokens - 60)
    assert small.input_tokens <= full.input_tokens - 60
    kept = {(c.doc_id, c.start) for c in small.citations}
    assert len(kept) < len(full.citations) or sum(len(c.text) for c in small.citations) < sum(
        len(c.text) for c in full.citations)
    best = max(full.citations, key=lambda c: c.score)
    assert any(c.doc_id == best.doc_id and c.start <= best.start < c.end + 1 for c in small.citations)


def test_full_context_in_document_order_and_its_limits(index, gen):
    qa = QA(index, gen, max_new_tokens=4)
    answer = qa.ask("Which moon?", mode="full")
    assert answer.route == "full"
    assert [c.doc_id for c in answer.citations] == sorted(c.doc_id for c in answer.citations)
    assert {c.doc_id for c in answer.citations} == set(DOCS)
    assert answer.citations[0].text == DOCS["a-volcano.txt"]
    context, _ = qa._join(answer.citations)  # the whole corpus, in document order
    assert context == qa.template.separator.join(DOCS[d] for d in sorted(DOCS))
    with pytest.raises(RagctxError, match="full context is .* tokens; the generator takes 200"):
        qa.ask("Which moon?", mode="full", budget=200)
    start = qa.ask("Which moon?", mode="full", budget=200, truncate="start")
    end = qa.ask("Which moon?", mode="full", budget=200, truncate="end")
    assert start.attempts[0].truncated and start.input_tokens <= 200 and end.input_tokens <= 200
    assert start.citations[0].doc_id == "a-volcano.txt" and end.citations[-1].doc_id == "c-probe.txt"
    only = qa.ask("Which moon?", mode="full", documents=["c-probe.txt"])
    assert {c.doc_id for c in only.citations} == {"c-probe.txt"}


def test_auto_falls_back_on_a_low_retrieval_score_and_records_both_attempts(index, gen):
    confident = QA(index, gen, max_new_tokens=4, score_threshold=None).ask("Zirkel eruption year", k=1)
    assert confident.route == "rag" and confident.fallback_reason is None
    strict = QA(index, gen, max_new_tokens=4, score_threshold=1.01, retrieval="dense")  # no cosine reaches it
    answer = strict.ask("Zirkel eruption year", k=1)
    assert answer.route == "rag->full" and [a.route for a in answer.attempts] == ["rag", "full"]
    assert "threshold" in answer.fallback_reason
    assert answer.input_tokens == sum(a.input_tokens for a in answer.attempts)
    escalated = strict.ask("Zirkel eruption year", k=1, escalate=[2])
    assert escalated.route == "rag->rag(k=2)->full"
    too_small = strict.ask("Zirkel eruption year", k=1, budget=150)  # the full corpus does not fit
    assert too_small.route == "rag" and "full context not tried" in too_small.fallback_reason


def test_auto_keeps_the_rag_answer_when_the_full_context_runs_out_of_memory(index, gen, monkeypatch):
    real_run = gen.run

    def run(prompt, **kw):  # the device fails on long inputs, as the reference softmax does at 64K on an H200
        if len(prompt) > 300:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 128.00 GiB")
        return real_run(prompt, **kw)

    monkeypatch.setattr(gen, "run", run)
    qa = QA(index, gen, max_new_tokens=4, score_threshold=1.01, retrieval="dense")  # always falls back
    answer = qa.ask("Zirkel eruption year", k=1)
    assert answer.route == "rag" and [a.route for a in answer.attempts] == ["rag"]
    assert "ran out of memory" in answer.fallback_reason and "the RAG answer stands" in answer.fallback_reason
    assert answer.text == answer.attempts[0].text
    with pytest.raises(torch.OutOfMemoryError):  # asked for the full context alone, the failure is the caller's
        qa.ask("Zirkel eruption year", mode="full")

    def broken(prompt, **kw):  # any other runtime error is not swallowed
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(gen, "run", lambda prompt, **kw: broken(prompt) if len(prompt) > 300 else real_run(prompt, **kw))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        qa.ask("Zirkel eruption year", k=1)


def test_stream_yields_the_answer_text(index, gen):
    qa = QA(index, gen, max_new_tokens=10)
    stream = qa.stream("When did Mount Zirkel erupt?", mode="rag", k=2)
    text = "".join(stream)
    assert stream.answer is not None and text.strip() == stream.answer.text
    fallback = QA(index, gen, max_new_tokens=10, score_threshold=1.01, retrieval="dense").stream(
        "When did Mount Zirkel erupt?", k=2, fallback_marker="<<{reason}>>")
    pieces = "".join(fallback)
    rag, full = fallback.answer.attempts
    assert pieces.count("<<") == 1 and "threshold" in pieces
    before, after = pieces.split(">>")
    assert before.split("<<")[0].strip() == rag.text and after.strip() == full.text == fallback.answer.text


@pytest.mark.parametrize("kwargs,match", [
    (dict(question=""), "empty question"),
    (dict(question="x", mode="long"), "rag, full, auto"),
    (dict(question="x", truncate="middle"), "truncate"),
    (dict(question="x", budget=0), "budget"),
    (dict(question="x", mode="full", documents=["nope.txt"]), "none of the documents"),
])
def test_bad_input(index, gen, kwargs, match):
    with pytest.raises(RagctxError, match=match):
        QA(index, gen).ask(**kwargs)


def test_cli_ask(index, gen, tmp_path, capsys):
    index.save(tmp_path / "idx")
    gen.save(tmp_path / "gen")
    argv = ["ask", str(tmp_path / "idx"), "When did Mount Zirkel erupt?", "--generator", str(tmp_path / "gen"),
            "--mode", "rag", "-k", "2", "--max-new-tokens", "5", "--device", "cpu"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "route: rag" in out and "[1] a-volcano.txt chars" in out
    assert main(argv + ["--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["route"] == "rag" and data["citations"][0]["doc_id"] == "a-volcano.txt"
    assert main(["ask", str(tmp_path / "idx"), "q", "--generator", str(tmp_path / "nope")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    assert main(["ask", str(tmp_path / "idx"), "q", "--generator", "builtin:nothing"]) == 2
    assert "no built-in generator" in capsys.readouterr().err
    assert main(["ask", str(tmp_path / "missing"), "q"]) == 2


def test_cpu_peak_memory_is_the_generations_own(index, gen):
    import os

    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("per-generation peak RSS needs Linux's /proc/self/clear_refs")
    from ragctx.evaluation.memory import peak_memory, reset_peak_rss

    reset_peak_rss()  # the process's peak so far may be anything (earlier tests loaded real models)
    import mmap

    big = mmap.mmap(-1, 400 * 2**20)  # lift the process's peak RSS by 400 MB, then give it back to the OS (munmap)
    for at in range(0, len(big), 4096):
        big[at] = 1
    big.close()

    process_peak = peak_memory(torch.device("cpu"))
    answer = QA(index, metered(gen), max_new_tokens=4).ask("When did Mount Zirkel erupt?", mode="rag", k=1)
    assert 0 < answer.peak_memory_bytes < process_peak - 200 * 2**20


QUESTIONS = ["When did Mount Zirkel erupt?", "Which loaf does the bakery sell?", "Where did the probe go?",
             "Zirkel eruption year"]


def _same(a, b) -> None:
    assert (a.text, a.route, a.input_tokens, a.fallback_reason) == (b.text, b.route, b.input_tokens, b.fallback_reason)
    assert [(c.doc_id, c.start, c.end) for c in a.citations] == [(c.doc_id, c.start, c.end) for c in b.citations]


@pytest.mark.parametrize("mode", ["rag", "full", "auto"])
def test_ask_batch_gives_the_answers_of_ask_one_at_a_time(index, gen, mode):
    """Batched decoding (several questions' prompts at once, left-padded) changes nothing but the timings: the
    same texts, routes, citations and input tokens, auto's fallback included (a threshold no score reaches)."""
    for qa in (QA(index, gen, max_new_tokens=6), QA(index, gen, max_new_tokens=6, score_threshold=1.01,
                                                      retrieval="dense")):
        one = [qa.ask(q, mode=mode, k=2) for q in QUESTIONS]
        many = qa.ask_batch(QUESTIONS, mode=mode, k=2, batch_size=3)
        for a, b in zip(many, one):
            _same(a, b)
        assert all(a.timings["prefill_s"] > 0 for a in many)
    assert any(a.route == "rag->full" for a in many) if mode == "auto" else True


def test_ask_many_over_two_indexes_and_a_failing_job(index, gen, embedder):
    """Jobs of different QA objects (another index) share batches; a job that fails (full context over the budget)
    gets its RagctxError in its place and the others still answer; the inputs are checked."""
    other = Index.build([Document.from_text("d-lake.txt", "Lake Orla freezes in December. Skaters come at dawn.")],
                        embedder=embedder, chunking=ChunkConfig(max_tokens=16, overlap=4), device="cpu")
    qa1, qa2 = QA(index, gen, max_new_tokens=5), QA(other, gen, max_new_tokens=5)
    jobs = [(qa1, QUESTIONS[0], {"mode": "rag", "k": 2}), (qa2, "When does the lake freeze?", {"mode": "full"}),
            (qa1, QUESTIONS[1], {"mode": "full", "budget": 120}), (qa2, "Who comes at dawn?", {"mode": "auto", "k": 1})]
    got = ask_many(jobs, batch_size=4)
    assert isinstance(got[2], RagctxError) and "full context" in str(got[2])
    for (qa, q, kw), a in zip(jobs, got):
        if not isinstance(a, Exception):
            _same(a, qa.ask(q, **kw))
    assert ask_many([]) == []
    with pytest.raises(RagctxError, match="batch_size=0"):
        ask_many(jobs, batch_size=0)
    another = Generator(Transformer(ModelConfig.from_name("tiny", max_seq_len=1024)), ByteTokenizer())
    with pytest.raises(RagctxError, match="share one generator"):
        ask_many([jobs[0], (QA(index, another), "q?", {})])
    with pytest.raises(RagctxError, match="list of questions"):
        qa1.ask_batch("one question")


def test_ask_batch_keeps_the_rag_answers_when_the_full_batch_runs_out_of_memory(index, gen, monkeypatch):
    real = gen.generate_batch

    def generate_batch(prompts, **kw):  # long inputs fail on the device, as in the single-question test above
        if any(len(p) > 300 for p in prompts):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 128.00 GiB")
        return real(prompts, **kw)

    monkeypatch.setattr(gen, "generate_batch", generate_batch)
    qa = QA(index, gen, max_new_tokens=4, score_threshold=1.01, retrieval="dense")  # always falls back
    answers = qa.ask_batch(QUESTIONS[:2], k=1)
    assert [a.route for a in answers] == ["rag", "rag"]
    assert all("ran out of memory" in a.fallback_reason for a in answers)
    full = qa.ask_batch(QUESTIONS[:2], mode="full", errors="return")  # the full context alone: errors in place
    assert all(isinstance(a, torch.OutOfMemoryError) for a in full)
    with pytest.raises(torch.OutOfMemoryError):  # by default the first error is raised, as ask() would
        qa.ask_batch(QUESTIONS[:2], mode="full")
    with pytest.raises(RagctxError, match="errors='ignore'"):
        qa.ask_batch(QUESTIONS[:2], errors="ignore")
