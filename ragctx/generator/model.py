"""A Llama-style decoder: RMSNorm, RoPE, SwiGLU, grouped-query attention, tied or untied embeddings; with Gemma 3's
differences as config fields (GeGLU, q/k norms, sandwich norms, scaled embeddings, 5:1 local/global layers).

``Transformer -> Block -> {Attention, FeedForward}``. The attention implementation is looked up by name in the
registry (``ragctx.generator.attention``) and called once per layer; switching it changes no weight. Layers may
run different attentions (``ModelConfig.layer_attention``). A linearized model's layers also hold learned
feature maps (``Attention.maps``, added by :meth:`Transformer.add_feature_maps`). Parameter
names follow Hugging Face's Llama (``layers.0.self_attn.q_proj.weight`` ...), so checkpoints load by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .attention import get_attention
from .attention.learned import FeatureMaps
from .config import ModelConfig
from .rope import frequencies

__all__ = ["Transformer", "RMSNorm", "rope"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # Hugging Face's order: normalize in fp32, round to x's dtype, then scale (one fused kernel on a GPU)
        return F.rms_norm(x, self.weight.shape, self.weight, self.eps)


_FREQUENCIES: dict[tuple, tuple[Tensor, float]] = {}


def rope(positions: Tensor, head_dim: int, base: float, dtype, scaling: dict | None = None) -> tuple[Tensor, Tensor]:
    """(cos, signed sin) [B, 1, T, D] for rotate-half RoPE (Hugging Face's layout): with x = [x1, x2] halves,
    rotate_half(x) * sin = [-x2, x1] * [s, s] = roll(x, D/2) * [-s, s], so :func:`_rotate` needs no negation or
    concatenation pass. ``scaling``: ``ModelConfig.rope_scaling`` (see ``ragctx.generator.rope``)."""
    key = (head_dim, base, repr(scaling), positions.device)
    if key not in _FREQUENCIES:  # computed once per model and device: no host-to-device copy per step
        with torch.inference_mode(False):  # a cache made under inference mode could not serve training later
            inv, factor = frequencies(head_dim, base, scaling)
            _FREQUENCIES[key] = inv.to(positions.device), factor
    inv, factor = _FREQUENCIES[key]
    angles = positions.float()[..., None] * inv  # [B, T, D/2]
    cos, sin = torch.cat([angles, angles], -1).cos(), angles.sin()
    if factor != 1.0:  # YaRN scales cos and sin (the attention logits by factor^2)
        cos, sin = cos * factor, sin * factor
    return cos[:, None].to(dtype), torch.cat([-sin, sin], -1)[:, None].to(dtype)


def _rotate(x: Tensor, cos: Tensor, signed_sin: Tensor) -> Tensor:
    return torch.addcmul(x * cos, x.roll(x.shape[-1] // 2, -1), signed_sin)


def _fuse(owner: nn.Module, names: tuple[str, ...]) -> None:
    """Makes the weights (and biases) of ``owner``'s linear layers ``names`` row slices of one matrix, kept as the
    non-persistent buffer ``fused_weight`` (``fused_bias``): one matmul then does the work of several. The
    parameters stay, as views of that matrix, so state dicts, in-place loading and LoRA merging see and change the
    same numbers."""
    mods = [getattr(owner, n) for n in names]
    with torch.inference_mode(False), torch.no_grad():  # plain tensors, whatever mode the caller is in
        _fuse_into(owner, mods)


def _fuse_into(owner: nn.Module, mods: list) -> None:
    for attr, fused in (("weight", "fused_weight"), ("bias", "fused_bias")):
        parts = [getattr(m, attr) for m in mods]
        if parts[0] is None:
            continue
        whole = torch.cat([t.detach() for t in parts])
        for m, view in zip(mods, whole.split([t.shape[0] for t in parts])):
            getattr(m, attr).data = view
        owner.register_buffer(fused, whole, persistent=False)
    owner.fused_sizes = [m.out_features for m in mods]


def _unfuse(owner: nn.Module, names: tuple[str, ...]) -> None:
    """Gives each linear layer of ``names`` its own weight again (see :func:`_fuse`)."""
    for n in names:
        m = getattr(owner, n)
        m.weight.data = m.weight.detach().clone()
        if m.bias is not None:
            m.bias.data = m.bias.detach().clone()
    for b in ("fused_weight", "fused_bias"):
        owner._buffers.pop(b, None)
    owner.fused_sizes = None


def _fused_linear(owner: nn.Module, x: Tensor) -> tuple[Tensor, ...]:
    return F.linear(x, owner.fused_weight, getattr(owner, "fused_bias", None)).split(owner.fused_sizes, dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.head_dim
        self.q_proj = nn.Linear(cfg.dim, cfg.n_heads * d, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * d, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(cfg.dim, cfg.n_kv_heads * d, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(cfg.n_heads * d, cfg.dim, bias=False)
        if cfg.qk_norm:
            self.q_norm, self.k_norm = RMSNorm(d, cfg.norm_eps), RMSNorm(d, cfg.norm_eps)
        self.maps: FeatureMaps | None = None  # learned feature maps of a linearized model
        self.fused_sizes: list[int] | None = None  # q, k, v in one matmul (Transformer.fuse_projections)

    def project(self, x: Tensor, rot) -> tuple[Tensor, Tensor, Tensor]:
        """q [B, Hq, T, D], k, v [B, Hkv, T, D] of input x [B, T, C], RoPE applied."""
        b, t, _ = x.shape
        d = self.cfg.head_dim
        if self.fused_sizes:
            q, k, v = (y.reshape(b, t, -1, d).transpose(1, 2) for y in _fused_linear(self, x))
        else:
            q = self.q_proj(x).view(b, t, -1, d).transpose(1, 2)
            k = self.k_proj(x).view(b, t, -1, d).transpose(1, 2)
            v = self.v_proj(x).view(b, t, -1, d).transpose(1, 2)
        if self.cfg.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rot is not None:
            q, k = _rotate(q, *rot), _rotate(k, *rot)
        return q, k, v

    def output(self, out: Tensor) -> Tensor:
        """The heads' output [B, Hq, T, D] projected back to [B, T, C]."""
        b, _, t, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))

    def forward(self, x: Tensor, rot, positions: Tensor, valid: Tensor | None, state, attn) -> Tensor:
        q, k, v = self.project(x, rot)
        return self.output(attn(q, k, v, positions=positions, valid=valid, state=state, cfg=self.cfg, maps=self.maps))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.up_proj = nn.Linear(cfg.dim, cfg.hidden_dim, bias=False)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.dim, bias=False)
        self.act = _ACTIVATIONS[cfg.activation]
        self.fused_sizes: list[int] | None = None  # gate and up in one matmul (Transformer.fuse_projections)

    def forward(self, x: Tensor) -> Tensor:
        if self.fused_sizes:
            gate, up = _fused_linear(self, x)
            return self.down_proj(self.act(gate) * up)
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


