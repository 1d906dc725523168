"""What every attention variant shares: the state objects, masks by position, and the GQA grouping helpers.

Masking is defined by positions, once: a query at position ``p`` may see a key at position ``s`` when the key is
valid (not padding), ``s <= p`` (causal), and, for windowed softmax, ``p - s < window``. Caches keep each key's
position and validity next to it, so prefill, decode, left padding and ring buffers all follow the same rule.

Every state is a set of fixed buffers written in place (a cursor tensor says where): a decode step reads no
counter from the host and allocates nothing that grows, so it can be compiled once for the whole generation.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["optional_module", "KVCache", "RingBuffer", "LinearState", "HybridState", "allowed", "group_q", "ungroup",
           "NEG_INF", "all_valid", "visible_keys", "window_blocks", "state_tensors"]

NEG_INF = float("-inf")


@dataclass
class KVCache:
    """Static KV cache (softmax, flash): buffers sized once and written in place at a cursor, so every decode step
    has the same shapes (the decode step can be captured once, e.g. as a CUDA graph). Readers attend over the whole
    buffer; slots not written yet are invalid, and :func:`allowed` masks them."""

    k: Tensor  # [B, Hkv, L, D]
    v: Tensor  # [B, Hkv, L, D]
    pos: Tensor  # [B, L] position of each slot
    valid: Tensor  # [B, L] False for padding and unused slots
    cursor: Tensor  # [1] long, on the cache's device: the next slot to write (no host value is read per step)
    fresh: bool = True  # nothing written yet: a prefill may attend to its own keys alone (set on the host, once)

    @classmethod
    def empty(cls, batch: int, n_kv_heads: int, max_len: int, head_dim: int, device, dtype) -> KVCache:
        return cls(
            torch.zeros(batch, n_kv_heads, max_len, head_dim, device=device, dtype=dtype),
            torch.zeros(batch, n_kv_heads, max_len, head_dim, device=device, dtype=dtype),
            torch.zeros(batch, max_len, device=device, dtype=torch.long),
            torch.zeros(batch, max_len, device=device, dtype=torch.bool),
            torch.zeros(1, device=device, dtype=torch.long),
        )

    def add(self, k: Tensor, v: Tensor, pos: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Writes T new keys/values at the cursor, in place, and returns the whole buffers (k, v, pos, valid).
        Writing past the end is an IndexError on the CPU (the Generator sizes caches for prompt + new tokens)."""
        idx = self.cursor if k.shape[2] == 1 else self.cursor + torch.arange(k.shape[2], device=k.device)  # [T]
        self.k.index_copy_(2, idx, k)
        self.v.index_copy_(2, idx, v)
        self.pos.index_copy_(1, idx, pos)
        self.valid.index_copy_(1, idx, valid)
        self.cursor.add_(k.shape[2])
        self.fresh = False
        return self.k, self.v, self.pos, self.valid

    def reset(self) -> None:
        """Empty again, in place (the buffers keep their addresses: a captured decode step stays valid)."""
        self.valid.zero_()
        self.cursor.zero_()
        self.fresh = True


