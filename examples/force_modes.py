"""One question, three routes: RAG, the full corpus, and auto (RAG first, full context if RAG finds nothing).

    python examples/force_modes.py path/to/docs "When did the volcano erupt?" --generator builtin:flash
"""

from __future__ import annotations

import argparse

from ragctx import Index, load_path
from ragctx.generator import Generator
from ragctx.qa import QA


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("docs")
    p.add_argument("question")
    p.add_argument("--generator", default="builtin:flash")
    p.add_argument("-k", type=int, default=3)
    p.add_argument("--device", default=None)
    args = p.parse_args()

    index = Index.build(load_path(args.docs).documents, device=args.device)
    qa = QA(index, Generator.open(args.generator, device=args.device))
    for mode in ("rag", "full", "auto"):
        a = qa.ask(args.question, mode=mode, k=args.k, truncate="start" if mode != "rag" else None)
        print(f"{mode:<5} route={a.route:<10} input tokens={a.input_tokens:<6} cited spans={len(a.citations):<3} "
              f"answer={a.text!r}")


if __name__ == "__main__":
    main()
