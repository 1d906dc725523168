"""Training the built-in byte-level generators on needle tasks.

Every attention variant is trained from the same data stream with the same budget, so differences come from
attention alone. ``softmax`` weights are trained through ``flash``
(the same function, fused). A step samples one context length from ``lengths`` (so the models serve RAG-sized
and long inputs alike), fills ``tokens_per_step`` bytes with needle examples of that length (prompt + target + <eos>), and
minimizes cross-entropy on the target bytes (plus ``lm_weight`` times the loss on the prompt bytes).

    from ragctx.generator.train import TrainConfig, train
    generator, log = train(TrainConfig(attention="linear", steps=3000), out="runs/linear")

Writes ``out/``: the model (safetensors + config.json, loadable with ``Generator.load``), ``train.jsonl`` (one line
per step) and ``eval.jsonl`` (accuracy per length at each evaluation).
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..errors import RagctxError
from ..evaluation.results import Outcome, Reference, make_row
from ..prefetch import prefetch
from ..tasks import KINDS, NeedleExample, NeedleTask
from ..tasks.needles import MIN_LENGTH, kinds_for
from .attention import canonical_name, same_weights, weights_of
from .checkpoints import load_weights, model_tensors, read_safetensors
from .config import ModelConfig
from .generate import Generation, Generator
from .model import Transformer
from .tokenizer import ByteTokenizer

__all__ = ["TrainConfig", "train", "evaluate", "answer_needle", "needle_generation", "lengths_at"]

# a second stage starts from saved weights (TrainConfig.init) through the loader's check
_INIT_FIX = ("init takes a folder written by Generator.save for a model of the same preset and overrides (any other "
             "does not fit this model)")


@dataclass
class TrainConfig:
    """One training run. Defaults are the GPU recipe; tests use a tiny one."""

    model: str = "small"  # ModelConfig preset
    attention: str = "softmax"  # registry name; flash shares softmax's weights
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields to override
    lengths: tuple[int, ...] = (256, 512, 1024, 2048, 4096, 8192, 16384)  # context bytes, one sampled per step
    tokens_per_step: int = 131072  # bytes per optimizer step (examples per step = this // length)
    steps: int = 3000
    lr: float = 1e-3  # peak learning rate (AdamW), cosine decay after warmup
    warmup: int = 200
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    lm_weight: float = 0.1  # weight of next-byte loss on the prompt (language modelling helps recall emerge)
    unanswerable: float = 0.2  # share of questions about an absent key
    kinds: tuple[str, ...] = KINDS  # kinds drawn from, uniformly: repeat one to draw it more often
    haystack: str = "essays"
    seed: int = 0
    eval_every: int = 500  # steps between evaluations (0: only at the end)
    eval_examples: int = 30  # fresh examples per length at each evaluation
    eval_lengths: tuple[int, ...] = (512, 2048, 8192, 16384)
    device: str | None = None
    dtype: str = "bfloat16"  # autocast dtype on GPU (CPU trains in fp32)
    curriculum_steps: int = 0  # over these first steps the longest allowed length grows from min to max(lengths)
    max_minutes: float | None = None  # stop (with a checkpoint) after this long; rerun with the same out to resume
    checkpoint_every: int = 500  # steps between checkpoints in out/checkpoint (0: only when stopping)
    init: str | None = None  # a saved model folder to start from (weights only: a second stage, same architecture)


def _batch(task: NeedleTask, rng: random.Random, cfg: TrainConfig, length: int, step: int, tok: ByteTokenizer):
    """Token ids [B, L] (right-padded), loss weights [B, L-1] for predicting each next token, and a mask [B, L-1]
    of the predictions that are target bytes (the answer and <eos>)."""
    n = max(1, cfg.tokens_per_step // length)
    kinds = kinds_for(length, cfg.kinds)  # short contexts draw from the kinds that fit
    rows, weights, targets = [], [], []
    for i in range(n):
        ex = task.example(step * 10_000 + i, length=length, kind=rng.choice(kinds),
                          unanswerable=rng.random() < cfg.unanswerable)
        prompt, target = tok.encode(ex.prompt), list(ex.target.encode()) + [tok.eos_id]
        ids = prompt + target
        w = [cfg.lm_weight] * (len(prompt) - 1) + [1.0] * len(target)  # weight of predicting ids[j + 1]
        rows.append(ids)
        weights.append(w)
        targets.append(len(target))
    width = max(len(r) for r in rows)
    ids = torch.full((n, width), tok.pad_id, dtype=torch.long)
    wts = torch.zeros(n, width - 1)
    target = torch.zeros(n, width - 1, dtype=torch.bool)
    for i, (r, w, t) in enumerate(zip(rows, weights, targets)):
        ids[i, : len(r)] = torch.tensor(r)
        wts[i, : len(w)] = torch.tensor(w)
        target[i, len(w) - t : len(w)] = True
    return ids, wts, target


def needle_generation(gen: Generator, ex: NeedleExample) -> Generation:
    """The generator's greedy answer to a needle example's own prompt (no retrieval), up to the first newline. Room
    is left for the longer of the target and ``unanswerable``, so that a wrong ``unanswerable`` is seen whole and
    counted. The evaluation runner's ``direct`` mode answers this way too."""
    room = max(len(ex.target), len(" unanswerable")) + 4
    return gen.generate(ex.prompt, max_new_tokens=room, stop=["\n"])


