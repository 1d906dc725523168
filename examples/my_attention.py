"""Your own attention backend, registered under a name and run by the QA pipeline like the built-in ones.

    python examples/my_attention.py path/to/docs "When did the volcano erupt?" --generator smollm2

The backend here is softmax attention written in plain matmuls. A backend takes q [B, Hq, T, D], k, v [B, Hkv, T, D]
(the T new tokens, RoPE applied), their ``positions`` and ``valid`` [B, T], the decoding ``state`` it made with
``make_state`` (or None), the model config and the layer's learned maps, and returns [B, Hq, T, D]; its
``reference`` is the float64 definition that tests/test_attention.py holds it to (that file runs this backend
through the same equivalence tests as the built-in entries, and through a model).
"""

from __future__ import annotations

import argparse

from ragctx.generator.attention import AttentionBackend, kv_cache_state, register
from ragctx.generator.attention.common import all_valid, allowed, visible_keys
from ragctx.generator.attention.reference import softmax_reference


def my_softmax(q, k, v, *, positions, valid, state, cfg, maps=None):
    """Causal softmax attention: the KV cache (when decoding) takes the new keys, a mask by position, matmuls."""
    k, v, pos_k, valid_k = visible_keys(state, k, v, positions, all_valid(valid, positions))
    ok = allowed(positions, pos_k, valid_k)  # [B, 1, T, Tk] bool: causal, padding masked
    g = q.shape[1] // k.shape[1]  # query heads per key/value head (grouped-query attention)
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)  # [B, Hq, Tk, D]
    scores = (q @ k.transpose(-1, -2)) * cfg.head_dim**-0.5  # [B, Hq, T, Tk]
    seen = ok.any(-1, keepdim=True)  # padding queries see no key: their output is 0
    probs = scores.masked_fill(~ok, float("-inf")).masked_fill(~seen, 0.0).softmax(-1) * seen
    return probs @ v  # [B, Hq, T, D]


def reference(q, k, v, valid, cfg, maps=None):
    """The definition, in float64: what the backend must equal."""
    return softmax_reference(q, k, v, valid)


BACKEND = AttentionBackend("my_softmax", my_softmax, kv_cache_state, reference)


def main() -> None:
    from ragctx import Index, load_path
    from ragctx.generator import Generator
    from ragctx.qa import QA

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("docs")
    p.add_argument("question")
    p.add_argument("--generator", default="smollm2")
    p.add_argument("--device", default=None)
    args = p.parse_args()

    register(BACKEND)  # from here on "my_softmax" is an attention name like "flash"
    index = Index.build(load_path(args.docs).documents, device=args.device)
    gen = Generator.open(args.generator, attention="my_softmax", device=args.device)
    for name in ("my_softmax", "softmax"):
        answer = QA(index, gen.set_attention(name)).ask(args.question, mode="full")
        print(f"{name:<12} {answer.text!r}")


if __name__ == "__main__":
    main()