_ACTIVATIONS = {"silu": F.silu, "gelu_tanh": lambda x: F.gelu(x, approximate="tanh")}


class Block(nn.Module):
    """Pre-norm (Llama: ``post_attention_layernorm`` is the norm before the FFN) or sandwich (Gemma: each sublayer's
    output is normalized too; ``post_attention_layernorm`` is the norm after attention, Hugging Face's names)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.sandwich = cfg.norm_layout == "sandwich"
        self.input_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        if self.sandwich:
            self.pre_feedforward_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
            self.post_feedforward_layernorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.mlp = FeedForward(cfg)

    def forward(self, x, rot, positions, valid, state, attn) -> Tensor:
        h = self.self_attn(self.input_layernorm(x), rot, positions, valid, state, attn)
        if not self.sandwich:
            x = x + h
            return x + self.mlp(self.post_attention_layernorm(x))
        x = x + self.post_attention_layernorm(h)
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class Transformer(nn.Module):
    """The decoder. ``attention`` names a registry entry; :meth:`set_attention` switches it in place (every layer),
    :meth:`set_layer_attention` per layer."""

    def __init__(self, cfg: ModelConfig, *, init: bool = True) -> None:
        """``init=False`` leaves the weights as allocated (for a model whose weights are loaded next)."""
        super().__init__()
        self.cfg = cfg
        for name in cfg.attentions:
            get_attention(name)  # an unknown name lists the valid ones
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if init:
            self.apply(self._init)
            for name, p in self.named_parameters():  # residual projections shrink with depth (GPT-2)
                if name.endswith(("o_proj.weight", "down_proj.weight")):
                    nn.init.normal_(p, std=0.02 / (2 * cfg.n_layers) ** 0.5)
        self.tie_weights()

    @staticmethod
    def _init(module: nn.Module) -> None:
        """Normal(0, 0.02) weights and zero biases: logits start near uniform (loss ~ log vocab)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def tie_weights(self) -> None:
        """Shares the embedding matrix with the output projection when the config says so (call again after
        ``to_empty``, which makes new parameters)."""
        if self.cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def fuse_projections(self, on: bool = True) -> Transformer:
        """Decoding layout: each layer's q, k, v projections become one matmul, and the feed-forward's gate and up
        another (their weights row slices of one matrix; the parameters stay, as views of it). A decode step on a
        GPU is bound by kernel launches, so three matmuls fewer per layer is time saved; the numbers are the same.
        ``on=False`` separates them again: do that before wrapping the projections (LoRA training) or moving the
        model to another device or dtype (which would copy the views apart). :class:`Generator` fuses when it
        compiles its decode step."""
        for layer in self.layers:
            for owner, names in ((layer.self_attn, ("q_proj", "k_proj", "v_proj")),
                                 (layer.mlp, ("gate_proj", "up_proj"))):
                if on and not owner.fused_sizes:
                    _fuse(owner, names)
                elif not on and owner.fused_sizes:
                    _unfuse(owner, names)
        return self

    def set_attention(self, name: str) -> None:
        """Every layer runs ``name`` (a per-layer pattern is cleared)."""
        self.cfg.attention, self.cfg.layer_attention = get_attention(name).name, None

    def set_layer_attention(self, pattern: str | list[str] | None) -> None:
        """One attention per layer (see :func:`~ragctx.generator.config.expand_layers`); None: all run
        ``cfg.attention``."""
        if pattern is None:
            self.cfg.layer_attention = None
        else:
            self.cfg.set_options(layer_attention=pattern)

    @property
    def backends(self) -> list:
        """Each layer's attention backend, read from the config (so a changed config reaches every layer)."""
        return [get_attention(name) for name in self.cfg.attentions]

    @property
    def backend(self):
        """The attention backend of the first layer (all layers, unless ``layer_attention`` mixes them)."""
        return self.backends[0]

    def add_feature_maps(self, dim: int | None = None) -> None:
        """Gives every layer learned feature maps (``hedgehog``, ``dim`` projections per head; default
        ``cfg.hedgehog_dim``), freshly initialized; a linearized model's trained maps are loaded over them."""
        c = self.cfg
        c.hedgehog_dim = dim or c.hedgehog_dim
        p = next(self.parameters())
        for layer in self.layers:
            layer.self_attn.maps = FeatureMaps(c.n_heads, c.n_kv_heads, c.head_dim, c.hedgehog_dim).to(p.device)

    @property
    def has_feature_maps(self) -> bool:
        return self.layers[0].self_attn.maps is not None

    def new_states(self, batch: int, max_len: int, device=None, dtype=None) -> list:
        """One decoding state per layer (KV cache, ring buffer or recurrent state, by each layer's variant)."""
        p = next(self.parameters())
        return [b.make_state(self.cfg, batch, max_len, device or p.device, dtype or p.dtype) for b in self.backends]

    def forward(self, ids: Tensor, positions: Tensor | None = None, valid: Tensor | None = None,
                states: list | None = None, last_only: bool = False) -> Tensor:
        """Logits [B, T, V] (or [B, 1, V] with ``last_only``) for token ids [B, T].

        ``positions`` default to 0..T-1; ``valid`` marks real tokens (None: no padding); ``states`` from
        :meth:`new_states` make this a prefill or decode step that extends them.
        """
        b, t = ids.shape
        if positions is None:
            positions = torch.arange(t, device=ids.device).expand(b, t)
        x = self.embed_tokens(ids)
        c = self.cfg
        if c.embed_scale is not None:  # in the weights' dtype, as Gemma rounds it
            x = x * torch.tensor(c.embed_scale, dtype=x.dtype)
        rot = rope(positions, c.head_dim, c.rope_base, x.dtype, c.rope_scaling) if c.rope_base else None
        local = rot
        local_base = c.rope_local_base or c.rope_base
        if c.global_every and c.rope_base and (local_base != c.rope_base or c.rope_scaling):
            local = rope(positions, c.head_dim, local_base, x.dtype)  # scaling is for global layers only
        for i, (layer, backend) in enumerate(zip(self.layers, self.backends)):
            x = layer(x, local if c.is_local(i) else rot, positions, valid,
                      states[i] if states is not None else None, backend.fn)
        x = self.norm(x[:, -1:] if last_only else x)
        return self.lm_head(x).float()
