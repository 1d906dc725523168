"""The Generator: a tokenizer and a :class:`~ragctx.generator.model.Transformer`, with prefill, incremental
decode (static KV cache, ring buffer or recurrent state, by attention variant, all fixed buffers written in place:
:mod:`~ragctx.generator.decode`), sampling on the device, streaming, and batched generation. Loading and saving
are :mod:`~ragctx.generator.checkpoints`' (every format, one check); the classmethods here call it."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import RagctxError
from ..protocols import Generated, TextDelta
from ..threads import apply_torch_threads
from .attention import get_attention
from .checkpoints import Checkpoint, load, load_folder, load_pretrained, save_folder
from .decode import Completion, StatePool, compile_step, decode_one_token, left_pad, restore, sample_tokens, snapshot
from .model import Transformer

__all__ = ["Generator", "Generation", "sample"]


@dataclass
class Generation:
    """One generation's result and cost."""

    text: str
    tokens: list[int]  # generated token ids (stop string and eos excluded)
    prompt_tokens: int
    finish_reason: str  # "stop" (stop string), "eos", or "length" (token limit)
    prefill_s: float = 0.0
    decode_s: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    probe_logprobs: list[float] = field(default_factory=list)  # log P(probe | prompt) for each probe asked for
    # with logprobs=True: log P of each token chosen, the eos or stop-string token that ended the completion included
    # (the model's confidence in its answer; eval/sweep_read_each.py scores answers by it); else empty
    token_logprobs: list[float] = field(default_factory=list)
    peak_memory_bytes: int | None = None  # set by a memory meter (ragctx.evaluation.memory), else not measured


def sample(logits: torch.Tensor, temperature: float, top_p: float, rng: torch.Generator | None) -> int:
    """One token from logits [V]: greedy at temperature 0; otherwise temperature-scaled nucleus (top-p) sampling
    (:func:`~ragctx.generator.decode.sample_tokens` for a batch, on the device, with no host sync)."""
    return int(sample_tokens(logits[None], temperature, top_p, rng)[0])