def answer_needle(gen: Generator, ex: NeedleExample) -> str:
    """The text of :func:`needle_generation`."""
    return needle_generation(gen, ex).text


@torch.no_grad()
def evaluate(gen: Generator, task: NeedleTask, lengths, n: int, seed: int = 10_000,
             kinds: tuple[str, ...] = KINDS) -> dict[str, dict]:
    """Accuracy (string-match-all) per length on ``n`` fresh examples (kinds in turn, every fifth question
    unanswerable), with the rate of recognized and of false ``unanswerable``, and the accuracy of each kind's
    answerable questions (``by_kind``: a model that copies any needle scores 1 on ``single`` and chance on
    ``multikey``).

    It runs inside the training loop on the model being trained, so it stays this small function rather than a
    grid of :mod:`ragctx.evaluation.runner` (which loads saved generators and writes a run folder); each answer is
    scored into a row by the runner's own :func:`~ragctx.evaluation.results.make_row`, as its ``direct`` mode does."""
    out = {}
    was_training = gen.model.training
    gen.model.eval()
    for length in lengths:
        rows = []
        for i in range(n):
            usable = kinds_for(length, kinds)
            ex = task.example(seed + i, length=length, kind=usable[i % len(usable)], unanswerable=(i % 5 == 4))
            trial = {"length": length, "kind": ex.kind, "index": seed + i, "unanswerable": not ex.answerable}
            rows.append(make_row(trial, Outcome.of_generation(needle_generation(gen, ex)), Reference.of_needle(ex)))
        answerable = [r for r in rows if not r["unanswerable"]]
        absent = [r for r in rows if r["unanswerable"]]
        per_kind: dict[str, list[float]] = {}
        for r in answerable:
            per_kind.setdefault(r["kind"], []).append(r["accuracy"])
        out[str(length)] = {"accuracy": sum(r["accuracy"] for r in answerable) / max(1, len(answerable)),
                            "unanswerable_recall": sum(r["accuracy"] for r in absent) / max(1, len(absent)),
                            "false_unanswerable": sum(r["refused"] for r in answerable) / max(1, len(answerable)),
                            "n": n, "by_kind": {k: sum(v) / len(v) for k, v in sorted(per_kind.items())}}
    gen.model.train(was_training)
    return out


