"""The shipped built-in generators, measured on freshly generated examples (issue 4's CPU checks), and answer
quality of the QA pipeline with the built-in softmax model (rag, full, auto with its fallback, citations).

The full report, with confidence intervals and the long lengths, is eval/reports/builtin/ (eval/eval_builtin.py)."""

from __future__ import annotations

from functools import lru_cache

import pytest

from ragctx import ChunkConfig, Document, Index
from ragctx.data import essays_dir
from ragctx.generator import Generator, builtin_names
from ragctx.generator.train import answer_needle
from ragctx.qa import QA
from ragctx.tasks import NeedleTask, string_match_all

SEED = 2024  # no training run used it: these examples are new to every model
RAG_SIZES = (512, 1024, 2048)


@lru_cache(maxsize=None)
def builtin(name: str, attention: str | None = None) -> Generator:
    return Generator.load(f"builtin:{name}", attention=attention)


def examples(n: int, lengths, *, unanswerable: bool = False, seed: int = SEED):
    task = NeedleTask("essays", seed=seed)
    return [task.example(i, length=lengths[i % len(lengths)], unanswerable=unanswerable) for i in range(n)]


def test_every_variant_is_installed_and_flash_shares_softmax_weights():
    assert set(builtin_names()) >= {"softmax", "flash", "linear", "sliding_window", "hybrid"}
    flash, softmax = builtin("flash"), builtin("softmax")
    assert flash.model.cfg.attention == "flash" and softmax.model.cfg.attention == "softmax"
    ids = list(b"One of the special magic numbers for quiet lantern is: 9052718.")
    assert (flash.logits(ids) - softmax.logits(ids)).abs().max() < 1e-3


def test_softmax_finds_single_needles_in_rag_sized_inputs():
    exs = examples(30, RAG_SIZES)
    gen = builtin("softmax", "flash")  # the same function as softmax (tested equal), fused: faster on a CPU
    accuracy = sum(string_match_all(answer_needle(gen, ex), ex.answers) for ex in exs) / len(exs)
    assert accuracy >= 0.98


@pytest.mark.slow  # 20 s on 2 cores
def test_softmax_says_unanswerable_when_the_key_is_absent_and_only_then():
    gen = builtin("softmax", "flash")
    absent = examples(30, RAG_SIZES, unanswerable=True, seed=SEED + 1)
    recall = sum("unanswerable" in answer_needle(gen, ex).lower() for ex in absent) / len(absent)
    present = examples(30, RAG_SIZES, seed=SEED + 2)
    false = sum("unanswerable" in answer_needle(gen, ex).lower() for ex in present) / len(present)
    assert recall >= 0.95 and false <= 0.05


@pytest.mark.parametrize("name", ["sliding_window", pytest.param("hybrid", marks=pytest.mark.slow),
                                  pytest.param("linear", marks=pytest.mark.slow)])  # 23 s, 15 s on 2 cores
def test_every_model_answers_short_inputs(name):
    exs = examples(30, (512, 1024), seed=SEED + 3)
    gen = builtin(name)
    accuracy = sum(string_match_all(answer_needle(gen, ex), ex.answers) for ex in exs) / len(exs)
    assert accuracy >= 0.90


# -- answer quality of the QA pipeline --------------------------------------------------------------------------
# words from the training keys' lists (wonderwords), joined by a space where training keys have a hyphen
KEY, VALUE = "quiet lantern", "4817263"
QUESTION = f"What is the special magic number for {KEY} mentioned in the provided text?"
NEEDLE = f"One of the special magic numbers for {KEY} is: {VALUE}. "
DECOY = f"Nobody has found the special magic number for {KEY} mentioned in the provided text."


def _excerpt(path, n: int = 1500) -> str:
    text = " ".join(path.read_text()[2000:6000].split())
    return text[: text.find(". ", n) + 1]


@pytest.fixture(scope="module")
def corpus():
    """Three essay excerpts with one planted fact in the first, and a short decoy document that looks more like
    the question than the fact does (so k=1 retrieves the decoy, not the needle)."""
    a, b, c = (_excerpt(p) for p in sorted(essays_dir().glob("*.txt"))[:3])
    cut = a.find(". ", 700) + 2
    docs = {"a.txt": a[:cut] + NEEDLE + a[cut:], "b.txt": b, "c.txt": c, "d.txt": DECOY}
    span = (cut, cut + len(NEEDLE) - 1)  # the fact's characters in a.txt (without the trailing space)
    return docs, span


@pytest.fixture(scope="module")
def qa(corpus, embedder):
    docs, _ = corpus
    index = Index.build([Document.from_text(k, v) for k, v in docs.items()], embedder=embedder,
                        chunking=ChunkConfig(max_tokens=64, overlap=8), device="cpu")
    # the softmax weights; flash is the same function (tested equal) and runs the 5K-byte full context faster
    return QA(index, builtin("softmax", "flash"), max_new_tokens=16)


def _cites_the_fact(ans, corpus) -> bool:
    docs, (start, end) = corpus
    for c in ans.citations:
        assert docs[c.doc_id][c.start : c.end] == c.text  # every citation is an exact span
    return any(c.doc_id == "a.txt" and c.start <= start and c.end >= end for c in ans.citations)


@pytest.mark.parametrize("mode", ["rag", "full", "auto"])
def test_each_mode_answers_and_cites_the_planted_fact(qa, corpus, mode):
    ans = qa.ask(QUESTION, mode=mode, k=3)
    assert ans.text.strip() == VALUE
    assert _cites_the_fact(ans, corpus)
    assert ans.route == ("full" if mode == "full" else "rag") and ans.fallback_reason is None


def test_auto_falls_back_to_the_full_context_when_the_needle_is_not_retrieved(qa, corpus):
    rag_only = qa.ask(QUESTION, mode="rag", k=1)  # the decoy outranks the fact: the model cannot answer
    assert [c.doc_id for c in rag_only.citations] == ["d.txt"] and "unanswerable" in rag_only.text
    ans = qa.ask(QUESTION, mode="auto", k=1)
    assert ans.route == "rag->full" and "no answer" in ans.fallback_reason
    assert [a.route for a in ans.attempts] == ["rag", "full"] and "unanswerable" in ans.attempts[0].text
    assert ans.text.strip() == VALUE and _cites_the_fact(ans, corpus)
    assert ans.input_tokens == sum(a.input_tokens for a in ans.attempts)


def test_a_key_of_words_outside_the_training_lists_is_found_in_full_context():
    """'crimson falcon' was a known miss of the softmax model shipped before 2026-12-01's seventh session (it said
    `unanswerable` from 1.8 KB up while 'crimson hawk' and 'dark falcon' were found); the same-budget model finds it."""
    a = _excerpt(sorted(essays_dir().glob("*.txt"))[0])
    cut = a.find(". ", 700) + 2
    context = a[:cut] + f"One of the special magic numbers for crimson falcon is: {VALUE}. " + a[cut:]
    prompt = f"{context}\n\nQuestion: What is the special magic number for crimson falcon mentioned in the provided text?\nAnswer:"
    assert builtin("softmax", "flash").generate(prompt, max_new_tokens=12, stop=["\n"]).text.strip() == VALUE
