"""Linearizing a pretrained softmax model (LoLCATs, Zhang et al. 2024): attention transfer, then LoRA.

    from ragctx.generator.linearize import LinearizeConfig, linearize
    path = linearize("smollm2", LinearizeConfig(attention="hybrid"), out="runs/smollm2-hybrid")
    gen = Generator.open("runs/smollm2-hybrid")          # the base model with the delta applied

Stage 1, **attention transfer**: the model is frozen and every layer that will run ``linear`` or ``hybrid`` gets
learned Hedgehog feature maps (:mod:`.attention.learned`). One forward pass of the softmax model over ordinary
text gives, per layer, the softmax output (the teacher) and, from the same queries, keys and values, the linear
or hybrid output (the student); the maps alone are trained to minimize the mean squared difference, averaged
over layers. The residual stream carries the teacher's outputs, so every layer learns on the inputs the
pretrained model gives it. Stage 2, **low-rank fine-tuning**: with the maps frozen, LoRA adapters (rank 8 by
default) on q, k, v and o are trained with the next-token loss under the new attention.

The result is a **delta**: the maps and the LoRA factors in one safetensors file (a few MB), with the base's
SHA-256 and the attention settings in its metadata; :func:`apply_delta` loads it over the base (merging LoRA into
the weights, so inference costs nothing extra) and refuses a base whose hash differs.

Training text is what the installation ships: Python's own help topics (``pydoc_data``) and the packaged Paul
Graham essays, minus :data:`HELD_OUT_ESSAYS` (kept out of the text rows for perplexity); a share of each batch is
needle tasks rendered as the QA pipeline's chat prompts over haystacks from every essay, trained (stage 2) on the
answer tokens only, so retrieval through the new attention is learned without memorizing the haystack. Each step's batch is drawn from
a generator seeded by (seed, stage, step): a run resumed from its checkpoint (written every
``checkpoint_every`` steps, safetensors + JSON, no pickle) continues exactly as if it had never stopped.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import RagctxError
from .attention import ATTENTION, get_attention
from .checkpoints import (PACKAGED, apply_delta, check_state, load_maps, packaged_path, read_delta,
                          read_safetensors)
from .delta import DELTA_FILE, LORA_TARGETS, base_sha256, merge_lora, write_delta
from .model import Transformer, rope

__all__ = ["LinearizeConfig", "Linearized", "linearize", "apply_delta", "read_delta", "base_sha256", "training_texts",
           "heldout_texts", "perplexity", "transfer_loss", "LoRALinear", "HELD_OUT_ESSAYS", "DELTA_FILE"]

# essays kept out of the training text rows, for perplexity. Needle rows draw their haystacks from every essay: stage 1
# imitates attention over them, stage 2 puts no loss on them (only on the answers)
HELD_OUT_ESSAYS = ("apple.txt", "founders.txt", "love.txt", "rss.txt", "superangels.txt", "useful.txt", "weird.txt")


@dataclass
class LinearizeConfig:
    """One linearization run. Defaults are the GPU recipe (one H200, minutes); tests use a tiny one."""

    attention: str = "hybrid"  # what the linearized layers run: "linear" or "hybrid"
    layer_attention: str | None = None  # a per-layer pattern, e.g. "softmax,linear,linear,linear" (a mix)
    window: int = 64  # hybrid: the sliding window's length
    hedgehog_dim: int = 64  # projections per head (features: twice as many)
    seq_len: int = 1024  # tokens per training sequence
    batch: int = 8  # sequences per step
    transfer_steps: int = 300  # stage 1 (0: skip, e.g. when maps_from gives trained maps)
    transfer_lr: float = 1e-2
    finetune_steps: int = 150  # stage 2 (0: maps only)
    finetune_lr: float = 2e-4
    lora_rank: int = 8
    lora_alpha: float = 16.0
    needle_share: float = 0.25  # share of each batch that is needle tasks (chat prompts + answers)
    needle_lengths: tuple[int, ...] = (256, 512, 1024)  # needle prompt lengths, tokens (capped at seq_len)
    warmup: float = 0.05  # share of a stage's steps with a linear warm-up; then cosine decay to 10%
    seed: int = 0
    checkpoint_every: int = 50
    maps_from: str | None = None  # a delta (file or run folder) whose trained maps stage 1 starts from

    def __post_init__(self) -> None:
        learnable = [n for n, b in ATTENTION.items() if b.features]  # entries with a feature map to learn
        if self.attention not in learnable:
            raise RagctxError(f"linearize --attention {self.attention!r}: choose {' or '.join(learnable)}")
        for name in ("seq_len", "batch", "window", "hedgehog_dim", "lora_rank", "checkpoint_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise RagctxError(f"LinearizeConfig.{name}={getattr(self, name)!r}: pass a positive integer")
        if self.transfer_steps < 0 or self.finetune_steps < 0:
            raise RagctxError("transfer_steps and finetune_steps must be 0 or more")
        if not 0.0 <= self.needle_share <= 1.0:
            raise RagctxError(f"needle_share={self.needle_share}: pass a fraction between 0 and 1")
        self.needle_lengths = tuple(self.needle_lengths)

    def settings(self) -> dict[str, Any]:
        """What a checkpoint must agree with to be resumed (everything but the step counts' bookkeeping)."""
        return asdict(self)


# -- data ------------------------------------------------------------------------------------------------
def training_texts() -> list[str]:
    """Python's help topics and the packaged essays not in :data:`HELD_OUT_ESSAYS` (ordered, so runs repeat)."""
    return _pydoc_topics()[0] + [t for name, t in _essays() if name not in HELD_OUT_ESSAYS]


def heldout_texts() -> list[str]:
    """Text no training text row holds: the held-out essays and the last tenth of Python's help topics (needle
    haystacks may quote the essays, without a next-token loss on them)."""
    return [t for name, t in _essays() if name in HELD_OUT_ESSAYS] + _pydoc_topics()[1]


def _pydoc_topics() -> tuple[list[str], list[str]]:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise RagctxError("this Python lacks pydoc_data (Python's help topics), part of the standard library; "
                          "install the full Python (Debian: libpython3-stdlib)") from None
    texts = [topics[k] for k in sorted(topics)]
    cut = len(texts) - max(1, len(texts) // 10)
    return texts[:cut], texts[cut:]


def _essays() -> list[tuple[str, str]]:
    from ..data import essays_dir

    return [(p.name, p.read_text(encoding="utf-8", errors="replace")) for p in sorted(essays_dir().glob("*.txt"))]


def _eos(tok) -> int:
    return tok.eos_id if tok.eos_id is not None else 0


def token_stream(tok, texts: list[str], max_tokens: int | None = None) -> list[int]:
    """The texts' token ids back to back, each followed by EOS (no BOS), stopping once ``max_tokens`` are there."""
    stream: list[int] = []
    for text in texts:
        stream += tok.encode(text, bos=False) + [_eos(tok)]
        if max_tokens is not None and len(stream) >= max_tokens:
            return stream[:max_tokens]
    return stream


class Batches:
    """Training batches: token windows of the training text, and needle tasks as chat prompts with their answers.
    ``batch(stage, step)`` is a pure function of (seed, stage, step)."""

    def __init__(self, gen, cfg: LinearizeConfig) -> None:
        self.cfg, self.gen = cfg, gen
        tok = gen.tokenizer
        texts = training_texts()
        stream = token_stream(tok, texts)
        self.bytes_per_token = sum(len(t.encode()) for t in texts) / len(stream)  # sizes needle haystacks
        if len(stream) < cfg.seq_len + 1:
            raise RagctxError(f"the training text holds {len(stream)} tokens, fewer than seq_len={cfg.seq_len}")
        self.stream = torch.tensor(stream)
        self.pad = _eos(tok)
        self._task = None

    def batch(self, stage: int, step: int) -> tuple[Tensor, Tensor]:
        """(ids [B, T + 1], loss mask [B, T] for predicting ids[:, 1:]): text rows first, needle rows last."""
        c = self.cfg
        rng = random.Random(f"{c.seed}/{stage}/{step}")
        n_needles = round(c.batch * c.needle_share)
        rows, masks = [], []
        for _ in range(c.batch - n_needles):
            start = rng.randrange(0, len(self.stream) - c.seq_len - 1)
            rows.append(self.stream[start : start + c.seq_len + 1])
            masks.append(torch.ones(c.seq_len, dtype=torch.bool))
        for _ in range(n_needles):
            ids, answer_from = self._needle(rng)
            mask = torch.zeros(c.seq_len, dtype=torch.bool)
            mask[answer_from - 1 : len(ids) - 1] = True  # predict the answer tokens (and the end of turn)
            rows.append(torch.tensor(ids + [self.pad] * (c.seq_len + 1 - len(ids))))
            masks.append(mask)
        return torch.stack(rows), torch.stack(masks)

    def _needle(self, rng: random.Random) -> tuple[list[int], int]:
        """A needle example as the QA pipeline's chat prompt plus its answer: (ids, index of the answer's first
        token), at most seq_len + 1 tokens."""
        from ..qa import CHAT_TEMPLATE
        from ..tasks import KINDS, NeedleTask

        if self._task is None:
            self._task = NeedleTask("essays", seed=self.cfg.seed)
        tok = self.gen.tokenizer
        length = min(rng.choice(self.cfg.needle_lengths), self.cfg.seq_len - 32)
        kind = rng.choice(KINDS)
        for _ in range(8):
            try:
                ex = self._task.example(rng.randrange(1 << 30), length=int(length * self.bytes_per_token), kind=kind,
                                        unanswerable=rng.random() < 0.2)
            except RagctxError:  # too short for this kind's needles: the single needle fits more often
                kind, length = "single", max(length, 64)
                continue
            answer = CHAT_TEMPLATE.unanswerable if not ex.answerable else ", ".join(ex.answers)
            messages = CHAT_TEMPLATE.messages(ex.context, ex.question)
            prompt = (self.gen.chat_prompt(messages) if tok.chat_template is not None
                      else tok.encode(CHAT_TEMPLATE.prompt.format(context=ex.context, question=ex.question,
                                                                  unanswerable=CHAT_TEMPLATE.unanswerable)))
            end = tok.encode(answer, bos=False) + [self.pad]
            ids = prompt + end
            if len(ids) <= self.cfg.seq_len + 1:
                return ids, len(prompt)
            length = int(length * 0.7)
        raise RagctxError(f"needle examples do not fit seq_len={self.cfg.seq_len}; raise it")


# -- LoRA ------------------------------------------------------------------------------------------------
class LoRALinear(nn.Module):
    """y = base(x) + (alpha / r) x A^T B^T, with the base frozen; B starts at zero (the model is unchanged)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features, device=base.weight.device) / rank**0.5
                                   / base.in_features**0.5)
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))

    def forward(self, x: Tensor) -> Tensor:
        low = (x.to(self.lora_a.dtype) @ self.lora_a.T) @ self.lora_b.T
        return self.base(x) + (self.scale * low).to(x.dtype)


def _add_lora(model: Transformer, rank: int, alpha: float) -> dict[str, LoRALinear]:
    out = {}
    for i, layer in enumerate(model.layers):
        for name in LORA_TARGETS:
            wrapped = LoRALinear(getattr(layer.self_attn, name), rank, alpha)
            setattr(layer.self_attn, name, wrapped)
            out[f"layers.{i}.self_attn.{name}"] = wrapped
    return out


def _remove_lora(model: Transformer, adapters: dict[str, LoRALinear]) -> None:
    """Puts the plain linear layers back, with the adapters merged into their weights."""
    for key, wrapped in adapters.items():
        i, name = int(key.split(".")[1]), key.rsplit(".", 1)[1]
        merge_lora(wrapped.base, wrapped.lora_a.detach(), wrapped.lora_b.detach(), wrapped.scale)
        setattr(model.layers[i].self_attn, name, wrapped.base)


# -- losses ----------------------------------------------------------------------------------------------
def _student_layers(model: Transformer) -> list[int]:
    return [i for i, b in enumerate(model.backends) if b.features]


def transfer_loss(model: Transformer, ids: Tensor) -> Tensor:
    """Stage 1's loss on token ids [B, T]: the mean over student layers (those running linear or hybrid) of the
    mean squared difference between their attention output and softmax's on the same q, k, v. The residual
    stream follows the teacher; only the feature maps get gradients."""
    c = model.cfg
    b, t = ids.shape
    students = set(_student_layers(model))
    if not students:
        raise RagctxError("no layer runs linear or hybrid attention: nothing to transfer")
    positions = torch.arange(t, device=ids.device).expand(b, t)
    teacher = get_attention("flash").fn
    losses = []
    with torch.no_grad():
        x = model.embed_tokens(ids)
        rot = rope(positions, c.head_dim, c.rope_base, x.dtype, c.rope_scaling) if c.rope_base else None
    for i, (layer, backend) in enumerate(zip(model.layers, model.backends)):
        attn = layer.self_attn
        with torch.no_grad():
            q, k, v = attn.project(layer.input_layernorm(x), rot)
            target = teacher(q, k, v, positions=positions, valid=None, state=None, cfg=c)
        if i in students:
            out = backend.fn(q, k, v, positions=positions, valid=None, state=None, cfg=c, maps=attn.maps)
            losses.append(F.mse_loss(out.float(), target.float()))
        with torch.no_grad():
            x = x + attn.output(target)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
    return torch.stack(losses).mean()


def lm_loss(model: Transformer, ids: Tensor, mask: Tensor) -> Tensor:
    """Next-token cross-entropy over the masked targets of ids [B, T + 1]."""
    logits = model(ids[:, :-1])
    return F.cross_entropy(logits[mask], ids[:, 1:][mask])


@torch.no_grad()
def perplexity(gen, texts: list[str], *, seq_len: int = 1024, max_tokens: int = 50_000) -> dict[str, float]:
    """Perplexity of ``gen`` on ``texts``: non-overlapping windows of ``seq_len`` tokens (each scored from its own
    start, every token after the first counted), up to ``max_tokens`` tokens in all."""
    model = gen.model
    stream = token_stream(gen.tokenizer, texts, max_tokens)
    total, count = 0.0, 0
    for start in range(0, len(stream) - 1, seq_len):
        ids = torch.tensor([stream[start : start + seq_len + 1]], device=gen.device)
        if ids.shape[1] < 2:
            break
        logits = model(ids[:, :-1])
        total += float(F.cross_entropy(logits[0].float(), ids[0, 1:], reduction="sum"))
        count += ids.shape[1] - 1
    return {"perplexity": math.exp(total / count), "tokens": count, "seq_len": seq_len}


@dataclass
class Linearized:
    """What :func:`linearize` made: the delta file, the trained generator, and the run's summary."""

    delta: Path
    generator: Any
    summary: dict[str, Any]


# -- the run ---------------------------------------------------------------------------------------------
def _resolve_base(spec: str) -> Path:
    if spec in PACKAGED:
        return packaged_path(spec)
    path = Path(spec)
    if not path.exists():
        raise RagctxError(f"linearize: base '{spec}' is neither a packaged model ({', '.join(PACKAGED)}) nor a path")
    return path


def linearize(base: str, cfg: LinearizeConfig, out: str | Path, *, device: str | None = None,
              dtype: torch.dtype | None = None, progress: bool = True, log=print) -> Linearized:
    """Linearizes checkpoint ``base`` (a packaged name such as ``smollm2``, a .gguf file or a Hugging Face folder)
    and writes ``out/delta.safetensors`` (plus ``out/train.jsonl``, one line per step, and ``out/summary.json``).
    A folder holding a checkpoint of the same settings resumes from it; one of other settings is an error.
    Returns the delta's path and the trained generator (the delta applied, as :func:`apply_delta` loads it)."""
    from .generate import Generator

    out = Path(out)
    spec = str(base)
    base_path = _resolve_base(spec)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    gen = Generator.from_pretrained(spec, attention="flash", device=device, dtype=dtype)
    if gen.tokenizer.kind != "hf":
        raise RagctxError("linearize takes a pretrained checkpoint (GGUF or Hugging Face folder)")
    model = gen.model
    for p in model.parameters():
        p.requires_grad_(False)
    kind_field = get_attention(cfg.attention).features
    model.cfg.set_options(window=cfg.window, **{kind_field: "hedgehog"})
    model.set_attention(cfg.attention)
    if cfg.layer_attention:
        model.set_layer_attention(cfg.layer_attention)
    with torch.random.fork_rng(devices=[]):  # seeded starts (maps, LoRA A) without touching the caller's RNG
        torch.manual_seed(cfg.seed)
        model.add_feature_maps(cfg.hedgehog_dim)
        adapters = _add_lora(model, cfg.lora_rank, cfg.lora_alpha) if cfg.finetune_steps else {}
    model.to(device)
    for layer in model.layers:  # trainable parameters in fp32 whatever the run dtype
        layer.self_attn.maps.float()
    for a in adapters.values():
        a.lora_a.data, a.lora_b.data = a.lora_a.data.float().to(device), a.lora_b.data.float().to(device)
    sha = base_sha256(base_path)
    if cfg.maps_from:
        load_maps(model, read_delta(cfg.maps_from), sha, cfg.maps_from)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"base": spec, "base_sha256": sha, **cfg.settings()}
    batches = Batches(gen, cfg)
    stages = [(1, cfg.transfer_steps, cfg.transfer_lr), (2, cfg.finetune_steps, cfg.finetune_lr)]
    done = _resume(out, settings, model, adapters)
    log_path = out / "train.jsonl"
    if done == (0, 0) and log_path.exists():
        log_path.unlink()
    elif log_path.exists():  # steps logged after the checkpoint ran again on resume: keep one line per step
        kept = [line for line in log_path.read_text().splitlines()
                if line.strip() and tuple(json.loads(line)[k] for k in ("stage", "step")) < done]
        log_path.write_text("".join(line + "\n" for line in kept))
    timings = {}
    for stage, steps, lr in stages:
        if steps == 0 or stage < done[0] or (stage == done[0] and done[1] >= steps):
            continue
        params = _stage_params(model, adapters, stage)
        opt = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.0, betas=(0.9, 0.98))
        start = done[1] if done[0] == stage else 0
        if start:
            _load_optimizer(out, opt, params)
        timings[stage] = _run_stage(stage, steps, lr, start, model, opt, params, batches, cfg, out, settings,
                                    adapters, device, progress, log)
        done = (stage, steps)
    with torch.no_grad():  # the delta stores bf16: the model in memory keeps exactly what a load gives back
        for p in _trainables(model, adapters).values():
            p.copy_(p.to(torch.bfloat16).float())
    path = write_delta(out / DELTA_FILE, model, adapters, settings, cfg)
    _remove_lora(model, adapters)
    for layer in model.layers:
        layer.self_attn.maps.to(dtype)
    for p in model.parameters():
        p.requires_grad_(False)
    summary = {**settings, "stages": timings, "delta_bytes": path.stat().st_size, "device": _device_name(device)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    gen.name = str(out)
    return Linearized(path, gen, summary)


def _stage_params(model: Transformer, adapters: dict[str, LoRALinear], stage: int) -> dict[str, nn.Parameter]:
    params = {}
    if stage == 1:
        for i in _student_layers(model):
            for n, p in model.layers[i].self_attn.maps.named_parameters():
                params[f"layers.{i}.self_attn.maps.{n}"] = p
    else:
        for key, a in adapters.items():
            params[f"{key}.lora_a"], params[f"{key}.lora_b"] = a.lora_a, a.lora_b
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    return params


def _lr(step: int, steps: int, peak: float, warmup: float) -> float:
    w = max(1, int(steps * warmup))
    if step < w:
        return peak * (step + 1) / w
    progress = (step - w) / max(1, steps - w)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def _run_stage(stage, steps, lr, start, model, opt, params, batches, cfg, out, settings, adapters, device,
               progress, log) -> dict[str, float]:
    from tqdm.auto import tqdm

    name = {1: "attention transfer", 2: "LoRA fine-tuning"}[stage]
    bar = tqdm(total=steps, initial=start, desc=f"stage {stage}: {name}", disable=not progress, unit="step")
    t0, tokens, sync = time.perf_counter(), 0, (torch.cuda.synchronize if device.startswith("cuda") else None)
    with open(out / "train.jsonl", "a") as fh:
        for step in range(start, steps):
            ids, mask = batches.batch(stage, step)
            ids, mask = ids.to(device), mask.to(device)
            for group in opt.param_groups:
                group["lr"] = _lr(step, steps, lr, cfg.warmup)
            loss = transfer_loss(model, ids[:, :-1]) if stage == 1 else lm_loss(model, ids, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(params.values()), 1.0)
            opt.step()
            tokens += ids.shape[0] * (ids.shape[1] - 1)
            value = float(loss.detach())
            fh.write(json.dumps({"stage": stage, "step": step, "loss": value, "lr": opt.param_groups[0]["lr"]}) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4g}")
            if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < steps:
                fh.flush()
                _save_checkpoint(out, settings, stage, step + 1, model, adapters, opt, params)
    bar.close()
    if sync:
        sync()
    seconds = time.perf_counter() - t0
    log(f"stage {stage} ({name}): {steps - start} steps, {tokens / max(seconds, 1e-9):,.0f} tokens/s")
    _save_checkpoint(out, settings, stage, steps, model, adapters, opt, params)
    return {"steps": steps, "resumed_at": start, "seconds": seconds, "tokens_per_s": tokens / max(seconds, 1e-9)}


# -- checkpoints (exact resume) --------------------------------------------------------------------------
def _trainables(model: Transformer, adapters: dict[str, LoRALinear]) -> dict[str, Tensor]:
    state = {}
    for i, layer in enumerate(model.layers):
        if layer.self_attn.maps is not None:
            for n, p in layer.self_attn.maps.named_parameters():
                state[f"layers.{i}.self_attn.maps.{n}"] = p
    for key, a in adapters.items():
        state[f"{key}.lora_a"], state[f"{key}.lora_b"] = a.lora_a, a.lora_b
    return state


def _save_checkpoint(out: Path, settings, stage, step, model, adapters, opt, params) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().float().cpu().contiguous() for k, v in _trainables(model, adapters).items()}
    for name, p in params.items():
        st = opt.state.get(p, {})
        for key in ("exp_avg", "exp_avg_sq"):
            if key in st:
                tensors[f"opt/{name}/{key}"] = st[key].detach().cpu().contiguous()
        if "step" in st:
            tensors[f"opt/{name}/step"] = torch.as_tensor(st["step"], dtype=torch.float32).reshape(1).cpu()
    tmp = out / "checkpoint.safetensors.tmp"
    save_file(tensors, str(tmp))
    tmp.replace(out / "checkpoint.safetensors")
    meta = {"settings": settings, "stage": stage, "step": step}
    (out / "checkpoint.json.tmp").write_text(json.dumps(meta, indent=2))
    (out / "checkpoint.json.tmp").replace(out / "checkpoint.json")


