"""Writes a reproducible RULER-style needle set as JSONL (one example per line).

    python eval/make_needles.py --out eval/data/needles-2k.jsonl --n 200 --length 2000 --seed 0
    python eval/make_needles.py --haystack repeat --kinds single multikey --unanswerable 0.2 ...

The generator itself is ``ragctx.tasks.needles`` (the evaluation harness imports it); this script only fixes the
arguments and writes the file.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ragctx.tasks import KINDS, NeedleTask  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--length", type=int, nargs="+", default=[2000], help="context lengths (bytes)")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--unanswerable", type=float, default=0.2, help="share of questions with an absent key")
    p.add_argument("--haystack", default="essays", help="essays, repeat, or a folder of .txt/.md files")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    task = NeedleTask(args.haystack, seed=args.seed)
    rng = random.Random(args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        for i in range(args.n):
            ex = task.example(i, length=rng.choice(args.length), kind=rng.choice(args.kinds),
                              unanswerable=rng.random() < args.unanswerable)
            f.write(json.dumps({"prompt": ex.prompt, "target": ex.target, **ex.to_dict()}) + "\n")
    print(f"wrote {args.n} examples to {out}")


if __name__ == "__main__":
    main()
