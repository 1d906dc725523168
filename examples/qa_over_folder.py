"""Document QA over a folder: index it, then answer questions with citations.

    python examples/qa_over_folder.py path/to/docs "When did the volcano erupt?" --generator builtin:flash
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
    p.add_argument("--generator", default="builtin:flash", help="builtin:NAME, a ragctx model folder or a HF checkpoint")
    p.add_argument("--device", default=None)
    args = p.parse_args()

    report = load_path(args.docs)
    print(report.summary())
    index = Index.build(report.documents, device=args.device)
    qa = QA(index, Generator.open(args.generator, device=args.device))
    answer = qa.ask(args.question, mode="auto", k=5)
    print(f"\nanswer: {answer.text}\nroute:  {answer.route}")
    for c in answer.citations:
        print(f"  {c.doc_id} [{c.start}:{c.end}] {' '.join(c.text.split())[:100]}")


if __name__ == "__main__":
    main()
