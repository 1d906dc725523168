"""Trains one built-in generator from ``eval/configs/builtin.json`` (GPU recipe; a tiny CPU run with --smoke).

    python eval/train_builtin.py --variant linear --out runs/linear
    python eval/train_builtin.py --variant softmax --out /tmp/smoke --smoke     # seconds on a CPU
    python eval/train_builtin.py --variant hybrid --out runs/hybrid --max-minutes 8   # then the same again: resumes

Writes the model (bf16 safetensors + config.json with the training config and final evaluation),
``train.jsonl`` (loss curve) and ``eval.jsonl`` (accuracy per length) under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ragctx.generator.train import TrainConfig, train  # noqa: E402

CONFIG = Path(__file__).parent / "configs" / "builtin.json"
SMOKE = dict(model="tiny", lengths=[700, 900], tokens_per_step=2800, steps=20, eval_every=0, eval_examples=2,
             eval_lengths=[700], haystack="repeat", device="cpu")


def variant(spec: dict, name: str) -> dict:
    """A variant's own settings over those of the variant it ``extends`` (recursively), without the key itself."""
    own = dict(spec["variants"][name])
    parent = own.pop("extends", None)
    return {**variant(spec, parent), **own} if parent else own


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    spec = json.loads(CONFIG.read_text())
    p.add_argument("--variant", required=True, choices=sorted(spec["variants"]))
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true", help="tiny CPU run to check the pipeline")
    p.add_argument("--steps", type=int, help="override the step count")
    p.add_argument("--max-minutes", type=float, help="stop with a checkpoint after this long; rerun to resume")
    args = p.parse_args()
    params = {**spec["common"], **variant(spec, args.variant), **(SMOKE if args.smoke else {})}
    if args.smoke:
        params.pop("init", None)  # the smoke model is tiny: a built-in's weights do not fit it
    if args.steps:
        params["steps"] = args.steps
    if args.max_minutes is not None:
        params["max_minutes"] = args.max_minutes
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    _, log = train(TrainConfig(**params), args.out)
    if log:
        print(f"{args.variant}: {len(log)} steps, final loss {log[-1]['loss']:.4f}; results in {args.out}")


if __name__ == "__main__":
    main()
