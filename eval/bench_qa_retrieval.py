"""Retrieval for a small reader: recall of the supporting spans of the essays QA set, per retriever, chunk size and
k, and what passage focus keeps (no generation: seconds per configuration on a CPU).

    python eval/bench_qa_retrieval.py --out eval/reports/qa-real            # chunk sizes 64, 128, 200
    python eval/bench_qa_retrieval.py --chunks 200:32 --indexes /tmp/idx    # reuse indexes built before

Recall@k: the share of a question's evidence spans that one of the top-k chunks overlaps (answerable questions,
both splits, and each split alone). ``focus``: the same for the passages QA reads by default (the 2 best
2-sentence passages of the top 5 chunks). Writes ``<out>/retrieval-<date>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval._common import QA_FILE, environment, table  # noqa: E402
from ragctx.evaluation.metrics import doc_spans_overlap as recall  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--chunks", nargs="+", default=["64:8", "128:16", "200:32"], help="TOKENS:OVERLAP per index")
    p.add_argument("--indexes", default=None, help="a folder with essays-TOKENS indexes to reuse (built if missing)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)

    from ragctx import ChunkConfig, Index, load_path
    from ragctx.data import essays_dir
    from ragctx.evaluation.qa_tasks import load_qa_file
    from ragctx.qa import FOCUS, Citation, focus_passages

    items = [i for i in load_qa_file(QA_FILE, corpus=True) if i["answers"]]
    rows = []
    for spec in args.chunks:
        tokens, overlap = (int(x) for x in spec.split(":"))
        folder = Path(args.indexes) / f"essays-{tokens}" if args.indexes else None
        if folder is not None and (folder / "manifest.json").is_file():
            index = Index.load(folder, device="cpu")
        else:
            index = Index.build(load_path(essays_dir()).documents, chunking=ChunkConfig(tokens, overlap), device="cpu")
            if folder is not None:
                index.save(folder)
        for mode in ("dense", "bm25", "hybrid"):
            t = time.perf_counter()
            found: dict[str, list[float]] = {}
            for item in items:
                evidence = [(e["doc_id"], e["start"], e["end"]) for e in item["evidence"]]
                hits = index.search(item["question"], k=10, mode=mode)
                spans = [(h.doc_id, h.start, h.end) for h in hits]
                for k in (1, 3, 5, 10):
                    found.setdefault(f"R@{k}", []).append(recall(spans[:k], evidence))
                pieces = [Citation(h.doc_id, h.start, h.end, h.text, h.score) for h in hits[:5]]
                passages = focus_passages(item["question"], pieces, FOCUS, 2)
                found.setdefault("focus", []).append(recall([(c.doc_id, c.start, c.end) for c in passages], evidence))
                found.setdefault("split", []).append(item["split"])
            ms = (time.perf_counter() - t) / len(items) * 1e3
            for split in ("all", "dev", "test"):
                keep = [i for i, s in enumerate(found["split"]) if split == "all" or s == split]
                row = {"chunk_tokens": tokens, "retrieval": mode, "split": split, "n": len(keep)}
                row.update({key: sum(v[i] for i in keep) / len(keep) for key, v in found.items() if key != "split"})
                row["ms_per_query"] = ms
                rows.append(row)
            print(table([r for r in rows[-3:]], list(rows[-1])), flush=True)
    cols = ["chunk_tokens", "retrieval", "split", "n", "R@1", "R@3", "R@5", "R@10", "focus", "ms_per_query"]
    print("\n" + table([r for r in rows if r["split"] == "all"], cols))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        env = environment()
        (out / f"retrieval-{env['date']}.json").write_text(json.dumps({"env": env, "qa_file": str(QA_FILE.name),
                                                                        "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
