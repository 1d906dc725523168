"""``ragctx serve``: the API through FastAPI's TestClient, the command's errors, and the page in a real browser
(Debian's chromium driven by Playwright) against ``ragctx serve`` started as a subprocess.

The generator is the built-in needle model (``builtin:flash``, 7 MB, loads in about a second): it answers needle
questions ("What is the special magic number for ...") and says "unanswerable" to anything else, which is what
``auto``'s fall-back needs to be exercised."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ragctx import ChunkConfig, Document, Index
from ragctx.server import create_app, document_text

KEY, VALUE = "quiet lantern", "9052718"
NEEDLE = f"One of the special magic numbers for {KEY} is: {VALUE}."
NEEDLE_QUESTION = f"What is the special magic number for {KEY} mentioned in the provided text?"


@pytest.fixture(scope="module")
def flash():
    from ragctx.generator import Generator

    return Generator.open("builtin:flash", device="cpu")


@pytest.fixture(scope="module")
def client(built_index, embedder, flash):
    app = create_app(built_index[0], flash, embedder=embedder, device="cpu", max_new_tokens=16)
    with TestClient(app) as c:
        yield c


def test_health_says_what_is_loaded(client, built_index):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["index"] == str(built_index[0])
    assert h["documents"] == len(Index.load(built_index[0], device="cpu").documents()) and h["chunks"] >= h["documents"]
    assert h["defaults"] == {"mode": "auto", "k": 5, "retrieval": "bm25", "max_new_tokens": 16}


def test_search_gives_exact_spans_of_the_documents(client, built_index):
    r = client.post("/search", json={"query": "Which moon did the Kestrel-9 probe reach?", "k": 2})
    assert r.status_code == 200
    hits = r.json()["hits"]
    assert len(hits) == 2 and hits[0]["doc_id"] == "notes/space.txt" and hits[0]["score"] >= hits[1]["score"]
    original = (built_index[1] / "notes/space.txt").read_text()
    doc = client.get("/documents/notes/space.txt").json()  # an id with a slash in the path
    for text in (original, doc["text"]):
        assert text[hits[0]["start"] : hits[0]["end"]] == hits[0]["text"]
    bm25 = client.post("/search", json={"query": "museum ticket", "retrieval": "bm25", "filter": {"lang": "en"}})
    assert [h["doc_id"] for h in bm25.json()["hits"]] == ["faq-1"]


def test_documents_rebuilt_from_chunks_keep_every_offset(embedder):
    texts = {"a.txt": "Mount Zirkel erupted in 1842. The ash covered the valley for a week.\n\nFarmers moved north. "
                      "The crater lake is green and cold. Boats cross it in summer.",
             "b.txt": "The bakery on Quince Street sells the Midnight Crust loaf. It opens at five. The owner trained "
                      "in Copenhagen and bakes rye on Sundays."}
    index = Index.build([Document.from_text(k, v) for k, v in texts.items()], embedder=embedder,
                        chunking=ChunkConfig(max_tokens=12, overlap=3), device="cpu")
    for doc_id, original in texts.items():
        rebuilt = document_text(index, doc_id)
        chunks = index.store.document_chunks([doc_id])
        assert len(chunks) > 2
        assert all(rebuilt[c.start : c.end] == c.text == original[c.start : c.end] for c in chunks)
        assert rebuilt.split() == original.split() and len(rebuilt) == len(original.rstrip())
    assert "green and cold" in document_text(index, "a.txt") and document_text(index, "nope") is None


def test_ask_returns_answer_route_cost_and_exact_citations(client):
    r = client.post("/ask", json={"question": "When did Mount Zirkel erupt?", "mode": "rag", "k": 2})
    assert r.status_code == 200
    a = r.json()
    assert a["route"] == "rag" and a["text"] == "unanswerable" and a["refused"]  # the needle model's refusal
    cost = a["cost"]
    assert cost["input_tokens"] == a["input_tokens"] > 0 and cost["seconds"] >= cost["prefill_s"] > 0
    assert a["citations"] and any("1842" in c["text"] for c in a["citations"])
    for c in a["citations"]:
        assert client.get(f"/documents/{c['doc_id']}").json()["text"][c["start"] : c["end"]] == c["text"]


def test_stream_sends_tokens_then_the_fallback_then_the_answer(client):
    with client.stream("POST", "/ask/stream", json={"question": "When did Mount Zirkel erupt?"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
        events = [json.loads(line) for line in r.iter_lines() if line]
    kinds = [e["event"] for e in events]
    assert kinds[-1] == "answer" and kinds.count("fallback") == 1 and "error" not in kinds
    cut = kinds.index("fallback")
    first = "".join(e["text"] for e in events[:cut])
    second = "".join(e["text"] for e in events[cut + 1 : -1])
    answer = events[-1]["answer"]
    assert answer["route"] == "rag->full" and "no answer" in events[cut]["reason"]
    assert first.strip() == answer["attempts"][0]["text"] and second.strip() == answer["text"]
    assert answer["cost"]["input_tokens"] == sum(t["input_tokens"] for t in answer["attempts"])


@pytest.mark.parametrize("path,body,status,message", [
    ("/ask", {"question": "   "}, 422, "question: empty question"),
    ("/ask", {"question": "x", "mode": "fast"}, 422, "mode: Input should be 'rag', 'full' or 'auto'"),
    ("/ask", {"question": "x", "k": 0}, 422, "k: Input should be greater than or equal to 1"),
    ("/ask", {"question": "x", "colour": "red"}, 422, "colour: Extra inputs are not permitted"),
    ("/ask", {"question": "x", "documents": ["nope.txt"]}, 400, "unknown document id(s): nope.txt"),
    ("/ask/stream", {"question": "x", "documents": ["nope.txt"]}, 400, "GET /documents lists the ids"),
    ("/ask/stream", {"question": ""}, 422, "empty question"),
    ("/search", {"query": ""}, 422, "query: empty query"),
    ("/search", {"query": "x", "retrieval": "fuzzy"}, 422, "retrieval: Input should be"),
    ("/search", {"query": "x", "filter": {"colour": "red"}}, 400, "no document has such metadata"),
    ("/search", "not json", 422, "JSON decode error"),
])
def test_bad_input_is_a_4xx_saying_what_to_change(client, path, body, status, message):
    r = (client.post(path, content=body, headers={"content-type": "application/json"}) if isinstance(body, str)
         else client.post(path, json=body))
    assert r.status_code == status and r.headers["content-type"] == "application/json"
    assert message in r.json()["detail"]


def test_unknown_document_is_404(client):
    r = client.get("/documents/notes/nope.txt")
    assert r.status_code == 404 and "no document 'notes/nope.txt'" in r.json()["detail"]


def test_page_is_one_self_contained_file(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert 'id="question"' in r.text and "<mark" not in r.text.split("<script>")[0]
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", r.text)  # nothing from a CDN or another site


def _ragctx(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ragctx", *args], capture_output=True, text=True, timeout=timeout)


def test_serve_errors_are_one_line_exit_2(built_index, tmp_path):
    missing = _ragctx("serve", str(tmp_path / "nope"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1
    assert missing.stderr.startswith("ragctx: error: ") and "no such index" in missing.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = _ragctx("serve", str(built_index[0]), "--port", str(port), "--generator", "builtin:flash")
    assert busy.returncode == 2 and "Traceback" not in busy.stderr
    assert f"port {port} on 127.0.0.1 is in use" in busy.stderr and "--port 0" in busy.stderr


def test_import_ragctx_does_not_load_the_server():
    code = "import sys, ragctx, ragctx.cli; assert 'fastapi' not in sys.modules and 'uvicorn' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# -- the page in a real browser ---------------------------------------------------------------------------------
def _chromium() -> str | None:
    found = os.environ.get("RAGCTX_CHROMIUM") or shutil.which("chromium")
    return found or ("/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None)


class _Server:
    """``ragctx serve`` as a subprocess on a free port (``--port 0``; the address is read from what it prints)."""

    def __init__(self, *args: str, timeout: float = 90) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "ragctx", "serve", *args, "--port", "0"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.err: list[str] = []
        threading.Thread(target=lambda: self.err.extend(self.proc.stderr), daemon=True).start()
        self.url = self._wait(timeout)

    def stderr(self) -> str:
        return "".join(self.err)[-4000:]

    def _wait(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"ragctx serve exited with {self.proc.returncode}:\n{self.stderr()}")
            found = re.search(r"at (http://127\.0\.0\.1:\d+/)", self.stderr())
            if found:
                try:
                    with urllib.request.urlopen(found[1] + "health", timeout=2) as r:
                        if json.load(r)["status"] == "ok":
                            return found[1]
                except OSError:
                    pass
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"ragctx serve did not answer /health within {timeout:.0f} s:\n{self.stderr()}")

    def stop(self) -> int:
        """Ctrl-C, as a user stops it; killed if it has not exited after 15 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture()
