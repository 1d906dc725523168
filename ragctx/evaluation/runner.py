"""The grid runner: needle examples (or a QA file's questions) x chunking x attention x mode x k, one row per trial
in ``results.jsonl``.

Each example (haystack, length, depth, kind, seed, index) is generated once and shared by every mode and attention,
so the comparisons are paired. Modes ``rag``, ``full`` and ``auto`` ask through :class:`~ragctx.qa.QA`; ``direct``
gives the generator the needle example's own prompt, as the built-in models were trained and as the trainer
evaluates them. A config's ``parts`` join several sub-grids into one run (eval/configs/builtin-needles.json). A
rerun skips the trials whose key (:func:`~ragctx.evaluation.results.trial_key`) a row in the folder already has, so
an interrupted run resumes where it stopped.

A grid can be split into shards by example (``shard=(i, n)``, ``ragctx eval --shard i/n``): shard i runs every
n-th example and writes ``results.shard-i-of-n.jsonl`` into the same folder, so shards run side by side (one per
GPU, or one per machine over a shared folder); the report reads every ``results*.jsonl`` (``--report-only`` once
all shards are done). A trial that runs out of memory is recorded with ``status: "oom"`` and the grid goes on:
the reference softmax is expected to, past some length.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from ..errors import RagctxError, is_out_of_memory, release_memory
from ..retrieval import retriever_names
from ..tasks import KINDS, NeedleTask
from .memory import metered
from .results import (
    Outcome,
    Reference,
    Row,
    Trial,
    make_row,
    pending,
    read_rows,
    result_files,
    results_file,
    trial_id,
)

# result_files: kept here for callers of the old name (it lives in .results with the rest of the row schema)
__all__ = [
    "NEEDLE_MODES",
    "PART_KEYS",
    "EvalConfig",
    "load_config",
    "parse_shard",
    "result_files",
    "run_eval",
    "trials",
]

NEEDLE_MODES = ("rag", "full", "auto", "direct")
# what a part of a grid (EvalConfig.parts) may set: the lists that make trials, not how they run
PART_KEYS = ("modes", "attentions", "lengths", "depths", "kinds", "seeds", "unanswerable_seeds", "examples",
             "haystack", "k", "chunk_tokens", "overlap")
NEEDLE_DOC = "context"  # the document id of a needle example's context in its index


@dataclass
class EvalConfig:
    """One evaluation grid (a JSON file with these keys; lists are swept)."""

    name: str = "eval"
    out: str = "eval/runs/eval"  # folder for results.jsonl, summary.json, report.md/html and plots
    generator: str = "builtin"  # "builtin" (each attention's own built-in weights), a model folder, or a HF checkpoint
    modes: list[str] = field(default_factory=lambda: ["rag", "full", "auto"])  # and direct (needles) or gold (QA)
    attentions: list[str] = field(default_factory=lambda: ["softmax", "flash", "linear", "sliding_window", "hybrid"])
    lengths: list[int] = field(default_factory=lambda: [1024, 4096])  # context length in generator tokens
    depths: list[float | None] = field(default_factory=lambda: [0.0, 0.5, 1.0])  # needle depth, 0 = start (null: drawn)
    kinds: list[str] = field(default_factory=lambda: ["single"])
    seeds: list[int] = field(default_factory=lambda: [0, 1])  # NeedleTask seeds
    examples: int = 1  # examples per seed and cell (numbers 0..examples-1 under the seed)
    unanswerable_seeds: list[int] = field(default_factory=list)  # seeds whose question asks an absent key
    haystack: str | list[str] = "essays"  # essays, repeat or a folder; a list is swept
    k: list[int] = field(default_factory=lambda: [5])
    chunk_tokens: list[int] = field(default_factory=lambda: [128])
    overlap: list[int] = field(default_factory=lambda: [16])
    max_new_tokens: int = 48
    device: str | None = None
    max_seq_len: int | None = None  # let the generator take longer inputs than its config says (lengths past training)
    dtype: str | None = None  # generator weights: "bfloat16", "float16", "float32"; default bf16 on a GPU, fp32 on CPU
    qa_file: str | None = None  # a JSONL QA file instead of needle tasks (see qa_tasks); lengths/depths unused
    corpus: str | None = None  # QA files: the documents every question is asked of (a folder, builtin:essays, an index)
    splits: list[str] | None = None  # QA files: only questions of these splits (e.g. ["test"])
    # dense, bm25, hybrid; swept for QA files (default bm25, QA's), needles use the first (default dense, as measured)
    retrieval: list[str] | None = None
    full_truncate: str | None = None  # QA files: "start" / "end" lets full read the part of a long document that fits
    refusal_threshold: float | None = None  # QA files: QA(refusal_threshold=...) (None: the generator's default)
    focus: int | str | None = "auto"  # QA files: QA(focus=...): passages read from the retrieved chunks (None: chunks)
    bos: bool | None = None  # prepend BOS to plain-text prompts (None: as the generator's tokenizer does)
    options: dict[str, Any] = field(default_factory=dict)  # generator options: window, feature_map, chunk_size, ...
    batch: int = 1  # needle trials decoded together (ask_many); > 1 shares prefill/decode times and peak memory
    #                 within a batch (rows say "batch"), so cost plots want 1; QA-file and direct trials run singly
    parts: list[dict[str, Any]] = field(default_factory=list)  # sub-grids run together: each sets some PART_KEYS

    def __post_init__(self) -> None:
        if self.qa_file:
            from .qa_tasks import QA_MODES

            bad = sorted(set(self.modes) - set(QA_MODES))
            if bad:
                raise RagctxError(f"eval config: modes {bad} are unknown for a QA file; choose from "
                                  f"{', '.join(QA_MODES)}")
        elif "gold" in self.modes:
            raise RagctxError("eval config: mode 'gold' (the evidence passage alone) needs a qa_file")
        elif set(self.modes) - set(NEEDLE_MODES):
            raise RagctxError(f"eval config: modes {sorted(set(self.modes) - set(NEEDLE_MODES))} are unknown for "
                              f"needle tasks; choose from {', '.join(NEEDLE_MODES)}")
        if self.retrieval is None:
            self.retrieval = ["bm25"] if self.qa_file else ["dense"]
        for r in self.retrieval:
            if r not in retriever_names():
                raise RagctxError(f"eval config: retrieval '{r}' is unknown; choose one of "
                                  f"{', '.join(retriever_names())}")
        if self.full_truncate not in (None, "start", "end"):
            raise RagctxError(f"eval config: full_truncate '{self.full_truncate}': use null, 'start' or 'end'")
        for kind in self.kinds:
            if kind not in KINDS:
                raise RagctxError(f"eval config: kind '{kind}' is unknown; choose from {', '.join(KINDS)}")
        if self.dtype not in (None, "bfloat16", "float16", "float32"):
            raise RagctxError(f"eval config: dtype '{self.dtype}' is unknown; choose bfloat16, float16 or float32")
        if not isinstance(self.batch, int) or isinstance(self.batch, bool) or self.batch < 1:
            raise RagctxError(f"eval config: batch {self.batch!r}: pass a positive number of trials (1: one at a time)")
        if not (self.modes and self.attentions and self.lengths and self.depths and self.seeds):
            raise RagctxError("eval config: modes, attentions, lengths, depths and seeds need at least one value each")
        if not isinstance(self.examples, int) or isinstance(self.examples, bool) or self.examples < 1:
            raise RagctxError(f"eval config: examples {self.examples!r}: pass a positive number per seed and cell")
        for part in self.parts:
            bad = sorted(set(part) - set(PART_KEYS)) if isinstance(part, dict) else ["(not an object)"]
            if bad:
                raise RagctxError(f"eval config: a part sets {bad}; a part may set only {', '.join(PART_KEYS)}")
            replace(self, parts=[], **part)  # each part is a grid of its own: checked as one


def load_config(path: str | Path) -> EvalConfig:
    path = Path(path)
    if not path.is_file():
        raise RagctxError(f"{path}: no such eval config; see eval/configs/ for examples")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RagctxError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from e
    known = {f.name for f in fields(EvalConfig)}
    unknown = sorted(set(data) - known - {"_doc"})
    if unknown:
        raise RagctxError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
    return EvalConfig(**{k: v for k, v in data.items() if k in known})


def trials(cfg: EvalConfig) -> list[Trial]:
    """Every trial of the grid (of each of its ``parts`` in turn, a trial two parts share once), in the order they
    run: examples outermost, so each is built once."""
    out: dict[str, Trial] = {}
    for grid in ([replace(cfg, parts=[], **part) for part in cfg.parts] or [cfg]):
        for t in (_qa_trials(grid) if grid.qa_file else _needle_trials(grid)):
            t = {"id": trial_id(t), **t}
            out.setdefault(t["id"], t)
    return list(out.values())


def _qa_trials(cfg: EvalConfig) -> Iterator[Trial]:
    for item in _questions(cfg):
        for attention, mode in itertools.product(cfg.attentions, cfg.modes):
            if mode == "gold" and not item["evidence"]:
                continue  # no passage to give (unanswerable questions)
            retrieves = mode in ("rag", "auto")
            chunks, overlaps = (cfg.chunk_tokens, cfg.overlap) if retrieves else (cfg.chunk_tokens[:1], cfg.overlap[:1])
            for chunk, ov, retrieval, k in itertools.product(chunks, overlaps, cfg.retrieval if retrieves else [None],
                                                             cfg.k if retrieves else [None]):
                yield dict(qa_file=cfg.qa_file, qid=item["qid"], chunk_tokens=chunk, overlap=ov, retrieval=retrieval,
                           attention=attention, mode=mode, k=k, generator=cfg.generator, settings=_qa_settings(cfg),
                           length=None, depth=-1.0)


def _needle_trials(cfg: EvalConfig) -> Iterator[Trial]:
    haystacks = [cfg.haystack] if isinstance(cfg.haystack, str) else cfg.haystack
    for length, depth, kind, seed in itertools.product(cfg.lengths, cfg.depths, cfg.kinds, cfg.seeds):
        for haystack, index in itertools.product(haystacks, range(cfg.examples)):
            for chunk, ov, attention, mode in itertools.product(cfg.chunk_tokens, cfg.overlap, cfg.attentions,
                                                                cfg.modes):
                if mode == "direct":  # no index: one trial, not one per chunking
                    if (chunk, ov) != (cfg.chunk_tokens[0], cfg.overlap[0]):
                        continue
                    chunk = ov = None
                for k in (cfg.k if mode in ("rag", "auto") else [None]):
                    t: Trial = dict(length=length, depth=depth, kind=kind, seed=seed,
                                    unanswerable=seed in cfg.unanswerable_seeds, chunk_tokens=chunk, overlap=ov,
                                    attention=attention, mode=mode, k=k, generator=cfg.generator, haystack=haystack,
                                    index=index)
                    if cfg.retrieval[0] != "dense" or cfg.options:  # the needle settings (results.NEEDLE_SETTINGS)
                        t["settings"] = {"retrieval": cfg.retrieval[0], "options": cfg.options}
                    yield t


def _qa_settings(cfg: EvalConfig) -> dict[str, Any]:
    """What changes a QA-file trial's result besides its own parameters: part of its id, so that a rerun with other
    settings into the same folder does not count the old rows as done."""
    return {"corpus": cfg.corpus, "focus": cfg.focus, "refusal_threshold": cfg.refusal_threshold, "bos": cfg.bos,
            "max_new_tokens": cfg.max_new_tokens, "full_truncate": cfg.full_truncate, "options": cfg.options,
            "dtype": cfg.dtype, "max_seq_len": cfg.max_seq_len}


def _questions(cfg: EvalConfig) -> list[dict[str, Any]]:
    from .qa_tasks import load_qa_file

    return load_qa_file(cfg.qa_file, corpus=bool(cfg.corpus), splits=cfg.splits)


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n), checked: 0 <= i < n."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise RagctxError(f"shard '{text}': write it as I/N, e.g. 0/2 for the first of two shards") from None
    if n < 1 or not 0 <= i < n:
        raise RagctxError(f"shard '{text}': need N >= 1 and 0 <= I < N (shards are numbered from 0)")
    return i, n


def _example_of(t: Trial) -> tuple:
    if "qid" in t:
        return (t["qid"],)
    return (t["haystack"], t["length"], t["depth"], t["kind"], t["seed"], t["unanswerable"], t.get("index", 0))


def _in_shard(all_trials: list[Trial], shard: tuple[int, int]) -> list[Trial]:
    """The trials of every n-th example (in the grid's order), so each example is built by one shard only."""
    i, n = shard
    order: dict[tuple, int] = {}
    for t in all_trials:
        order.setdefault(_example_of(t), len(order))
    return [t for t in all_trials if order[_example_of(t)] % n == i]


def _dtype(cfg: EvalConfig):
    import torch

    if cfg.dtype:
        return getattr(torch, cfg.dtype)
    gpu = (cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    return torch.bfloat16 if gpu else torch.float32


def _generator(cfg: EvalConfig, attention: str, cache: dict):
    from ..generator import Generator
    from ..generator.attention import weights_of

    if cfg.generator == "builtin":
        key = weights_of(attention)  # flash runs softmax's weights: one model loaded for both
        if key not in cache:
            cache[key] = Generator.open(f"builtin:{key}", device=cfg.device, max_seq_len=cfg.max_seq_len,
                                        dtype=_dtype(cfg), **cfg.options)
        gen = cache[key]
    else:
        if "shared" not in cache:
            cache["shared"] = Generator.open(cfg.generator, attention=attention, device=cfg.device,
                                             max_seq_len=cfg.max_seq_len, dtype=_dtype(cfg), **cfg.options)
        gen = cache["shared"]
    if gen.attention != attention:  # the same name keeps what the generator set up (a linearized mix's layers)
        gen.set_attention(attention)
    return metered(gen)  # every generation measures its peak memory: the rows' peak_memory_bytes


def run_eval(cfg: EvalConfig, *, progress: bool = True, shard: tuple[int, int] | None = None) -> Path:
    """Runs the grid (resuming), then writes summary.json, report.md, report.html and plots. Returns the folder.

    Each run that has trials to do adds a line to ``runs.jsonl`` (date, machine, torch, trials), which the report
    lists. ``shard=(i, n)``: run only shard i of n (see the module docstring); its report is left to
    ``--report-only`` once every shard is done."""
    from tqdm.auto import tqdm

    from .report import write_report

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    first = out / "config.json"  # the folder's first config; another config run into the same folder keeps its own
    named = first if not first.is_file() or json.loads(first.read_text()).get("name") == cfg.name \
        else out / f"config-{cfg.name}.json"
    named.write_text(json.dumps(asdict(cfg), indent=2))
    grid = trials(cfg) if shard is None else _in_shard(trials(cfg), shard)
    todo = pending(grid, read_rows(out))
    if todo:
        with open(out / "runs.jsonl", "a") as log:
            log.write(json.dumps(_environment(cfg, len(todo), shard)) + "\n")
    questions = {q["qid"]: q for q in _questions(cfg)} if cfg.qa_file else {}
    generators: dict = {}
    examples: dict = {}
    indexes: dict = {}
    today = time.strftime("%Y-%m-%d")
    with open(results_file(out, shard), "a") as sink, \
            tqdm(total=len(todo), desc="trials", unit="trial", disable=not progress) as bar:
        def write(rows: list[Row]) -> None:
            sink.writelines(json.dumps({**row, "date": today}) + "\n" for row in rows)
            sink.flush()
            bar.update(len(rows))

        if cfg.qa_file:
            for t in todo:
                gen = _generator(cfg, t["attention"], generators)
                write([_qa_row(t, questions[t["qid"]], gen, cfg, indexes, out)])
        else:
            for group in _batches(todo, cfg.batch):
                gen = _generator(cfg, group[0]["attention"], generators)
                # the indexes of this batch's examples only: examples run outermost, so an example's index serves
                # its consecutive trials (every mode and attention) and is built once
                current = {_example_of(t) for t in group}
                for key in [key for key in indexes if key[0] not in current]:
                    del indexes[key]
                cases = [(t, _needle_example(t, gen, examples)) for t in group]
                outcomes = _needle_outcomes(cases, gen, cfg, indexes)
                write([make_row(t, outcome, Reference.of_needle(ex, NEEDLE_DOC))
                       for (t, ex), outcome in zip(cases, outcomes)])
    if shard is None:
        write_report(out)
    return out


def _environment(cfg: EvalConfig, n: int, shard: tuple[int, int] | None) -> dict[str, Any]:
    """One line of ``runs.jsonl``: when, on what, and how many trials."""
    import platform

    import torch

    gpu = (cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    return {"date": time.strftime("%Y-%m-%d"), "config": cfg.name, "trials": n,
            "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
            "device": torch.cuda.get_device_name() if gpu else "CPU", "torch": torch.__version__,
            "python": platform.python_version()}


def _batches(todo: list[Trial], size: int) -> Iterator[list[Trial]]:
    """Consecutive trials of one attention (one generator), ``size`` at most per batch."""
    group: list[Trial] = []
    for t in todo:
        if group and (len(group) == size or t["attention"] != group[0]["attention"]):
            yield group
            group = []
        group.append(t)
    if group:
        yield group


def _needle_example(t: Trial, gen, examples: dict):
    """The needle example of trial ``t`` in ``gen``'s tokens, made once per cell, seed and index."""
    key = (_example_of(t), gen.tokenizer.kind)
    if key not in examples:
        task_key = ("task", t["haystack"], t["seed"], gen.tokenizer.kind)  # the haystack read once per seed
        if task_key not in examples:
            count = (lambda s, tok=gen.tokenizer: len(tok.encode(s, bos=False)))
            examples[task_key] = NeedleTask(t["haystack"], seed=t["seed"], count=count)
        examples[key] = examples[task_key].example(t.get("index", 0), length=t["length"], kind=t["kind"],
                                                   depth=t["depth"], unanswerable=t["unanswerable"])
    return examples[key]


def _needle_outcomes(cases: list, gen, cfg: EvalConfig, indexes: dict) -> list[Outcome | BaseException]:
    """What ``gen`` answered to each (trial, example): through QA for rag/full/auto (``ask_many`` when the config
    batches), the example's own prompt for direct; a RagctxError or an out-of-memory error is the trial's outcome."""
    from ..documents import Document
    from ..generator.train import needle_generation
    from ..qa import QA, ask_many

    outcomes: list[Outcome | BaseException | None] = [None] * len(cases)
    jobs, asked = [], []
    for i, (t, ex) in enumerate(cases):
        if t["mode"] == "direct":
            outcomes[i] = _attempt(lambda ex=ex: Outcome.of_generation(needle_generation(gen, ex)))
            continue
        idx_key = (_example_of(t), gen.tokenizer.kind, t["chunk_tokens"], t["overlap"])
        if idx_key not in indexes:
            indexes[idx_key] = _memory_index([Document.from_text(NEEDLE_DOC, ex.context)], t, cfg)
        qa = QA(indexes[idx_key], gen, max_new_tokens=cfg.max_new_tokens, retrieval=cfg.retrieval[0])
        jobs.append((qa, ex.question, {"mode": t["mode"], "k": t["k"] or 5}))
        asked.append(i)
    if cfg.batch == 1:  # one at a time: each trial's own timings and peak memory
        answers = [_attempt(lambda job=job: job[0].ask(job[1], **job[2])) for job in jobs]
    else:
        answers = ask_many(jobs, batch_size=cfg.batch)
    for i, answer in zip(asked, answers):
        outcomes[i] = answer if isinstance(answer, BaseException) else Outcome.of_answer(answer)
    return outcomes  # type: ignore[return-value]


def _attempt(run: Callable[[], Any]) -> Any:
    """``run()``, with a RagctxError or an out-of-memory error returned as the trial's outcome (as ask_many does)."""
    try:
        return run()
    except RagctxError as e:  # e.g. full context longer than the generator's window
        return e
    except (RuntimeError, MemoryError) as e:
        if not is_out_of_memory(e):
            raise
        release_memory()
        return e


def _memory_index(documents: list, t: dict[str, Any], cfg: EvalConfig):
    """An unsaved index over ``documents`` with the trial's chunking (the embedder is shared across trials)."""
    from ..chunking import ChunkConfig
    from ..embeddings import shared_embedder
    from ..index import Index

    index = Index(embedder=shared_embedder(device=cfg.device), chunking=ChunkConfig(t["chunk_tokens"], t["overlap"]),
                  device=cfg.device)
    index.add(documents, progress=False)
    return index


def _qa_row(t: Trial, item: dict[str, Any], gen, cfg: EvalConfig, indexes: dict, out: Path) -> Row:
    """The row of one QA-file trial (see :mod:`ragctx.evaluation.qa_tasks`). The corpus index of each chunking is
    built once and kept in the run folder (``index-C-O``), so a resumed run does not embed again."""
    from ..documents import Document
    from .qa_tasks import ask_question

    if "documents" in item:
        key: tuple = (item["qid"], t["chunk_tokens"], t["overlap"])
    else:
        key = (item.get("index") or cfg.corpus, t["chunk_tokens"], t["overlap"])
    if key not in indexes:
        if "documents" in item:
            if len(indexes) > 8:  # per-question documents: keep a few indexes, not one per question
                indexes.clear()
            docs = [Document.from_text(str(d["id"]), d["text"]) for d in item["documents"]]
            indexes[key] = (_memory_index(docs, t, cfg), None)
        else:
            indexes[key] = (_corpus_index(item.get("index") or cfg.corpus, t, cfg, out), None)
    index, tokens = indexes[key]
    if tokens is None:  # the corpus's length in this generator's tokens, counted once (it decides what full reads)
        from ..qa import Citation, join_pieces

        text, _ = join_pieces([Citation(c.doc_id, c.start, c.end, c.text, None, (c.ordinal, c.ordinal))
                               for c in index.document_chunks()])  # overlaps merged: each document once
        tokens = len(gen.tokenizer.encode(text, bos=False))
        indexes[key] = (index, tokens)
    asked = _attempt(lambda: ask_question(t, item, gen, index, cfg, tokens))
    if isinstance(asked, BaseException):
        return make_row(t, asked, Reference.of_question(item))
    answer, measured = asked
    return make_row(t, Outcome.of_answer(answer), Reference.of_question(item), **measured)


def _corpus_index(spec: str, t: dict[str, Any], cfg: EvalConfig, out: Path):
    """A saved index (a folder holding manifest.json) as it is, or an index over a documents spec (a folder, a
    file, builtin:essays) with the trial's chunking, saved under the run folder and reused."""
    from ..data import resolve_docs
    from ..documents import load_path
    from ..index import Index

    if (Path(spec) / "manifest.json").is_file():  # the embedder loads when a dense search first needs it
        return Index.load(spec, device=cfg.device)
    # named by its chunking and, for a corpus other than the config's, by the spec: two corpora never share one
    tag = "" if spec == cfg.corpus else "-" + hashlib.sha1(str(Path(spec).resolve()).encode()).hexdigest()[:8]
    folder = out / f"index-{t['chunk_tokens']}-{t['overlap']}{tag}"
    if (folder / "manifest.json").is_file():
        return Index.load(folder, device=cfg.device)
    report = load_path(resolve_docs(spec))
    if not report.documents:
        raise RagctxError(f"eval config: corpus '{spec}' holds no usable documents")
    index = _memory_index(report.documents, t, cfg)
    index.save(folder)
    return index