@dataclass
class RingBuffer:
    """The last ``W`` keys/values (sliding window), written in place: token number ``c`` (counted from the first
    token appended, padding included) lives in slot ``c % W``, so decode memory stays O(W) and a decode step writes
    one slot instead of rebuilding the ring. Masks come from the positions kept with each slot."""

    k: Tensor  # [B, Hkv, W, D]
    v: Tensor  # [B, Hkv, W, D]
    pos: Tensor  # [B, W]
    valid: Tensor  # [B, W]
    cursor: Tensor  # [1] long, on the ring's device: tokens appended so far
    fresh: bool = True  # nothing appended yet (known on the host: checking needs no GPU sync)

    @classmethod
    def empty(cls, batch: int, n_kv_heads: int, window: int, head_dim: int, device, dtype) -> RingBuffer:
        return cls(
            torch.zeros(batch, n_kv_heads, window, head_dim, device=device, dtype=dtype),
            torch.zeros(batch, n_kv_heads, window, head_dim, device=device, dtype=dtype),
            torch.full((batch, window), -1, device=device, dtype=torch.long),
            torch.zeros(batch, window, device=device, dtype=torch.bool),
            torch.zeros(1, device=device, dtype=torch.long),
        )

    def add(self, k: Tensor, v: Tensor, pos: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The ring's keys, oldest first, followed by T new ones ([W + T]); the ring keeps the last W (in place)."""
        w = self.k.shape[2]
        ring = torch.arange(w, device=k.device)
        oldest = (self.cursor + ring) % w  # [W] the slots, oldest first
        k_all = torch.cat([self.k.index_select(2, oldest), k], 2)
        v_all = torch.cat([self.v.index_select(2, oldest), v], 2)
        pos_all = torch.cat([self.pos.index_select(1, oldest), pos], 1)
        valid_all = torch.cat([self.valid.index_select(1, oldest), valid], 1)
        self.write(k, v, pos, valid)  # the ring keeps the last W: the new keys that fit, over the oldest slots
        return k_all, v_all, pos_all, valid_all

    def write(self, k: Tensor, v: Tensor, pos: Tensor, valid: Tensor) -> None:
        """T new keys into the ring in place, without building the [W + T] keys of :meth:`add` (which reads the
        older ones first, then writes through this): token number ``c`` goes to slot ``c % W``, so only the last
        min(T, W) new keys are written. Alone, for a prefill that does not read the ring's older keys
        (FlexAttention on a fresh sequence)."""
        w, t = self.k.shape[2], k.shape[2]
        first = max(0, t - w)
        new = torch.arange(first, t, device=k.device)
        slots = (self.cursor + new) % w
        self.k.index_copy_(2, slots, k[:, :, first:])
        self.v.index_copy_(2, slots, v[:, :, first:])
        self.pos.index_copy_(1, slots, pos[:, first:])
        self.valid.index_copy_(1, slots, valid[:, first:])
        self.cursor.add_(t)
        self.fresh = False

    def push(self, k: Tensor, v: Tensor, pos: Tensor, valid: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One token (k, v [B, Hkv, 1, D]) written in place over the oldest slot; returns the key, value and validity
        it evicted ([B, Hkv, 1, D], [B, Hkv, 1, D], [B, 1]). The ring's tensors are then the keys a query may see."""
        slot = self.cursor % self.k.shape[2]  # [1]
        old = self.k.index_select(2, slot), self.v.index_select(2, slot), self.valid.index_select(1, slot)
        self.k.index_copy_(2, slot, k)
        self.v.index_copy_(2, slot, v)
        self.pos.index_copy_(1, slot, pos)
        self.valid.index_copy_(1, slot, valid)
        self.cursor.add_(1)
        self.fresh = False
        return old

    def reset(self) -> None:
        self.pos.fill_(-1)
        self.valid.zero_()
        self.cursor.zero_()
        self.fresh = True


@dataclass
class LinearState:
    """Recurrent state of causal linear attention: O(1) memory per token decoded, updated in place."""

    s: Tensor  # [B, Hkv, F, Dv] fp32 (fp64 for fp64 models): sum of phi(k) v^T
    z: Tensor  # [B, Hkv, F] fp32: sum of phi(k) (the normalizer)

    @classmethod
    def empty(cls, batch: int, n_kv_heads: int, features: int, head_dim: int, device,
              dtype: torch.dtype = torch.float32) -> LinearState:
        return cls(torch.zeros(batch, n_kv_heads, features, head_dim, device=device, dtype=dtype),
                   torch.zeros(batch, n_kv_heads, features, device=device, dtype=dtype))

    def update(self, new: LinearState) -> None:
        """Takes ``new``'s values, in place."""
        self.s.copy_(new.s)
        self.z.copy_(new.z)

    def reset(self) -> None:
        self.s.zero_()
        self.z.zero_()


@dataclass
class HybridState:
    """Sliding-window ring for recent keys plus linear state for the keys that left the window."""

    ring: RingBuffer
    linear: LinearState

    def reset(self) -> None:
        self.ring.reset()
        self.linear.reset()


def visible_keys(state, k: Tensor, v: Tensor, positions: Tensor, valid: Tensor):
    """(k, v, positions, valid) of the keys the new queries may attend to: with a cache, its whole buffer after
    writing the new keys; with a ring, one decode token is written in place and the ring is returned, several are
    appended after the ring's keys (oldest first); without a state, the new keys alone."""
    if state is None:
        return k, v, positions, valid
    if isinstance(state, RingBuffer) and k.shape[2] == 1:
        state.push(k, v, positions, valid)
        return state.k, state.v, state.pos, state.valid
    return state.add(k, v, positions, valid)


def state_tensors(state) -> list[Tensor]:
    """Every tensor a decoding state holds (nested states included)."""
    out = []
    for value in vars(state).values():
        if isinstance(value, Tensor):
            out.append(value)
        elif hasattr(value, "__dataclass_fields__"):
            out += state_tensors(value)
    return out


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
