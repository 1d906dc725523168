"""RoPE frequencies, plain and scaled: ``linear``, ``llama3``, ``yarn`` (as Hugging Face's ``rope_parameters``
define them) and ``factors`` (llama.cpp's per-frequency divisors, the ``rope_freqs`` tensor of a Llama 3 GGUF).

:func:`frequencies` gives the inverse frequencies [D/2] and the factor that scales cos and sin (YaRN's attention
factor; 1 otherwise). Tested against transformers' own RoPE in tests/test_hf_loading.py.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import RagctxError

__all__ = ["ROPE_TYPES", "check_scaling", "frequencies"]

# which keys each scaling type needs (the rest are optional, with Hugging Face's defaults)
ROPE_TYPES: dict[str, tuple[str, ...]] = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings"),
    "factors": ("factors",),
}


def check_scaling(scaling: dict[str, Any], head_dim: int) -> dict[str, Any] | None:
    """``scaling`` with its type under ``rope_type`` (``type`` is the older key), checked; None for plain RoPE."""
    if not isinstance(scaling, dict):
        raise RagctxError(f"rope_scaling must be a dict such as {{'rope_type': 'linear', 'factor': 2.0}}, "
                          f"not {scaling!r}")
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    scaling = {**{k: v for k, v in scaling.items() if k not in ("type", "rope_theta")}, "rope_type": kind}
    if kind in (None, "default"):
        return None
    if kind not in ROPE_TYPES:
        raise RagctxError(f"RoPE scaling '{kind}' is not implemented; ragctx implements {', '.join(ROPE_TYPES)}")
    missing = [k for k in ROPE_TYPES[kind] if scaling.get(k) is None]
    if missing:
        raise RagctxError(f"RoPE scaling '{kind}' needs {', '.join(missing)}")
    if kind == "factors" and len(scaling["factors"]) != head_dim // 2:
        raise RagctxError(f"RoPE factors: {len(scaling['factors'])} values for head dimension {head_dim} "
                          f"(needs {head_dim // 2})")
    return scaling


def frequencies(head_dim: int, base: float, scaling: dict[str, Any] | None) -> tuple[torch.Tensor, float]:
    """(inverse frequencies [D/2] fp32 on the CPU, attention factor)."""
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    if scaling is None:
        return inv, 1.0
    kind = scaling["rope_type"]
    if kind == "linear":
        return inv / scaling["factor"], 1.0
    if kind == "factors":
        return inv / torch.tensor(scaling["factors"], dtype=torch.float32), 1.0
    if kind == "llama3":
        return _llama3(inv, scaling), 1.0
    return _yarn(head_dim, base, scaling)


def _llama3(inv: torch.Tensor, s: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1: long wavelengths divided by ``factor``, short ones kept, a smooth ramp between."""
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    return torch.where(medium, smoothed, scaled)


def _yarn(dim: int, base: float, s: dict[str, Any]) -> tuple[torch.Tensor, float]:
    """YaRN (Peng et al. 2023): interpolate the low frequencies, keep the high ones, ramp between; cos and sin are
    scaled by the attention factor (0.1 ln(factor) + 1 unless the config gives it)."""
    factor, old = s["factor"], s["original_max_position_embeddings"]

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = s.get("attention_factor")
    if attention is None:
        m, m_all = s.get("mscale"), s.get("mscale_all_dim")
        attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def correction_dim(rotations: float) -> float:  # the dimension that turns `rotations` times over `old` positions
        return dim * math.log(old / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # no zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    keep = 1 - ramp  # 1: extrapolate (high frequencies), 0: interpolate
    return (1.0 / (factor * pos)) * (1 - keep) + (1.0 / pos) * keep, float(attention)
