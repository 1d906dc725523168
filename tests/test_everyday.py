"""Everyday use: files as people have them (encodings, no extension, .rst, HTML5 without </head>, navigation),
LangChain and LlamaIndex documents and retrievers (against the real libraries), keeping an index in step with a
folder (sync, list), the lazy top-level face."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ragctx import Index, RagctxError, as_documents, load_path
from ragctx.cli import main
from ragctx.documents import Document, decode_text, html_text

HTML5 = """<!doctype html><html lang=en><head><meta charset=utf-8><title>Manual - Pumps</title>
<style>p {color: red}</style><script>var secret = 1;</script>
<body><nav><a href=/>Home</a> | <a href=/docs>Docs</a> | Skip to content</nav>
<aside>Related pages: valves, hoses</aside>
<h1>Pump P-400</h1><p>The P-400 pump moves <b>35 litres</b> a minute.<p>Service it every 500 hours.
<footer>Copyright 2024 Example Corp. All rights reserved.</footer>"""


def test_text_in_other_encodings_without_extension_and_rst(tmp_path):
    (tmp_path / "utf16.txt").write_bytes("Ein Brief über Köln.".encode("utf-16"))  # with its byte-order mark
    (tmp_path / "latin1.txt").write_bytes("Le café crème coûte 3 euros.".encode("latin-1"))
    (tmp_path / "cyrillic.txt").write_bytes("Привет, это обычный русский текст в кодировке Windows.".encode("cp1251"))
    (tmp_path / "LICENSE").write_text("MIT License\n\nPermission is hereby granted, free of charge, to any person.")
    (tmp_path / "guide.rst").write_text("Guide\n=====\n\nThe restructured text guide says hello.")
    (tmp_path / "blob").write_bytes(bytes(range(256)) * 8)  # no extension, binary: skipped
    report = load_path(tmp_path)
    docs = {d.id: d for d in report.documents}
    assert docs["utf16.txt"].text == "Ein Brief über Köln." and docs["utf16.txt"].metadata["encoding"] == "utf-16"
    assert docs["latin1.txt"].text == "Le café crème coûte 3 euros."
    assert docs["cyrillic.txt"].text.startswith("Привет") and docs["cyrillic.txt"].metadata["encoding"] == "cp1251"
    assert "Permission is hereby granted" in docs["LICENSE"].text and "encoding" not in docs["LICENSE"].metadata
    assert "restructured text" in docs["guide.rst"].text
    assert [p.split("/")[-1] for p, _ in report.skipped] == ["blob"]
    # a forced encoding wins; a wrong one is a skip naming it; an unknown codec is an error
    forced = load_path(tmp_path / "latin1.txt", encoding="latin-1").documents[0]
    assert forced.text == "Le café crème coûte 3 euros." and forced.metadata["encoding"] == "latin-1"
    assert "not utf-8" in load_path(tmp_path / "latin1.txt", encoding="utf-8").skipped[0][1]
    with pytest.raises(RagctxError, match="unknown encoding 'klingon'"):
        load_path(tmp_path / "latin1.txt", encoding="klingon")


def test_short_western_text_is_not_misread_by_detection():
    raw = "café crème".encode("latin-1")  # charset-normalizer alone says cp1006 ("cafﻠ crﻟme")
    assert decode_text(raw) == ("café crème", "cp1252")
    assert decode_text("naïve — “quotes” €5".encode("cp1252"))[0] == "naïve — “quotes” €5"


def test_html5_without_head_end_keeps_its_body_and_drops_navigation(tmp_path):
    (tmp_path / "pump.html").write_text(HTML5)
    text = load_path(tmp_path).documents[0].text
    assert "The P-400 pump moves 35 litres a minute." in text and "Service it every 500 hours." in text
    assert text.splitlines()[0] == "Pump P-400"  # block tags are line breaks
    for gone in ("secret", "color", "Skip to content", "Related pages", "Copyright", "Manual - Pumps"):
        assert gone not in text, gone
    with pytest.raises(RagctxError, match="choose 'text'"):
        html_text(HTML5, "everything")


def test_langchain_documents_are_indexed_directly(embedder):
    lc = pytest.importorskip("langchain_core.documents")
    docs = [lc.Document(page_content="The P-400 pump moves 35 litres a minute.", metadata={"source": "pump.pdf",
                                                                                          "page": 3}),
            lc.Document(page_content="Valves are checked weekly.", metadata={"source": "valves.md"}),
            lc.Document(page_content="Valves are replaced yearly.", metadata={"source": "valves.md"}),
            lc.Document(page_content="Hoses last two years.", id="hoses-1", metadata={"when": object()}),
            Document.from_text("own", "A ragctx document beside them.")]
    converted = as_documents(docs)
    assert [d.id for d in converted] == ["pump.pdf#page=3", "valves.md", "valves.md#2", "hoses-1", "own"]
    assert converted[0].metadata["page"] == 3 and isinstance(converted[3].metadata["when"], str)
    index = Index.build(docs, embedder=embedder)
    hits = index.search("how many litres per minute does the pump move", k=1)
    assert hits[0].doc_id == "pump.pdf#page=3"
    with pytest.raises(RagctxError, match=r"Document objects, got int at documents\[1\]"):
        Index.build([docs[0], 7], embedder=embedder)


def test_langchain_retriever_returns_chunks_with_offsets(embedder):
    pytest.importorskip("langchain_core")
    from ragctx.integrations.langchain import RagctxRetriever

    text = "Intro. " * 3 + "The P-400 pump moves 35 litres a minute."
    index = Index.build([Document.from_text("pump.md", text, lang="en"),
                         Document.from_text("other.md", "Bread is baked at dawn.", lang="fr")], embedder=embedder)
    retriever = RagctxRetriever(index=index, k=1, mode="hybrid")
    (doc,) = retriever.invoke("pump litres per minute")
    m = doc.metadata
    assert m["doc_id"] == "pump.md" and text[m["start"]:m["end"]] == doc.page_content and m["lang"] == "en"
    filtered = RagctxRetriever(index=index, k=2, filter={"lang": "fr"}).invoke("pump litres per minute")
    assert [d.metadata["doc_id"] for d in filtered] == ["other.md"]


def test_llamaindex_documents_are_indexed_directly(tmp_path, embedder):
    li = pytest.importorskip("llama_index.core")
    from llama_index.core.schema import Document as LlamaDocument, TextNode

    (tmp_path / "pump.txt").write_text("The P-400 pump moves 35 litres a minute.")
    (tmp_path / "valves.txt").write_text("Valves are checked weekly.")
    read = li.SimpleDirectoryReader(str(tmp_path)).load_data()  # LlamaIndex's own loader: random UUID ids
    docs = [*read,
            LlamaDocument(text="Hoses last two years.", id_="hoses-1", metadata={"id": 3, "text": "a key"}),
            TextNode(text="Filters are changed monthly.", metadata={"file_path": "notes/filters.md"})]
    converted = as_documents(docs)
    by_name = {d.metadata.get("file_name"): d.id for d in converted}
    assert by_name["pump.txt"] == str(tmp_path / "pump.txt") and by_name["valves.txt"] == str(tmp_path / "valves.txt")
    assert [d.id for d in converted[2:]] == ["hoses-1", "notes/filters.md"]
    assert converted[2].metadata["id"] == 3 and converted[2].metadata["text"] == "a key"  # metadata keys kept as such
    index = Index.build(docs, embedder=embedder)
    assert index.search("how many litres per minute does the pump move", k=1)[0].doc_id == str(tmp_path / "pump.txt")
    # a second load gives new UUIDs but the same ids: nothing is indexed twice, and sync mirrors the folder
    (tmp_path / "valves.txt").unlink()
    report = index.sync(li.SimpleDirectoryReader(str(tmp_path)).load_data())
    assert report.unchanged == [str(tmp_path / "pump.txt")] and report.deleted == [str(tmp_path / "valves.txt"),
                                                                                   "hoses-1", "notes/filters.md"]
    assert len(index) == 1


def test_llamaindex_retriever_in_a_query_engine(embedder):
    pytest.importorskip("llama_index.core")
    from llama_index.core.llms import MockLLM
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.response_synthesizers.context_only import ContextOnly
    from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

    from ragctx.integrations.llamaindex import RagctxRetriever

    text = "Intro. " * 3 + "The P-400 pump moves 35 litres a minute."
    index = Index.build([Document.from_text("pump.md", text, lang="en"),
                         Document.from_text("other.md", "Bread is baked at dawn.", lang="fr")], embedder=embedder)
    retriever = RagctxRetriever(index, k=1, mode="hybrid")
    (hit,) = retriever.retrieve("pump litres per minute")
    node, m = hit.node, hit.node.metadata
    assert isinstance(hit, NodeWithScore) and hit.score == m["score"] == index.search(
        "pump litres per minute", k=1, mode="hybrid")[0].score
    assert node.ref_doc_id == m["doc_id"] == "pump.md" and m["lang"] == "en"
    assert text[node.start_char_idx:node.end_char_idx] == node.text == text[m["start"]:m["end"]]
    assert node.node_id == f"pump.md#{m['chunk_id']}"
    filtered = RagctxRetriever(index, k=2, filter={"lang": "fr"}).retrieve(QueryBundle("pump litres per minute"))
    assert [n.node.ref_doc_id for n in filtered] == ["other.md"]
    # inside a LlamaIndex query engine: ContextOnly answers with what an LLM would read, so no LLM runs (the
    # synthesizer insists on having one: MockLLM, never called; the default would be OpenAI)
    engine = RetrieverQueryEngine(RagctxRetriever(index, k=2), response_synthesizer=ContextOnly(llm=MockLLM()))
    response = engine.query("Where is bread baked?")
    assert [n.node.ref_doc_id for n in response.source_nodes] == ["other.md", "pump.md"]
    assert response.response == "\n\n".join(n.node.get_content(MetadataMode.LLM) for n in response.source_nodes)
    assert "Bread is baked at dawn." in response.response and "doc_id: other.md" in response.response
    assert "score:" not in response.response and "start:" not in response.response  # positions are not prompt text
    with pytest.raises(RagctxError, match="empty query"):
        retriever.retrieve(" ")


def test_sync_mirrors_a_folder_and_list_prints_ids(tmp_path, embedder, capsys, monkeypatch):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("Alpha pumps move water.")
    (docs / "b.md").write_text("Beta valves stop water.")
    index = Index.build(load_path(docs).documents, embedder=embedder)
    (docs / "b.md").unlink()
    (docs / "c.md").write_text("Gamma hoses carry water.")
    report = index.sync(load_path(docs).documents)
    assert report.added == ["c.md"] and report.deleted == ["b.md"] and report.unchanged == ["a.md"]
    assert [d["id"] for d in index.documents()] == ["a.md", "c.md"]
    assert all(h.doc_id != "b.md" for h in index.search("valves stop water", k=2))
    # the CLI: sync (and add --prune) on a saved index, list prints ids
    monkeypatch.setattr("ragctx.index.shared_embedder", lambda *a, **k: embedder)
    path = tmp_path / "idx"
    index.save(path)
    (docs / "a.md").unlink()
    assert main(["index", "sync", str(path), str(docs)]) == 0
    assert "1 deleted" in capsys.readouterr().out
    assert main(["index", "list", str(path)]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines() == ["c.md\t1 chunk(s)"] and "1 document(s)" in out.err
    assert main(["index", "list", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == "c.md"


def test_top_level_face_is_lazy_and_typed():
    code = ("import sys, ragctx; heavy = 'ragctx.qa' in sys.modules or 'ragctx.generator' in sys.modules; "
            "from ragctx import QA, Answer, Generator; print(heavy, QA.__name__, Answer.__name__, Generator.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "QA", "Answer", "Generator"]
    import ragctx

    assert (__import__("pathlib").Path(ragctx.__file__).parent / "py.typed").is_file()


def test_build_shows_each_stage_before_embedding_begins(tmp_path, embedder, capsys, monkeypatch):
    from ragctx.chunking import Chunker
    from ragctx.data import essays_dir

    big = tmp_path / "big.txt"
    big.write_text("\n".join(p.read_text().strip() for p in sorted(essays_dir().glob("*.txt"))[:2]))
    monkeypatch.setattr(Chunker, "BLOCK", 2048)  # blocks as a large file has them, on a small one
    seen_at_encode: list[str] = []

    class Recording:  # the test's embedder, noting what stderr showed when embedding began
        name, dim = embedder.name, embedder.dim

        def encode(self, texts, **kw):
            seen_at_encode.append(capsys.readouterr().err)
            return embedder.encode(texts, **kw)

    monkeypatch.setattr("ragctx.index.shared_embedder", lambda *a, **k: Recording())
    assert main(["index", "build", str(big), "--out", str(tmp_path / "idx"), "--progress"]) == 0
    before = seen_at_encode[0]
    after = capsys.readouterr().err
    stages = [before.index(s) for s in ("loading 1 file", "loaded 1 document(s)", "chunking 1 document(s)",
                                        "loading the embedder")]
    assert stages == sorted(stages)  # in this order, all before the first chunk is embedded
    chunking = [line for line in before.replace("\r", "\n").splitlines() if line.startswith("chunking")]
    assert chunking[-1].startswith("chunking 1 document(s): 100%") and "embedding" not in before
    n = len(Index.load(tmp_path / "idx"))
    assert f"embedding {n:,} chunks: 100%" in after and f"saving {n:,} chunks" in after
    # not a terminal (capsys) and no --progress: no bars, as before
    assert main(["index", "build", str(big), "--out", str(tmp_path / "idx2")]) == 0
    assert (seen_at_encode[1] + capsys.readouterr().err).splitlines() == ["loaded 1 document(s), skipped 0"]
