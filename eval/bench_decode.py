"""Decode speed: ragctx eager vs compiled decode step, per attention, against transformers on the same weights.

    python eval/bench_decode.py --device cuda --lengths 1024 4096 8192 --out eval/reports/decode     # bf16
    python eval/bench_decode.py --device cpu --lengths 512 1024 2048 --new 32 --out eval/reports/decode  # fp32

The packaged SmolLM2 (``Generator.from_pretrained("smollm2")``, or ``--model`` a .gguf file) runs under each
``--attentions`` entry, eager and with ``compile=True`` (``--compiled``; CUDA: the decode step as CUDA graphs, CPU:
inductor). transformers loads the same GGUF (``from_pretrained(dir, gguf_file=...)``, dequantized) and generates with
its dynamic cache and with ``cache_implementation="static"`` compiled (``--hf``; its ``CompileConfig``, forced on
the CPU too). Linear and hybrid run SmolLM2's softmax-trained weights: their text is poor, their speed is what is
measured. Prompts are the packaged essays cut to each length; every run decodes ``--new`` tokens greedily without
an eos stop. Prefill tokens/s = prompt tokens / time to the first token; decode ms/token = the rest / (new - 1).
Each number is the median of ``--repeat`` runs after a warm-up run (which pays for compiling and is reported as
``warmup_s``). Writes ``<out>/decode-<device>-<date>.json`` and prints a table; compare within one run only.
Needs torch, transformers and ragctx (with gguf); nothing else.

``--torch-prefill smollm2-hybrid`` also times those entries eagerly with the hybrid prefill forced onto the torch
path (mode ``eager, torch prefill``; with ``RAGCTX_HYBRID_PREFILL=triton`` set, the default eager row runs the fused
Triton prefill of a learned map on CUDA, opt-in until this benchmark has measured it),
and ``--profile-prefill 4096`` prints a torch.profiler table (top 15 CUDA ops by time) of one prefill of that many
tokens for each eager entry and each torch-prefill one, e.g. on one GPU:

    RAGCTX_HYBRID_PREFILL=triton python eval/bench_decode.py --attentions smollm2-hybrid --compiled \
        --torch-prefill smollm2-hybrid --profile-prefill 4096 --new 8 --out eval/reports/decode
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval._common import environment, essays_ids, save_json, table, time_ragctx, time_transformers  # noqa: E402

COLUMNS = ["engine", "mode", "prompt_tokens", "prefill_tok_s", "decode_ms_per_token", "decode_tok_s", "warmup_s"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2",
                   help="a packaged model name, a .gguf file, or base100m (the ~100M config, random weights, bytes)")
    p.add_argument("--device", default=None, help="cuda (bf16) or cpu (fp32); default: cuda when available")
    p.add_argument("--lengths", type=int, nargs="+", default=None,
                   help="prompt lengths in tokens (default: 1024 4096 8192 on CUDA, 512 1024 2048 on the CPU)")
    p.add_argument("--new", type=int, default=64, help="tokens decoded per run")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--attentions", nargs="+", default=["flash", "sliding_window", "linear", "hybrid"],
                   help="attention names, or packaged delta names (smollm2-hybrid...) loaded over the base")
    p.add_argument("--eager", nargs="*", default=None, metavar="ATTENTION",
                   help="attentions also timed eagerly (default: every --attentions entry; none: --eager alone)")
    p.add_argument("--compiled", nargs="*", default=None, metavar="ATTENTION",
                   help="attentions also timed with compile=True (default: every --attentions entry; none: --compiled "
                        "with no value)")
    p.add_argument("--unfused", nargs="*", default=[], metavar="ATTENTION",
                   help="attentions also timed compiled with q/k/v and gate/up as separate matmuls (a copy of the "
                        "model, unfused), to measure what fuse_projections gives")
    p.add_argument("--torch-prefill", nargs="*", default=[], metavar="ATTENTION",
                   help="attentions also timed eagerly with the hybrid prefill on the torch path (not the fused "
                        "Triton kernels of a learned map), in the same run")
    p.add_argument("--profile-prefill", type=int, default=None, metavar="TOKENS",
                   help="print a torch.profiler table (top 15 CUDA ops) of one prefill of this many tokens per eager "
                        "and torch-prefill entry")
    p.add_argument("--hf", nargs="*", default=["dynamic", "static"], choices=["dynamic", "static"],
                   help="transformers engines to time (none: --hf with no value)")
    p.add_argument("--hf-lengths", type=int, nargs="*", default=None,
                   help="lengths at which transformers runs (default: every --lengths entry)")
    p.add_argument("--window", type=int, default=None, help="sliding_window / hybrid window (default: the model's)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no new engine after this many seconds (the rows so far are kept and written)")
    p.add_argument("--out", default=None, help="folder for the JSON (rewritten after every row)")
    args = p.parse_args(argv)
    t_start = time.perf_counter()

    from ragctx.generator import Generator

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    dtype = torch.bfloat16 if cuda else torch.float32
    lengths = args.lengths or ([1024, 4096, 8192] if cuda else [512, 1024, 2048])
    if args.new < 2:
        raise SystemExit("--new: decode at least 2 tokens (the first comes from the prefill)")
    gens = load_generators(args, device, dtype, max(lengths) + args.new)
    gen = gens[args.attentions[0]]
    eager = args.attentions if args.eager is None else args.eager
    to_compile = args.attentions if args.compiled is None else args.compiled
    compiled = {a: Generator(gens[a].model, gens[a].tokenizer, compile=True) for a in to_compile}
    unfused = {}
    for a in args.unfused:
        unfused[a] = Generator(copy.deepcopy(gens[a].model), gens[a].tokenizer, compile=True)
        unfused[a].model.fuse_projections(on=False)
    engines = []  # (engine, mode, fn(ids) -> (prefill s, decode s))
    for a in args.attentions:
        def run(ids, a=a, g=None):
            return time_ragctx(_attend(g or gens[a], a), ids, args.new, device)
        if a in eager:
            engines.append((f"ragctx {a}", "eager", run))
        if a in compiled:
            engines.append((f"ragctx {a}", "compiled", lambda ids, run=run, a=a: run(ids, g=compiled[a])))
        if a in unfused:
            engines.append((f"ragctx {a}", "compiled, unfused", lambda ids, run=run, a=a: run(ids, g=unfused[a])))
        if a in args.torch_prefill:
            engines.append((f"ragctx {a}", "eager, torch prefill", lambda ids, run=run: _torch_prefill(run, ids)))
    if args.profile_prefill:
        for a in eager:
            ids = essays_ids(gens[a].tokenizer, args.profile_prefill)
            run = lambda ids, a=a: run_one(gens[a], a, ids)  # noqa: E731
            profile_prefill(run, ids, f"ragctx {a} (eager)", cuda)
            if a in args.torch_prefill:
                profile_prefill(lambda ids, run=run: _torch_prefill(run, ids), ids, f"ragctx {a} (torch prefill)",
                                cuda)
    hf_lengths = set(lengths if args.hf_lengths is None else args.hf_lengths)
    if args.hf and args.model != "base100m":
        from transformers import AutoModelForCausalLM
        from transformers.generation.configuration_utils import CompileConfig

        path = _path(args.model)
        theirs = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
        theirs = theirs.to(device=device, dtype=dtype).eval()
        compile_config = CompileConfig(fullgraph=True, mode="reduce-overhead" if cuda else "default")
        compile_config._compile_all_devices = True  # transformers compiles on CUDA only unless told
        if "dynamic" in args.hf:
            engines.append(("transformers", "dynamic cache",
                            lambda ids: time_transformers(theirs, ids, args.new, device)))
        if "static" in args.hf:
            engines.append(("transformers", "static cache, compiled", lambda ids: time_transformers(
                theirs, ids, args.new, device, cache_implementation="static", compile_config=compile_config)))

    import transformers

    cfg = gen.model.cfg
    result = {"env": {**environment(), "device": device, "dtype": str(dtype), "model": args.model,
                      "parameters": sum(p.numel() for p in gen.model.parameters()), "layers": cfg.n_layers,
                      "transformers": transformers.__version__, "threads": torch.get_num_threads(),
                      "window": cfg.window},
              "args": vars(args), "rows": [], "skipped": []}
    rows = result["rows"]
    for n in lengths:
        ids = essays_ids(gen.tokenizer, n)
        for engine, mode, fn in engines:
            if engine == "transformers" and n not in hf_lengths:
                continue
            if args.budget_s is not None and time.perf_counter() - t_start > args.budget_s:
                result["skipped"].append({"engine": engine, "mode": mode, "prompt_tokens": n, "why": "--budget-s"})
                continue
            t = time.perf_counter()
            fn(ids)  # warm-up: kernel choice, compile, CUDA graph capture
            warmup = time.perf_counter() - t
            runs = [fn(ids) for _ in range(args.repeat)]
            prefill = statistics.median(r[0] for r in runs)
            decode = statistics.median(r[1] for r in runs)
            rows.append({"engine": engine, "mode": mode, "prompt_tokens": n, "new_tokens": args.new,
                         "prefill_s": prefill, "prefill_tok_s": n / prefill,
                         "decode_ms_per_token": 1e3 * decode / (args.new - 1), "decode_tok_s": (args.new - 1) / decode,
                         "warmup_s": warmup, "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None})
            print(table(rows[-1:], COLUMNS), flush=True)
            if args.out:  # after every row: a run cut by a time limit keeps what it measured
                save_json(args.out, f"decode-{'gpu' if cuda else 'cpu'}-{args.model}", result, quiet=True)
    print("\n" + table(rows, COLUMNS))
    if result["skipped"]:
        print(f"skipped for --budget-s: {len(result['skipped'])} engine-length pairs")
    if args.out:
        save_json(args.out, f"decode-{'gpu' if cuda else 'cpu'}-{args.model}", result)
    return 0


def _attend(gen, a: str):
    """``gen`` set to attention ``a`` (the base model is shared by the plain names: set before each run)."""
    if not _is_delta(a):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # linear / hybrid over softmax weights: known, measured for speed
            gen.set_attention(a)
    return gen


def run_one(gen, a: str, ids: list[int]):
    """One prefill under attention ``a``: a generation of one token (the prefill's own)."""
    return _attend(gen, a).generate(ids, max_new_tokens=1)


def _torch_prefill(run, ids):
    """``run(ids)`` with the hybrid prefill on its torch path (hybrid's selection answering no)."""
    from ragctx.generator.attention import hybrid

    ready = hybrid.fused_prefill_ready
    hybrid.fused_prefill_ready = lambda *a: False
    try:
        return run(ids)
    finally:
        hybrid.fused_prefill_ready = ready


def profile_prefill(fn, ids: list[int], title: str, cuda: bool) -> None:
    """Prints the top 15 ops by device time (CPU time off a GPU) of one ``fn(ids)`` (a prefill), after warm-up
    calls at 64 tokens and at the full length."""
    from torch.profiler import ProfilerActivity, profile

    fn(ids[:64])  # warm-up: kernels compiled, caches made
    fn(ids)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        fn(ids)
    print(f"\n{title}, {len(ids)}-token prompt:")
    print(prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=15))