class Generator:
    """Generates text with a decoder whose attention is one switch.

    Args:
        model: the decoder. tokenizer: :class:`ByteTokenizer` or :class:`HFTokenizer`.
        compile: compile the decode step once (:func:`~ragctx.generator.decode.compile_step`): True takes the
            device's defaults (CUDA graphs on a GPU, inductor on the CPU), a dict gives ``torch.compile``'s
            arguments. Off by default: compiling costs seconds to a minute per batch size and length bucket, and pays
            off for long decodes on a GPU, where an eager step is bound by kernel launches. Prefill stays eager.
    """

    def __init__(self, model: Transformer, tokenizer, *, compile: bool | dict = False) -> None:
        if not isinstance(compile, (bool, dict)):
            raise RagctxError(f"compile={compile!r}: pass True, False or a dict of torch.compile arguments")
        apply_torch_threads()  # RAGCTX_THREADS, when set (ragctx.threads)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = ""  # the packaged model's name or the path it was loaded from
        self.qa_defaults: dict = {}  # QA settings measured for this model (packaged models carry theirs)
        self.compile = compile
        if compile:
            model.fuse_projections()  # fewer matmuls per compiled step (the same numbers)
        self._step = compile_step(self.device, compile) if compile else decode_one_token
        self._pool = StatePool()  # the last generation's states, reused in place by the next one of that shape

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def attention(self) -> str:
        return self.model.cfg.attention

    def set_attention(self, name: str) -> Generator:
        """Switches the attention implementation (same weights); an unknown name lists the valid ones. A pretrained
        checkpoint was trained with softmax attention: under ``linear`` or ``hybrid`` its feature maps are untrained
        and its text degrades (SmolLM2: perplexity 29.6 -> 3,292), which this warns about."""
        self.model.set_attention(name)
        if get_attention(name).features and self.tokenizer.kind == "hf" and not self.model.has_feature_maps:
            warnings.warn(f"{self.name or 'this checkpoint'} was trained with softmax attention; under '{name}' "
                          "without attention transfer (linearization) it writes poor text", stacklevel=2)
        return self

    @property
    def max_context(self) -> int:
        return self.model.cfg.max_seq_len

    # -- loading (ragctx.generator.checkpoints: every format, one check) --------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path, *, attention: str | None = None, device: str | None = None,
                        dtype: torch.dtype | None = None, compile: bool | dict = False, **options) -> Generator:
        """A pretrained checkpoint: a Hugging Face folder (config.json, *.safetensors, tokenizer.json; Llama,
        Qwen2, Mistral), a GGUF file (or a folder holding one; llama, qwen2 and gemma3 architectures), the name of a
        packaged model (:data:`~ragctx.generator.checkpoints.PACKAGED`, e.g. ``"smollm2"``), or a linearized
        model: a name in :data:`~ragctx.generator.checkpoints.LINEARIZED` (``"smollm2-hybrid"``) or a folder
        written by ``ragctx linearize``, loaded over its base.

        ``attention``: default ``flash`` (a linearized model: the attention it was trained for). ``options`` set
        attention options: ``window`` (sliding_window / hybrid), ``feature_map``, ``hybrid_feature_map``,
        ``chunk_size``, ``max_seq_len``, ``layer_attention``."""
        return cls._of(load_pretrained(path, attention=attention, options=options), device, dtype, compile)

    @classmethod
    def open(cls, spec: str | Path, *, attention: str | None = None, device: str | None = None,
             max_seq_len: int | None = None, dtype: torch.dtype | None = None, **options) -> Generator:
        """Any generator by one name: ``builtin:NAME``, a packaged model (``smollm2``), a folder written by
        :meth:`save` (:meth:`load`), a Hugging Face checkpoint folder or a .gguf file (:meth:`from_pretrained`,
        with ``flash`` unless ``attention`` says). ``max_seq_len`` overrides the context the model accepts (see
        :meth:`with_context`); ``dtype`` casts the weights (e.g. ``torch.bfloat16`` on a GPU; default: fp32);
        ``options`` as for :meth:`from_pretrained`."""
        gen = cls._of(load(spec, attention=attention, options=options), device, dtype, False)
        return gen if max_seq_len is None else gen.with_context(max_seq_len)

    def with_context(self, max_seq_len: int) -> Generator:
        """Accepts inputs up to ``max_seq_len`` tokens (caches are sized per call, RoPE is computed per position).
        Past the length a model was trained on, nothing is promised about quality: that is what an evaluation
        at those lengths measures (a checkpoint with RoPE scaling, e.g. YaRN, is made for longer inputs)."""
        if not isinstance(max_seq_len, int) or max_seq_len < 1:
            raise RagctxError(f"max_seq_len={max_seq_len!r}: pass a positive number of tokens")
        self.model.cfg.max_seq_len = max_seq_len
        return self

    @classmethod
    def load(cls, spec: str | Path, *, attention: str | None = None, device: str | None = None,
             dtype: torch.dtype | None = None, compile: bool | dict = False) -> Generator:
        """A generator saved by :meth:`save`, by folder or as ``builtin:NAME`` (shipped inside the package, see
        :func:`~ragctx.generator.checkpoints.builtin_names`; ``builtin:flash`` is the softmax model run with flash attention)."""
        return cls._of(load_folder(spec, attention=attention), device, dtype, compile)

    @classmethod
    def _of(cls, ck: Checkpoint, device: str | None, dtype: torch.dtype | None, compile: bool | dict) -> Generator:
        """A generator of what the loader read, placed on ``device`` (default: CUDA when there is one) in ``dtype``."""
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = ck.model.to(device=device, dtype=dtype) if dtype else ck.model.to(device)
        gen = cls(model, ck.tokenizer, compile=compile)
        gen.name, gen.qa_defaults = ck.name, dict(ck.qa_defaults)
        return gen

    def save(self, folder: str | Path, *, dtype: torch.dtype | None = None, **extra) -> Path:
        """Writes config.json and model.safetensors (weights cast to ``dtype`` if given, e.g. torch.bfloat16), with
        ``extra`` in config.json: a folder :meth:`load` reads (:func:`~ragctx.generator.checkpoints.save_folder`)."""
        if self.tokenizer.kind != "byte":
            raise RagctxError("save() writes byte-level generators; keep a Hugging Face checkpoint in its own folder")
        return save_folder(self.model, folder, dtype=dtype, tokenizer=self.tokenizer.kind, **extra)

    # -- generation --------------------------------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, ids: list[int] | torch.Tensor) -> torch.Tensor:
        """Logits [T, V] of one full forward pass (no cache)."""
        ids = torch.as_tensor(ids, device=self.device).view(1, -1)
        return self.model(ids)[0]

    def generate(self, prompt: str | list[int], **kwargs) -> Generation:
        """Generates a completion of ``prompt`` (text or token ids); arguments as for :meth:`stream`."""
        result: Generation | None = None
        for event in self.run(prompt, **kwargs):
            if isinstance(event, Generated):
                result = event.generation
        assert result is not None
        return result

    def stream(self, prompt: str | list[int], **kwargs) -> Iterator[str]:
        """Yields the completion's text as it is generated. Arguments:

        max_new_tokens (64): token limit. temperature (0 = greedy), top_p (1.0), seed: sampling (on the device;
        a seed gives the same tokens on the same device). stop: strings that end the generation (not included in
        the text). bos: prepend <bos> to a text prompt (None: as the checkpoint's tokenizer does). probes: token
        sequences whose log-probability as the start of the completion is measured from the prompt's state
        (``Generation.probe_logprobs``), e.g. a refusal. logprobs (False): record each chosen token's
        log-probability (``Generation.token_logprobs``; one more small operation per decode step). check_every:
        tokens decoded between the host's reads of the tokens (to stream text and find eos and stop strings; None: 1
        on the CPU, where reading costs nothing, 8 on a GPU, where each read waits for the device); a generation that
        ended runs at most check_every - 1 steps more, whose tokens are dropped.
        """
        for event in self.run(prompt, **kwargs):
            if isinstance(event, TextDelta):
                yield event.text

    def chat_prompt(self, messages: list[dict]) -> list[int]:
        """Token ids of ``messages`` rendered by the checkpoint's chat template, ending where the assistant's reply
        starts (no BOS is added beyond what the template writes, as transformers' ``apply_chat_template``)."""
        template = self.tokenizer.chat_template
        if template is None:
            raise RagctxError("this generator has no chat template (a base model or a built-in byte model); "
                              "call generate() with a plain prompt")
        return self.tokenizer.encode(template.render(messages, add_generation_prompt=True), bos=False)

    def chat(self, messages: list[dict], **kwargs) -> Generation:
        """The assistant's reply to ``messages`` ([{"role": "system" | "user" | "assistant", "content": ...}]),
        through the checkpoint's chat template; arguments as for :meth:`stream`."""
        return self.generate(self.chat_prompt(messages), **kwargs)

    def run(self, prompt, *, max_new_tokens: int = 64, temperature: float = 0.0, top_p: float = 1.0,
            stop: list[str] | str | None = None, seed: int | None = None, bos: bool | None = None,
            probes: list[list[int]] | tuple = (), logprobs: bool = False,
            check_every: int | None = None) -> Iterator[TextDelta | Generated]:
        """Yields a :class:`~ragctx.protocols.TextDelta` per piece of the completion's text as it comes, then one
        :class:`~ragctx.protocols.Generated` holding its :class:`Generation` (arguments as for :meth:`stream`):
        the :class:`~ragctx.protocols.TextGenerator` edge QA streams through. :meth:`generate` and :meth:`stream`
        are the two halves of this."""
        ids = self._prompt_ids(prompt, bos, max_new_tokens)
        for event in self._generate([ids], max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                    stop=stop, seed=seed, probes=[list(p) for p in probes], logprobs=logprobs,
                                    check_every=check_every):
            yield TextDelta(event[1]) if isinstance(event, tuple) else Generated(event[0])

    def generate_batch(self, prompts: list[str | list[int]], *, batch_size: int | None = None,
                       **kwargs) -> list[Generation]:
        """One :class:`Generation` per prompt, decoding ``batch_size`` prompts at a time (None: all at once),
        left-padded to the longest of each batch. Greedy results equal :meth:`generate`'s one prompt at a time (up
        to rounding in near ties); sampled rows draw from one generator, so a seed gives other tokens than it does
        one prompt at a time. Arguments as for :meth:`stream` (``probes`` are scored for every row). ``prefill_s``
        and ``decode_s`` are the whole batch's (``timings["batch"]`` says how many prompts shared them)."""
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, (list, tuple)):
            raise RagctxError(f"generate_batch takes a list of prompts (text or token ids), not {type(prompts).__name__}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise RagctxError(f"batch_size={batch_size!r}: pass a positive number of prompts (or None: all at once)")
        bos, new = kwargs.pop("bos", None), kwargs.get("max_new_tokens", 64)
        ids = [self._prompt_ids(p, bos, new, index=i) for i, p in enumerate(prompts)]
        size = batch_size or max(1, len(ids))
        results: list[Generation] = []
        for start in range(0, len(ids), size):
            for event in self._generate(ids[start : start + size], **kwargs):
                if isinstance(event, list):
                    results += event
        return results

    def _prompt_ids(self, prompt, bos: bool | None, max_new_tokens: int, index: int | None = None) -> list[int]:
        """The prompt's token ids, checked: not empty, and room for ``max_new_tokens`` in the context."""
        where = "" if index is None else f"prompt {index}: "
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise RagctxError(f"max_new_tokens={max_new_tokens}: pass 0 or more")
        ids = self.tokenizer.encode(prompt, bos=bos) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise RagctxError(f"{where}empty prompt: pass some text or token ids")
        if len(ids) + max_new_tokens > self.max_context:
            raise RagctxError(f"{where}prompt of {len(ids)} tokens + {max_new_tokens} new exceeds the generator's "
                              f"context of {self.max_context} tokens; shorten the input or lower max_new_tokens")
        return ids

    @torch.inference_mode()
    def _generate(self, prompts: list[list[int]], *, max_new_tokens: int = 64, temperature: float = 0.0,
                  top_p: float = 1.0, stop: list[str] | str | None = None, seed: int | None = None,
                  probes: list[list[int]] = (), logprobs: bool = False, check_every: int | None = None):
        """Prefill of every prompt (left-padded), then decode steps on the device until every row has ended or the
        token limit. Yields (row, text piece) as text becomes final, then the list of :class:`Generation`."""
        if check_every is not None and (not isinstance(check_every, int) or check_every < 1):
            raise RagctxError(f"check_every={check_every!r}: pass a positive number of tokens (or None)")
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        eos = getattr(self.tokenizer, "eos_ids", None) or {self.tokenizer.eos_id}
        dev = self.device
        cuda = dev.type == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        every = check_every or (8 if cuda else 1)
        b, n = len(prompts), max(len(p) for p in prompts)
        room = n + max(max_new_tokens, max((len(p) for p in probes), default=0))
        rng = torch.Generator(device=dev).manual_seed(seed) if seed is not None else None

        t0 = time.perf_counter()
        states = self._pool.take(self.model, b, room, static=bool(self.compile) and cuda)
        ids, positions, valid = left_pad(prompts, dev)
        logits = self.model(ids, positions=positions, valid=valid, states=states, last_only=True)[:, -1]  # [B, V]
        sync()
        prefill = time.perf_counter() - t0
        scored = self._probe_rows(logits, states, positions[:, -1:] + 1, probes)  # [B][probe]
        rows = [Completion(self.tokenizer, stops, eos) for _ in range(b)]
        out = torch.empty(b, max_new_tokens, dtype=torch.long, device=dev)  # every step's tokens, read in chunks
        chosen = torch.empty(b, max_new_tokens if logprobs else 0, dtype=torch.float32, device=dev)  # their log P
        pos = positions[:, -1:] + 1  # [B, 1]: each row's next position (the last column is real in every row)
        checked = 0
        t1 = time.perf_counter()
        for step in range(max_new_tokens):
            tok = sample_tokens(logits, temperature, top_p, rng)  # [B], on the device
            out[:, step] = tok
            if logprobs:
                chosen[:, step] = torch.log_softmax(logits.float(), -1).gather(1, tok[:, None])[:, 0]
            if step + 1 - checked >= every or step + 1 == max_new_tokens:
                for i, toks in enumerate(out[:, checked : step + 1].tolist()):  # the one host sync per chunk
                    for t in toks:
                        rows[i].add(t)
                    piece = rows[i].ready()
                    if piece:
                        yield i, piece
                checked = step + 1
                if all(r.reason is not None for r in rows):
                    break
            if step + 1 < max_new_tokens:
                if self.compile and cuda:
                    torch.compiler.cudagraph_mark_step_begin()
                logits = self._step(self.model, tok[:, None], pos, states)
                pos = pos + 1
        sync()
        decode = time.perf_counter() - t1
        self._pool.give_back(self.model, b, room, states)
        results = []
        token_lps = chosen[:, :checked].tolist() if logprobs else [[] for _ in rows]
        for i, (row, p) in enumerate(zip(rows, prompts)):
            rest = row.finish()
            if rest:
                yield i, rest
            timings = {"prefill_s": prefill, "decode_s": decode,
                       "decode_ms_per_token": 1e3 * decode / max(1, max(len(r.tokens) for r in rows))}
            if b > 1:
                timings["batch"] = b
            results.append(Generation(row.text, row.tokens, len(p), row.reason, prefill, decode, timings, scored[i],
                                      token_lps[i][: row.steps]))
        yield results

    def _probe_rows(self, logits: torch.Tensor, states: list, pos: torch.Tensor,
                    probes: list[list[int]]) -> list[list[float]]:
        """log P(probe | prompt) of every probe for every row: the first token from the prefill's logits [B, V], the
        rest by decode steps of all rows at once from their next positions ``pos`` [B, 1] on the prompts' states,
        which are put back afterwards (:func:`~ragctx.generator.decode.snapshot`: a KV cache's cursor and validity,
        the other states whole: O(window) or O(1))."""
        b = logits.shape[0]
        scored = [[0.0] * len(probes) for _ in range(b)]
        for j, tokens in enumerate(probes):
            if not tokens:
                continue
            total = torch.log_softmax(logits.float(), -1)[:, tokens[0]]  # [B]
            if len(tokens) > 1:
                saved = snapshot(states)
                for i, (tok, nxt) in enumerate(zip(tokens, tokens[1:])):
                    step = decode_one_token(self.model, torch.full((b, 1), tok, device=logits.device), pos + i, states)
                    total = total + torch.log_softmax(step.float(), -1)[:, nxt]
                restore(states, saved)
            for row, value in enumerate(total.tolist()):
                scored[row][j] = value
        return scored
