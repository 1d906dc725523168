"""Decoding in gpt-fast's shape: one prefill, then :func:`decode_one_token` steps on fixed-size states.

Every attention's state is a set of buffers written in place (``attention.common``: a KV cache sized for the whole
generation, a ring of W slots, a recurrent state), so each decode step has the same shapes and reads no counter
from the host. That lets the step be compiled once (:func:`compile_step`: on CUDA, ``mode="reduce-overhead"``,
i.e. CUDA graphs). Sampling runs on the device (:func:`sample_tokens`); the host reads the tokens back every
``check_every`` steps, to stream text and find eos and stop strings (:class:`Completion`).

Batched generation (``Generator.generate_batch``, refusal probes scored per row) serves ``QA.ask_batch`` and
``ragctx.qa.ask_many``: each question runs its own steps up to its next generation, and the generations waiting at
one time are decoded together. The evaluation runner uses it for needle trials when its config sets ``batch``.

Tested in tests/test_decode.py: the fixed-buffer path and the compiled step give the eager tokens, batched
generation equals one prompt at a time, for every registry entry.
"""

from __future__ import annotations

import codecs
import types

import torch
from torch import Tensor

from .attention.common import KVCache, state_tensors
from .attention.flash import bucket

__all__ = ["sample_tokens", "decode_one_token", "compile_step", "left_pad", "Completion", "StatePool",
           "snapshot", "restore"]