def _resume(out: Path, settings, model, adapters) -> tuple[int, int]:
    """(stage, step) reached by a checkpoint in ``out`` (its trainables loaded), or (0, 0) for a fresh run."""
    meta_path = out / "checkpoint.json"
    if not meta_path.is_file():
        return 0, 0
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError:
        raise RagctxError(f"{meta_path} is damaged; delete {out} to start over") from None
    if meta.get("settings") != json.loads(json.dumps(settings)):
        raise RagctxError(f"{out} holds a linearization run with other settings; pass another --out or delete it")
    path, fix = out / "checkpoint.safetensors", f"delete {out} to start over"
    saved = read_safetensors(path, fix=fix)[1]
    own = _trainables(model, adapters)
    check_state(own, {k: v for k, v in saved.items() if not k.startswith("opt/")}, path, fix=fix)
    with torch.no_grad():
        for k, p in own.items():
            p.copy_(saved[k])
    return int(meta["stage"]), int(meta["step"])


def _load_optimizer(out: Path, opt, params) -> None:
    saved = read_safetensors(out / "checkpoint.safetensors", fix=f"delete {out} to start over")[1]
    for name, p in params.items():
        if f"opt/{name}/step" in saved:
            opt.state[p] = {"step": saved[f"opt/{name}/step"][0].clone(),
                            "exp_avg": saved[f"opt/{name}/exp_avg"].to(p.device),
                            "exp_avg_sq": saved[f"opt/{name}/exp_avg_sq"].to(p.device)}


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    import platform

    return f"{platform.processor() or platform.machine()} CPU"


def config_from(data: dict[str, Any]) -> LinearizeConfig:
    """A LinearizeConfig from a dict, unknown keys refused by name."""
    known = {f.name for f in fields(LinearizeConfig)}
    bad = sorted(set(data) - known)
    if bad:
        raise RagctxError(f"unknown linearize settings {bad}; known: {sorted(known)}")
    return LinearizeConfig(**data)

