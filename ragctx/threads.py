"""CPU threads for the two runtimes one process may hold: torch (the generator, the torch embedder) and ONNX
Runtime (the default CPU embedder).

``RAGCTX_THREADS=N`` sets both intra-op pools to N threads (torch through ``torch.set_num_threads`` when a
generator or embedder is made; ONNX Runtime per session). Unset, ragctx leaves one core free: torch gets
``cores - 1`` threads (at least 1) if its count is still its untouched default (one per core, no
``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``), and ONNX Runtime sessions as many as torch, with idle workers that sleep
instead of spin-waiting (in QA an embedding is followed at once by the generation, whose threads would share the
cores with spinning ones). Why: on the 2-core machine shared with other processes, torch with 2 threads ran
SmolLM2's prefill at 31-96 tokens/s and decode at 235-264 ms/token, with 1 thread at 326-352 tokens/s and 42-45
ms/token (measured in turns, same load: an OpenMP team waits for its slowest thread, and a busy core stalls it);
a one-query embedding took 3.5-4.2 ms either way. On a many-core machine one thread less costs ~1/cores of the
prefill. eval/bench_threads.py measures the settings (eval/reports/threads/).
"""

from __future__ import annotations

import os

from .errors import RagctxError

__all__ = ["ENV", "configured_threads", "default_threads", "apply_torch_threads", "runtime_threads",
           "onnx_session_options"]

ENV = "RAGCTX_THREADS"


def configured_threads() -> int | None:
    """The thread count ``RAGCTX_THREADS`` asks for, or None when unset; anything but a positive integer is an
    error naming the variable."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise RagctxError(f"{ENV}={value!r}: set it to a positive number of threads (or unset it for the defaults)")
    return int(value)


def default_threads() -> int:
    """Threads when ``RAGCTX_THREADS`` is unset: one per core but one (at least 1)."""
    return max(1, (os.cpu_count() or 1) - 1)


def apply_torch_threads() -> int:
    """Sets torch's intra-op threads to ``RAGCTX_THREADS``, or, when unset, to :func:`default_threads` if torch's
    count is still its own default (a count someone set, or OMP_NUM_THREADS / MKL_NUM_THREADS, is kept). Returns
    torch's thread count."""
    import torch

    n = configured_threads()
    untouched = torch.get_num_threads() == (os.cpu_count() or 1) and not any(
        os.environ.get(v) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"))
    if n is None and untouched:
        n = default_threads()
    if n is not None and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def runtime_threads(threads: int | None = None) -> int:
    """Threads for a CPU runtime other than torch (ONNX Runtime, OpenVINO): ``threads``, else ``RAGCTX_THREADS``,
    else torch's count when torch is loaded, else :func:`default_threads`; torch is not imported for this (those
    embedders start without it)."""
    import sys

    torch = sys.modules.get("torch")
    return threads or configured_threads() or (torch.get_num_threads() if torch is not None else default_threads())


def onnx_session_options(threads: int | None = None):
    """``onnxruntime.SessionOptions`` with :func:`runtime_threads` intra-op threads whose idle workers do not
    spin."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = runtime_threads(threads)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts
