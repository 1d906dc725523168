"""What every attention variant shares: the state objects, masks by position, and the GQA grouping helpers.

Masking is defined by positions, once: a query at position ``p`` may see a key at position ``s`` when the key is
valid (not padding), ``s <= p`` (causal), and, for windowed softmax, ``p - s < window``. Caches keep each key's
position and validity next to it, so prefill, decode, left padding and ring buffers all follow the same rule.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["optional_module", "KVCache", "RingBuffer", "LinearState", "HybridState", "allowed", "group_q", "ungroup",
           "NEG_INF", "all_valid", "visible_keys", "window_blocks"]

NEG_INF = float("-inf")


@dataclass
class KVCache:
    """Static KV cache (softmax, flash): buffers sized once, so shapes stay fixed across decode steps."""

    k: Tensor  # [B, Hkv, L, D]
    v: Tensor  # [B, Hkv, L, D]
    pos: Tensor  # [B, L] position of each slot
    valid: Tensor  # [B, L] False for padding and unused slots
    length: int = 0  # slots filled
    padded: bool = False  # some appended token was padding (masks are then needed even for one-token steps)

    @classmethod
    def empty(cls, batch: int, n_kv_heads: int, max_len: int, head_dim: int, device, dtype) -> KVCache:
        return cls(
            torch.zeros(batch, n_kv_heads, max_len, head_dim, device=device, dtype=dtype),
            torch.zeros(batch, n_kv_heads, max_len, head_dim, device=device, dtype=dtype),
            torch.zeros(batch, max_len, device=device, dtype=torch.long),
            torch.zeros(batch, max_len, device=device, dtype=torch.bool),
        )

    def add(self, k: Tensor, v: Tensor, pos: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Writes T new keys/values; returns views of every filled slot (k, v, pos, valid)."""
        end = self.length + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[2]} tokens; {end} were asked for")
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.pos[:, self.length : end] = pos
        self.valid[:, self.length : end] = valid
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end], self.pos[:, :end], self.valid[:, :end]


@dataclass
class RingBuffer:
    """The last ``W`` keys/values (sliding window), oldest first: decode memory stays O(W)."""

    k: Tensor  # [B, Hkv, W, D]
    v: Tensor  # [B, Hkv, W, D]
    pos: Tensor  # [B, W]
    valid: Tensor  # [B, W]
    seen: int = 0  # tokens appended so far (a Python int: checking for a fresh ring needs no GPU sync)

    @classmethod
    def empty(cls, batch: int, n_kv_heads: int, window: int, head_dim: int, device, dtype) -> RingBuffer:
        return cls(
            torch.zeros(batch, n_kv_heads, window, head_dim, device=device, dtype=dtype),
            torch.zeros(batch, n_kv_heads, window, head_dim, device=device, dtype=dtype),
            torch.full((batch, window), -1, device=device, dtype=torch.long),
            torch.zeros(batch, window, device=device, dtype=torch.bool),
        )

    def add(self, k: Tensor, v: Tensor, pos: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The ring's keys followed by T new ones ([W + T], oldest first); the ring keeps the last W."""
        w = self.k.shape[2]
        k_all, v_all = torch.cat([self.k, k], 2), torch.cat([self.v, v], 2)
        pos_all, valid_all = torch.cat([self.pos, pos], 1), torch.cat([self.valid, valid], 1)
        self.k, self.v = k_all[:, :, -w:].contiguous(), v_all[:, :, -w:].contiguous()
        self.pos, self.valid = pos_all[:, -w:].contiguous(), valid_all[:, -w:].contiguous()
        self.seen += k.shape[2]
        return k_all, v_all, pos_all, valid_all


@dataclass
class LinearState:
    """Recurrent state of causal linear attention: O(1) memory per token decoded."""

    s: Tensor  # [B, Hkv, F, Dv] fp32: sum of phi(k) v^T
    z: Tensor  # [B, Hkv, F] fp32: sum of phi(k) (the normalizer)

    @classmethod
    def empty(cls, batch: int, n_kv_heads: int, features: int, head_dim: int, device) -> LinearState:
        return cls(torch.zeros(batch, n_kv_heads, features, head_dim, device=device),
                   torch.zeros(batch, n_kv_heads, features, device=device))


@dataclass
class HybridState:
    """Sliding-window ring for recent keys plus linear state for the keys that left the window."""

    ring: RingBuffer
    linear: LinearState


def visible_keys(state, k: Tensor, v: Tensor, positions: Tensor, valid: Tensor):
    """(k, v, positions, valid) of the keys the new queries may attend to: with a cache or ring, its keys after
    adding the new ones; without one, the new keys alone."""
    return (k, v, positions, valid) if state is None else state.add(k, v, positions, valid)


def all_valid(valid: Tensor | None, positions: Tensor) -> Tensor:
    """``valid`` as a [B, T] bool tensor (None means no padding)."""
    return torch.ones(positions.shape, dtype=torch.bool, device=positions.device) if valid is None else valid


def allowed(pos_q: Tensor, pos_k: Tensor, valid_k: Tensor, window: int | None = None) -> Tensor:
    """[B, 1, T, Tk] bool: which keys each query may see (see the module docstring)."""
    diff = pos_q[:, :, None] - pos_k[:, None, :]  # [B, T, Tk]
    ok = (diff >= 0) & valid_k[:, None, :]
    if window is not None:
        ok &= diff < window
    return ok[:, None]


def window_blocks(t: int, n_keys: int, window: int):
    """(query slice, key slice) pairs that cover ``t`` queries in blocks of ``window``, each with the keys its
    sliding window can reach. Keys are in position order and the queries' own keys come last (a ring puts its W
    older slots first), so query i's key is key ``n_keys - t + i`` and its window starts ``window - 1`` keys before.
    The band mask of each block is then [W, 2W - 1]: O(T W) work and memory instead of O(T^2)."""
    offset = n_keys - t
    for start in range(0, t, window):
        end = min(start + window, t)
        yield slice(start, end), slice(max(0, offset + start - window + 1), offset + end)


def group_q(q: Tensor, n_kv_heads: int) -> Tensor:
    """[B, Hq, T, D] -> [B, Hkv, G, T, D]: query heads grouped by the key/value head they share."""
    b, h, t, d = q.shape
    return q.view(b, n_kv_heads, h // n_kv_heads, t, d)


def ungroup(x: Tensor) -> Tensor:
    """[B, Hkv, G, T, D] -> [B, Hq, T, D]."""
    b, hkv, g, t, d = x.shape
    return x.reshape(b, hkv * g, t, d)


def optional_module(name: str, switch: str, package: str | None = None):
    """The module ``name`` (relative names need ``package``), or None when it cannot be imported or the
    environment variable ``switch`` is "0": how optional GPU kernels (fla-core, ragctx's Triton kernels) are
    turned on and off. Callers cache the result; clear their cache after changing ``switch``."""
    if os.environ.get(switch, "1") == "0":
        return None
    try:
        return importlib.import_module(name, package)
    except ImportError:
        return None