def _is_delta(name: str) -> bool:
    """A packaged linearized model (smollm2-hybrid...), which runs the attention it was trained for."""
    from ragctx.generator.checkpoints import LINEARIZED

    return name in LINEARIZED


def _path(model: str) -> Path:
    from ragctx.generator.checkpoints import PACKAGED, packaged_path

    return packaged_path(model) if model in PACKAGED else Path(model)


def load_generators(args, device: str, dtype, max_len: int) -> dict:
    """One Generator per --attentions entry: plain attention names share one model (the base); a packaged delta
    name (``smollm2-hybrid``) gets its own, loaded over the base. ``base100m``: the ~100M-parameter config with
    random weights and byte tokens (its speed, not its text, is measured)."""
    from ragctx.generator import Generator
    from ragctx.generator.config import ModelConfig
    from ragctx.generator.model import Transformer
    from ragctx.generator.tokenizer import ByteTokenizer

    if args.model == "base100m":
        torch.manual_seed(0)
        cfg = ModelConfig.from_name("base100m", **({"window": args.window} if args.window else {}))
        class Bytes(ByteTokenizer):
            eos_ids = {ByteTokenizer.eos_id}  # settable: time_ragctx empties it so that no run stops early

        base = Generator(Transformer(cfg).to(device=device, dtype=dtype).eval(), Bytes())
    else:
        base = Generator.from_pretrained(_path(args.model), device=device, dtype=dtype, window=args.window)
    base.with_context(max(base.max_context, max_len))
    gens = {}
    for a in args.attentions:
        if _is_delta(a):
            g = Generator.from_pretrained(a, device=device, dtype=dtype, window=args.window)
            gens[a] = g.with_context(max(g.max_context, max_len))
        else:
            gens[a] = base
    return gens


if __name__ == "__main__":
    sys.exit(main())
