"""Peak memory of each generation: CUDA's max allocated on a GPU, the process's peak RSS since the generation began on
a CPU (Linux; the process's peak so far elsewhere).

Measuring resets process-wide marks (``torch.cuda.reset_peak_memory_stats``, Linux's VmHWM through
``/proc/self/clear_refs``), which a library call should not do behind its caller's back, so :class:`~ragctx.qa.QA`
does not measure: a caller that owns its process wraps the generator in a :class:`MeteredGenerator`, whose
generations then report ``peak_memory_bytes``, and QA's :class:`~ragctx.qa.Answer` carries it (the largest of its
attempts). The evaluation runner meters every trial this way; ``ragctx ask`` and ``ragctx serve`` (one generation at a
time) do too. Tested in tests/test_qa.py (a CPU generation's own peak) and tests/test_protocols.py.
"""

from __future__ import annotations

import dataclasses
import resource
from collections.abc import Iterator
from typing import Any

from ..errors import RagctxError
from ..protocols import Generated, GenerationResult, TextDelta, TextGenerator

__all__ = ["MeteredGenerator", "metered", "peak_memory", "reset_peak_memory", "reset_peak_rss"]


def reset_peak_rss() -> None:
    """Linux: start the process's peak-RSS mark (VmHWM) again from the current RSS, so that the peak read after a
    generation is that generation's. Elsewhere a no-op (the peak is then the process's so far)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def reset_peak_memory(device) -> None:
    """Starts a measurement on ``device`` (a ``torch.device``, or None): CUDA's peak statistics, else the peak RSS."""
    if device is not None and getattr(device, "type", None) == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats(device)
    else:
        reset_peak_rss()


def peak_memory(device) -> int:
    """Peak memory since :func:`reset_peak_memory`: CUDA max allocated, or on a CPU the peak RSS since
    :func:`reset_peak_rss` (Linux; the whole process's peak RSS elsewhere)."""
    if device is not None and getattr(device, "type", None) == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated(device))
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # process peak RSS (Linux reports KiB)


class MeteredGenerator:
    """A :class:`~ragctx.protocols.TextGenerator` whose generations report their peak memory: each :meth:`run` and
    :meth:`generate_batch` of the wrapped generator is measured (a batch's peak is every row's), and the result
    carries it in ``peak_memory_bytes``. Everything else (``tokenizer``, ``device``, ``set_attention``, ...) is the
    wrapped generator's. Pass it to :class:`~ragctx.qa.QA` in the generator's place; one generation at a time."""

    def __init__(self, generator: TextGenerator) -> None:
        self.generator = generator

    def __getattr__(self, name: str) -> Any:  # called only for what this class does not define
        if name == "generator":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.generator, name)

    def __repr__(self) -> str:
        return f"MeteredGenerator({self.generator!r})"

    def generate(self, prompt, **kwargs: Any) -> GenerationResult:
        """One whole generation through :meth:`run`, metered (what ``Generator.generate`` returns)."""
        result = None
        for event in self.run(prompt, **kwargs):
            if isinstance(event, Generated):
                result = event.generation
        if result is None:
            raise RagctxError(f"{self.generator!r}.run() ended without a Generated result")
        return result

    def run(self, prompt, **kwargs: Any) -> Iterator[TextDelta | Generated]:
        """The wrapped generator's :meth:`run`, its :class:`~ragctx.protocols.Generated` result metered."""
        device = getattr(self.generator, "device", None)  # a protocol generator need not say (then: this process)
        reset_peak_memory(device)  # when the first event is asked for: the generation starts now
        for event in self.generator.run(prompt, **kwargs):
            if isinstance(event, Generated):
                event = Generated(self._with_peak(event.generation, peak_memory(device)))
            yield event

    def generate_batch(self, prompts, **kwargs: Any) -> list[GenerationResult]:
        """The wrapped generator's :meth:`generate_batch`; every row reports the batch's peak."""
        device = getattr(self.generator, "device", None)
        reset_peak_memory(device)
        results = self.generator.generate_batch(prompts, **kwargs)
        peak = peak_memory(device)
        return [self._with_peak(r, peak) for r in results]

    @staticmethod
    def _with_peak(result: GenerationResult, peak: int) -> GenerationResult:
        if dataclasses.is_dataclass(result):
            return dataclasses.replace(result, peak_memory_bytes=peak)  # type: ignore[type-var]
        try:  # a result of the user's own class: set in place where it can be
            result.peak_memory_bytes = peak  # type: ignore[attr-defined]
        except AttributeError:
            pass
        return result


def metered(generator: TextGenerator) -> MeteredGenerator:
    """``generator`` wrapped in a :class:`MeteredGenerator` (itself when it already is one)."""
    return generator if isinstance(generator, MeteredGenerator) else MeteredGenerator(generator)
