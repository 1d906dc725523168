"""Training curves of the built-in generators: per-byte target loss against step (smoothed) for every run under
eval/reports/training/ (the shipped models' last runs) and eval/reports/archive/training/ (the runs before them),
and the per-length accuracy of each run's evaluations.

    python eval/plot_training.py            # writes eval/reports/training/curves.png and accuracy.png

plus ``curves-same-budget.png`` and ``curves-same-budget-3k.png``: the four same-budget runs of 1200 and of 3000
steps alone (issue 4's comparison), each set on one axis.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FOLDER = Path(__file__).parent / "reports" / "training"  # the figures go here
ARCHIVE = Path(__file__).parent / "reports" / "archive" / "training"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _curves(runs: list[Path], path: Path, title: str) -> None:
    """Per-target-byte training loss (EMA) of ``runs`` on one log axis, saved to ``path``."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colors = plt.cm.tab20.colors  # more runs than the default cycle's 10: the 10 dark shades, then the 10 light
    for i, run in enumerate(runs):
        rows = _rows(run / "train.jsonl")
        if not rows:
            continue
        smooth, out = None, []
        for r in rows:  # exponential moving average of the per-target-byte loss
            smooth = r["target_loss"] if smooth is None else 0.98 * smooth + 0.02 * r["target_loss"]
            out.append(smooth)
        ax.plot([r["step"] for r in rows], out, label=run.name, color=colors[2 * i % 20 + i // 10 % 2])
    ax.axhline(math.log(10), color="grey", ls=":", lw=1, label="chance (digits)")
    ax.set(xlabel="step", ylabel="target loss per byte (EMA)", yscale="log", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    runs = sorted((p for folder in (FOLDER, ARCHIVE) for p in folder.iterdir() if (p / "train.jsonl").is_file()),
                  key=lambda p: p.name)  # the order the figures had before the archive (by run name)
    _curves(runs, FOLDER / "curves.png", "built-in generators: training")
    groups: dict[str, tuple[int, list[Path]]] = {"same-budget": (1200, []), "same-budget-3k": (3000, [])}
    for run in runs:
        if run.name.startswith("same-budget-"):
            groups["same-budget-3k" if run.name.startswith("same-budget-3k-") else "same-budget"][1].append(run)
    for name, (steps, same) in groups.items():
        if same:
            _curves(same, FOLDER / f"curves-{name}.png",
                    f"same budget from the same weights: {steps} steps x 64 KiB, seed 17")

    evaluated = [(run, _rows(run / "eval.jsonl")) for run in runs]
    evaluated = [(run, rows) for run, rows in evaluated if rows]
    fig, axes = plt.subplots(1, len(evaluated), figsize=(3.2 * len(evaluated), 3.2), sharey=True, squeeze=False)
    for ax, (run, rows) in zip(axes[0], evaluated):
        lengths = [k for k in rows[-1] if k.isdigit()]
        for length in lengths:
            ax.plot([r["step"] for r in rows if length in r], [r[length]["accuracy"] for r in rows if length in r],
                    marker="o", ms=3, label=f"{length} B")
        ax.set(title=run.name, xlabel="step", ylim=(-0.02, 1.02))
    axes[0][0].set_ylabel("accuracy (all kinds)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(FOLDER / "accuracy.png", dpi=110)
    print(f"wrote {FOLDER / 'curves.png'} and {FOLDER / 'accuracy.png'}")


if __name__ == "__main__":
    main()