def needle_index(tmp_path, embedder, built_index):
    from ragctx import load_documents

    docs = load_documents(built_index[1]) + [Document.from_text(
        "notes/lanterns.txt", "The lantern makers of the old town worked at night.\n\n"
        f"{NEEDLE} The workshop closed in winter, when the river froze.")]
    index = Index.build(docs, embedder=embedder, chunking=ChunkConfig(64, 8), device="cpu")
    return index.save(tmp_path / "idx"), len(docs)


def test_page_in_chromium_streams_the_answer_and_highlights_the_cited_span(needle_index, tmp_path):
    chromium = _chromium()
    if chromium is None:
        pytest.skip("needs Debian's chromium for the browser test: apt-get install chromium (or set RAGCTX_CHROMIUM "
                    "to a Chromium binary)")
    from playwright.sync_api import expect, sync_playwright

    path, n_docs = needle_index
    server = _Server(str(path), "--generator", "builtin:flash", "--device", "cpu")
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium)
            page = browser.new_page()
            try:
                page.goto(server.url)
                expect(page.locator("#status")).to_contain_text(f"{n_docs} documents")
                page.select_option("#mode", "rag")
                page.fill("#question", NEEDLE_QUESTION)
                page.press("#question", "Enter")
                expect(page.locator("#route")).to_have_text("rag", timeout=30_000)
                expect(page.locator("#answer")).to_contain_text(VALUE)
                expect(page.locator("#cost")).to_contain_text(re.compile(r"^\d+ input tokens; \d+\.\d\d s"))
                expect(page.locator("#citations li").first).to_contain_text("characters")
                mark = page.locator("mark", has_text=NEEDLE)
                expect(mark).to_have_count(1)
                start, end = (int(mark.get_attribute(a)) for a in ("data-start", "data-end"))
                doc_id = mark.get_attribute("data-doc")
                with urllib.request.urlopen(server.url + "documents/" + doc_id) as r:
                    assert json.load(r)["text"][start:end] == mark.text_content()  # the cited span, exactly
                assert page.locator("#error").text_content() == ""
                rebound = urllib.request.Request(server.url + "health", headers={"Host": "evil.example"})
                with pytest.raises(urllib.error.HTTPError, match="400"):  # a page that DNS-rebinds a name: refused
                    urllib.request.urlopen(rebound)
            except Exception as e:
                page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
                raise AssertionError(f"the page failed (screenshot: {tmp_path / 'page.png'}); server stderr:\n"
                                     f"{server.stderr()}") from e
            finally:
                browser.close()
    finally:
        code = server.stop()
    assert code == 0, server.stderr()
