from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ragctx import ChunkConfig, Chunker, Document, RagctxError

CHUNKERS = {
    (16, 0): Chunker(ChunkConfig(max_tokens=16, overlap=0)),
    (24, 6): Chunker(ChunkConfig(max_tokens=24, overlap=6)),
    (64, 16): Chunker(ChunkConfig(max_tokens=64, overlap=16)),
}

words = st.sampled_from(["the", "cat", "naïve", "日本語", "🙂", "Zürich", "x" * 40, "--", "a.b", "ok?", "<|endoftext|>"])
separators = st.sampled_from([" ", "  ", "\n", "\r\n", "\r\n\r\n", "\n\n", "\t", ". ", ""])
prose = st.lists(st.tuples(words, separators), max_size=120).map(lambda p: "".join(w + s for w, s in p))
adversarial = st.one_of(
    st.text(max_size=600),  # arbitrary unicode, including lone control characters
    st.text(alphabet=st.characters(codec="utf-8"), min_size=200, max_size=1500),
    st.builds(lambda w, n: w * n, st.text(min_size=1, max_size=7), st.integers(1, 300)),  # repeated substrings
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", "漢", "🙂", "\r\n", "ab "]), st.integers(100, 2000)),
    prose,
)


def check_guarantees(text: str, chunker: Chunker) -> None:
    chunks = chunker.split(Document("d", text))
    limit, overlap = chunker.config.max_tokens, chunker.config.overlap
    covered = 0
    for i, c in enumerate(chunks):
        assert c.text == text[c.start : c.end]
        assert c.text and c.text == c.text.strip()
        assert c.n_tokens == chunker.count(c.text) <= limit
        assert c.ordinal == i and c.doc_id == "d"
        if i:
            assert c.start > chunks[i - 1].start  # document order
            if overlap == 0:
                assert c.start >= chunks[i - 1].end  # no overlap when none is configured
        assert text[covered : c.start].strip() == "" or c.start < covered  # only whitespace is dropped
        covered = max(covered, c.end)
    assert text[covered:].strip() == ""
    if not text.strip():
        assert chunks == []


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=adversarial, key=st.sampled_from(sorted(CHUNKERS)))
def test_chunk_guarantees_hold_on_random_and_adversarial_text(text, key):
    check_guarantees(text, CHUNKERS[key])


@pytest.mark.parametrize("key", sorted(CHUNKERS), ids=lambda k: f"max{k[0]}-overlap{k[1]}")
@pytest.mark.parametrize(
    "text",
    [
        "x" * 5000,  # one very long word
        "supercalifragilistic" * 300 + " tail",
        "\r\n".join(["line with CRLF endings"] * 200),
        "🙂" * 700,  # four-byte code points, several tokens each
        "abc abc abc " * 400,  # the same piece many times: offsets must still be exact
        "",
        " \n\t ",
    ],
    ids=["long-word", "long-word-tail", "crlf", "emoji", "repeats", "empty", "whitespace"],
)
def test_chunk_guarantees_on_named_cases(text, key):
    check_guarantees(text, CHUNKERS[key])


def test_overlap_is_shared_text_on_prose():
    text = " ".join(f"Sentence number {i} talks about topic {i % 7}." for i in range(200))
    chunks = CHUNKERS[(64, 16)].split(Document("d", text))
    assert len(chunks) > 5
    shared = [chunks[i - 1].end - chunks[i].start for i in range(1, len(chunks))]
    assert all(s > 0 for s in shared)  # consecutive chunks overlap
    assert all(CHUNKERS[(64, 16)].count(text[c.start : p.end]) <= 16 + 2 for p, c in zip(chunks, chunks[1:]))


def test_chunks_fill_the_budget_on_prose():
    text = " ".join(["word"] * 5000)
    chunks = CHUNKERS[(64, 16)].split(Document("d", text))
    assert min(c.n_tokens for c in chunks[:-1]) >= 40  # not fragmenting into tiny pieces


@pytest.mark.parametrize("kwargs", [dict(max_tokens=4), dict(max_tokens=64, overlap=64), dict(overlap=-1)])
def test_bad_chunk_config_is_a_clear_error(kwargs):
    with pytest.raises(RagctxError):
        ChunkConfig(**kwargs)


def test_stripping_whitespace_can_add_a_token_and_is_rechecked():
    text = " <:0:0:0:0:0: 0000:0"  # found by hypothesis: 16 tokens with the space, 17 without
    chunker = CHUNKERS[(16, 0)]
    assert chunker.count(text) <= 16 < chunker.count(text.strip())
    check_guarantees(text, chunker)
    check_guarantees("x " * 30 + text * 3, CHUNKERS[(24, 6)])


# -- a large document is split a block at a time (progress moves, memory stays flat), into the same chunks --------
def _blocked(key: tuple[int, int], block: int) -> Chunker:
    chunker = Chunker(ChunkConfig(max_tokens=key[0], overlap=key[1]))
    chunker.BLOCK = block
    return chunker


WHOLE = {key: _blocked(key, 1 << 62) for key in CHUNKERS}  # never cut: one splitter call over the text
BLOCKED = {key: _blocked(key, 8) for key in CHUNKERS}  # cut wherever the splitter allows


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=st.one_of(adversarial, st.lists(prose, min_size=2, max_size=6).map("\n\n".join),
                      prose.map(lambda p: p.replace("\n", " "))),  # one line: the sentence separator comes first
       key=st.sampled_from(sorted(CHUNKERS)))
def test_blocks_give_the_chunks_of_one_splitter_call(text, key):
    doc = Document("d", text)
    assert BLOCKED[key].split(doc) == WHOLE[key].split(doc)


@pytest.mark.parametrize("key", sorted(CHUNKERS), ids=lambda k: f"max{k[0]}-overlap{k[1]}")
@pytest.mark.parametrize("join", ["\n", "\n\n"], ids=["lines", "paragraphs"])
def test_blocks_on_essays_and_progress_moves_within_a_document(key, join):
    from ragctx.data import essays_dir

    # ~28K characters of prose, lines without blank ones between them
    essays = [re.sub(r"\n{2,}", "\n", p.read_text().strip()) for p in sorted(essays_dir().glob("*.txt"))[:3]]
    text = join.join(essays)
    doc = Document("essays", text)
    calls: list[int] = []
    chunker = _blocked(key, 2048)
    assert chunker.split(doc, progress=calls.append) == WHOLE[key].split(doc)
    assert sum(calls) == len(text) and all(c > 0 for c in calls)
    if join == "\n":  # short lines, packed: a block ends where a chunk starts, past 2048 characters
        assert len(calls) > 8 and max(calls) < len(text) / 5  # reported as it goes, not once at the end
    else:  # each essay is one paragraph, too long to pack: the splitter splits each alone
        assert len(calls) == len(essays)
