"""The same weights under every attention implementation: answers, time and tokens side by side.

    python examples/switch_attention.py path/to/docs "When did the volcano erupt?" --generator path/to/checkpoint

With ``--generator builtin`` each variant uses its own built-in weights (flash shares softmax's).
"""

from __future__ import annotations

import argparse

from ragctx import Index, load_path
from ragctx.generator import ATTENTION, Generator
from ragctx.qa import QA


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("docs")
    p.add_argument("question")
    p.add_argument("--generator", default="builtin")
    p.add_argument("--device", default=None)
    args = p.parse_args()

    index = Index.build(load_path(args.docs).documents, device=args.device)
    shared = None if args.generator == "builtin" else Generator.open(args.generator, device=args.device)
    print(f"{'attention':<15} {'prefill ms':>10} {'decode ms':>10}  answer")
    for name in ATTENTION:
        if shared is None:
            gen = Generator.open(f"builtin:{name}", device=args.device)
        else:
            gen = shared.set_attention(name)
        answer = QA(index, gen).ask(args.question, mode="full")
        t = answer.timings
        print(f"{name:<15} {t['prefill_s'] * 1e3:>10.1f} {t['decode_s'] * 1e3:>10.1f}  {answer.text!r}")


if __name__ == "__main__":
    main()