def sample_tokens(logits: Tensor, temperature: float, top_p: float, rng: torch.Generator | None) -> Tensor:
    """Next tokens [B] (long, on the logits' device) from logits [B, V]: greedy at temperature 0, otherwise
    temperature-scaled nucleus (top-p) sampling. The draw is the exponential race, argmax p / E with E ~ Exp(1)
    (it picks i with probability p_i), which needs no host sync, unlike ``torch.multinomial`` on a GPU. ``rng``: a
    generator on the logits' device (a fixed seed gives the same tokens)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # [B, V]
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        keep = torch.cumsum(sorted_p, -1) - sorted_p < top_p  # smallest prefix whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p * keep)
    race = torch.empty_like(probs).exponential_(generator=rng)
    return (probs / race).argmax(-1)


def decode_one_token(model, tok: Tensor, pos: Tensor, states: list) -> Tensor:
    """Logits [B, V] of one decode step: tokens [B, 1] at positions [B, 1], every state written in place."""
    return model(tok, positions=pos, states=states)[:, -1]


def compile_step(device: torch.device, options: dict | bool):
    """:func:`decode_one_token` under ``torch.compile``: ``options`` True takes the device's defaults (CUDA:
    ``mode="reduce-overhead"``, CUDA graphs; CPU: inductor's default mode), both ``fullgraph=True``; a dict gives
    torch.compile's arguments instead (e.g. ``{"backend": "eager"}`` to check that the step traces whole).

    Each call compiles a copy of the function with its own code object: dynamo keeps its compiled graphs (and its
    limit of 8 recompilations, a hard error under fullgraph) per code object, so every Generator gets its own
    count instead of sharing one across models. Shapes are left to dynamo's default: the first length bucket is
    compiled static, a second one recompiles with the cache length dynamic, which then serves every bucket (CUDA
    graphs are still captured once per batch size and bucket, cheaply)."""
    if options is True:
        options = {"mode": "reduce-overhead"} if device.type == "cuda" else {}
    fn = decode_one_token
    own = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
    return torch.compile(own, **{"fullgraph": True, **options})


def left_pad(prompts: list[list[int]], device, pad_id: int = 0) -> tuple[Tensor, Tensor, Tensor | None]:
    """(ids [B, T], positions [B, T], valid [B, T] or None when no prompt is padded) of prompts left-padded to the
    longest: each prompt's positions count from 0 at its first token, and every row's last column is a real token,
    so all rows decode in step."""
    t = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), t), pad_id, dtype=torch.long)
    valid = torch.zeros(len(prompts), t, dtype=torch.bool)
    for i, p in enumerate(prompts):
        ids[i, t - len(p):] = torch.tensor(p, dtype=torch.long)
        valid[i, t - len(p):] = True
    positions = (valid.long().cumsum(1) - 1).clamp_min(0)
    padded = not bool(valid.all())
    return ids.to(device), positions.to(device), valid.to(device) if padded else None


class Completion:
    """One prompt's generated tokens on the host: its text (bytes decoded incrementally for a byte tokenizer), the
    eos and stop strings that end it, and the text released for streaming (held back by as many characters as a
    forming stop string could still take)."""

    def __init__(self, tokenizer, stops: list[str], eos: set[int]) -> None:
        self.tokenizer, self.stops, self.eos = tokenizer, stops, eos
        self.hold = max((len(s) for s in stops), default=1) - 1
        self.decoder = codecs.getincrementaldecoder("utf-8")("replace") if tokenizer.kind == "byte" else None
        self.tokens: list[int] = []
        self.steps = 0  # tokens taken until it ended: its tokens and the eos or stop-string token that ended it
        self.text = ""
        self.sent = 0  # characters streamed so far
        self.reason: str | None = None  # "eos" or "stop" once ended; "length" is set by finish()

    def add(self, tok: int) -> None:
        """Takes the next token (ignored once the completion has ended)."""
        if self.reason is not None:
            return
        self.steps += 1
        if tok in self.eos:
            self.reason = "eos"
            return
        self.tokens.append(tok)
        if self.decoder is not None:  # bytes: a character may span several tokens
            self.text += self.decoder.decode(bytes([tok])) if tok < 256 else ""
        else:
            self.text = self.tokenizer.decode(self.tokens)
        cut = min((self.text.find(s) for s in self.stops if s in self.text), default=-1)
        if cut >= 0:
            self.text, self.reason = self.text[:cut], "stop"

    def ready(self) -> str:
        """Text that no stop string can take back any more, not streamed yet ("" if none)."""
        end = len(self.text) - self.hold
        if self.reason == "stop" or end <= self.sent:  # a stop string's text is released by finish()
            return ""
        piece, self.sent = self.text[self.sent : end], end
        return piece

    def finish(self) -> str:
        """Ends the completion ("length" unless eos or a stop string ended it) and returns the unstreamed rest."""
        if self.reason is None:
            self.reason = "length"
        if self.decoder is not None and self.reason != "stop":
            self.text += self.decoder.decode(b"", final=True)
        piece, self.sent = self.text[self.sent :], len(self.text)
        return piece


class StatePool:
    """Keeps the last generation's decoding states for the next one of the same batch and length bucket, reset in
    place: the buffers keep their addresses, so a compiled (CUDA-graph) step is not captured again, and a long
    context's cache is not reallocated per call. States handed out are not shared: two generations running at once
    (interleaved streams) get separate ones."""

    def __init__(self) -> None:
        self._kept: tuple | None = None  # (key, states)

    def take(self, model, batch: int, max_len: int, static: bool) -> list:
        """States for ``batch`` rows of up to ``max_len`` tokens (rounded up to a bucket of 8 per octave).
        ``static``: mark their tensors as fixed addresses for torch.compile (CUDA graphs)."""
        key = _pool_key(model, batch, max_len)
        if self._kept is not None and self._kept[0] == key:
            states, self._kept = self._kept[1], None
            for s in states:
                s.reset()
            return states
        states = model.new_states(batch, bucket(max_len))
        if static:
            for s in states:
                for t in state_tensors(s):
                    torch._dynamo.mark_static_address(t)
        return states

    def give_back(self, model, batch: int, max_len: int, states: list) -> None:
        """Keeps ``states`` for the next :meth:`take` (replacing what was kept)."""
        self._kept = (_pool_key(model, batch, max_len), states)


def _pool_key(model, batch: int, max_len: int) -> tuple:
    """What decides the states' shapes: batch, length bucket, device, dtype and the layers' attention settings."""
    p = next(model.parameters())
    c = model.cfg
    return (batch, bucket(max_len), p.device, p.dtype, tuple(c.attentions), c.window, c.feature_map,
            c.hybrid_feature_map, c.hedgehog_dim, c.n_kv_heads, c.head_dim)


def snapshot(states: list) -> list[list[Tensor]]:
    """Copies of what decode steps change, to :func:`restore` after a probe: a KV cache's cursor and validity (the
    slots written past the cursor are then unused, and overwritten later) and every tensor of the other states
    (O(window) or O(1) memory)."""
    return [[s.cursor.clone(), s.valid.clone()] if isinstance(s, KVCache) else [t.clone() for t in state_tensors(s)]
            for s in states]


def restore(states: list, saved: list[list[Tensor]]) -> None:
    """Puts back a :func:`snapshot`, in place (the buffers keep their addresses)."""
    for s, copies in zip(states, saved):
        targets = [s.cursor, s.valid] if isinstance(s, KVCache) else state_tensors(s)
        for t, c in zip(targets, copies):
            t.copy_(c)