def lengths_at(cfg: TrainConfig, step: int) -> list[int]:
    """Lengths a step may draw. With a curriculum, the longest allowed grows geometrically from the shortest to
    the longest length over ``curriculum_steps``: copying emerges first on short contexts (eval/reports/NOTES.md)."""
    lengths = sorted(cfg.lengths)
    if not cfg.curriculum_steps or step >= cfg.curriculum_steps:
        return lengths
    cap = lengths[0] * (lengths[-1] / lengths[0]) ** (step / cfg.curriculum_steps)
    return [n for n in lengths if n <= cap]


def _save_checkpoint(folder: Path, model: Transformer, opt: torch.optim.Optimizer, step: int) -> None:
    """Weights and AdamW state as safetensors, the step as JSON; written beside the old one, then swapped in."""
    from safetensors.torch import save_file

    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in model_tensors(model).items()},
              str(tmp / "model.safetensors"))
    names = {id(p): n for n, p in model.named_parameters()}
    state = {}
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                state[f"{names[id(p)]}::{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
    save_file(state, str(tmp / "optimizer.safetensors"))
    (tmp / "state.json").write_text(json.dumps({"step": step}))
    if folder.exists():
        import shutil

        shutil.rmtree(folder)
    tmp.rename(folder)


def _load_checkpoint(folder: Path, model: Transformer, opt: torch.optim.Optimizer) -> int:
    fix = f"the checkpoint does not fit this run's model; delete {folder} to start over"
    load_weights(model, folder, fix=fix)
    params = dict(model.named_parameters())
    for key, value in read_safetensors(folder / "optimizer.safetensors", fix=fix)[1].items():
        name, field_name = key.split("::")
        p = params[name]  # AdamW keeps its step count on the CPU, the moments beside the parameter
        opt.state[p][field_name] = value if field_name == "step" else value.to(p.device)
    return int(json.loads((folder / "state.json").read_text())["step"])


def train(cfg: TrainConfig, out: str | Path) -> tuple[Generator, list[dict]]:
    """Trains one model; returns its Generator and the per-step log (also written under ``out``)."""
    if weights_of(cfg.attention) != canonical_name(cfg.attention):
        raise RagctxError(f"train '{weights_of(cfg.attention)}': {cfg.attention} is the same function and shares its "
                          "weights")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(cfg.seed)
    tok = ByteTokenizer()
    mcfg = ModelConfig.from_name(cfg.model, attention=cfg.attention, vocab_size=tok.vocab_size,
                                 max_seq_len=max(max(cfg.lengths), max(cfg.eval_lengths)) + 256,
                                 **cfg.model_overrides)
    model = Transformer(mcfg).to(device)
    if cfg.init:
        load_weights(model, cfg.init, fix=_INIT_FIX)
    if same_weights(cfg.attention):  # softmax: flash is the same function, fused: trains its weights in O(N) memory
        model.set_attention(same_weights(cfg.attention)[0])
    gen = Generator(model, tok)
    task = NeedleTask(cfg.haystack, seed=cfg.seed)
    eval_task = NeedleTask(cfg.haystack, seed=cfg.seed + 1)  # evaluation examples never seen in training
    for length in {*cfg.lengths, *cfg.eval_lengths}:  # fail now, not hours in, if a length holds no kind
        if not kinds_for(length, cfg.kinds):
            raise RagctxError(f"length {length} is too short for every kind in {list(cfg.kinds)}; "
                              f"the shortest takes {min(MIN_LENGTH[k] for k in cfg.kinds)} bytes")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
    amp = torch.autocast("cuda", dtype=getattr(torch, cfg.dtype)) if device.startswith("cuda") else None
    log, evals = [], []
    checkpoint = out / "checkpoint"
    first = 1
    if _finished(out, cfg):  # the same command again: a finished run is left as it is (model, logs, evaluation)
        print(f"{out}: already trained ({cfg.steps} steps); nothing to do", flush=True)
        load_weights(model, out / "model", fix=f"delete {out} to train again")
        model.eval()
        model.set_attention(cfg.attention)
        return gen, []
    if checkpoint.is_dir():  # resume where the last run stopped (same config, same data stream)
        first = _load_checkpoint(checkpoint, model, opt) + 1
        print(f"resuming {out} at step {first}", flush=True)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    mode = "a" if first > 1 else "w"
    started = time.perf_counter()

    def make(step: int):  # a step's data depends only on (seed, step): prefetching and resuming are exact
        step_rng = random.Random(f"{cfg.seed}/step/{step}")
        length = step_rng.choice(lengths_at(cfg, step))
        return step, length, _batch(task, step_rng, cfg, length, step, tok)

    with open(out / "train.jsonl", mode) as train_log, open(out / "eval.jsonl", mode) as eval_log:
        model.train()
        # the next batch is built on a worker thread while this step runs on the device
        for step, length, (ids, wts, is_target) in prefetch(make, range(first, cfg.steps + 1), depth=1):
            lr = cfg.lr * min(1.0, step / max(1, cfg.warmup))
            if step > cfg.warmup:
                lr *= 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)))
            for g in opt.param_groups:
                g["lr"] = lr
            ids, wts, is_target = ids.to(device), wts.to(device), is_target.to(device).flatten()
            t0 = time.perf_counter()
            with amp if amp is not None else torch.enable_grad():
                logits = model(ids[:, :-1])
            loss_all = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
            loss = (loss_all * wts.flatten()).sum() / wts.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            target_loss = loss_all[is_target].mean()  # per target byte: chance is ln 10 (digits) / ln 16 (hex)
            row = {"step": step, "length": length, "loss": loss.item(), "target_loss": target_loss.item(),
                   "grad_norm": float(norm), "lr": lr, "bytes_per_s": ids.numel() / (time.perf_counter() - t0)}
            log.append(row)
            train_log.write(json.dumps(row) + "\n")
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
                result = {"step": step, **evaluate(gen, eval_task, cfg.eval_lengths, cfg.eval_examples,
                                                   kinds=tuple(cfg.kinds))}
                evals.append(result)
                eval_log.write(json.dumps(result) + "\n")
                eval_log.flush()
            train_log.flush()
            out_of_time = cfg.max_minutes is not None and time.perf_counter() - started > 60 * cfg.max_minutes
            if out_of_time or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                _save_checkpoint(checkpoint, model, opt, step)
            if out_of_time and step < cfg.steps:
                print(f"stopped at step {step} after {cfg.max_minutes} min; run again to resume", flush=True)
                _finish(gen, cfg, out, evals, stopped_at=step)  # usable now, marked unfinished
                return gen, log
    _finish(gen, cfg, out, evals)
    return gen, log


def _finished(out: Path, cfg: TrainConfig) -> bool:
    """Whether ``out/model`` holds this config's finished run: saved at the end, not stopped by the time budget, with
    the same config (``max_minutes`` aside). A different config (say, more steps) resumes from the checkpoint."""
    saved = out / "model" / "config.json"
    if not saved.is_file():
        return False
    training = json.loads(saved.read_text()).get("training") or {}
    same = {**training.get("config", {}), "max_minutes": None} == {**json.loads(json.dumps(asdict(cfg))),
                                                                    "max_minutes": None}
    return same and "stopped_at" not in training


def _finish(gen: Generator, cfg: TrainConfig, out: Path, evals: list[dict], stopped_at: int | None = None) -> None:
    """Puts the model in evaluation mode with its own attention and saves it in bf16 under out/model, with its
    training config and last evaluation (and, for a run stopped by its time budget, the step it stopped at: its
    learning rate had not decayed yet)."""
    gen.model.eval()
    gen.model.set_attention(cfg.attention)
    training = {"config": asdict(cfg), "final_eval": evals[-1] if evals else None}
    if stopped_at is not None:
        training["stopped_at"] = stopped_at
    gen.save(out / "model", dtype=torch.bfloat16, training=training)

