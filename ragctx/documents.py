"""Documents and loaders: .txt, .md, .html (visible text), .pdf (pypdf), .jsonl (one document per line).

A :class:`Document` has a stable id (its path relative to the folder it was found in, or the id given in a
.jsonl line), its text, and metadata (``source``, ``mtime``, ``sha256`` of the text, plus any metadata a .jsonl
line carries). Files that cannot be used (unreadable, binary, not UTF-8, empty, unsupported type) are skipped
with one reason each in a :class:`LoadReport`; ``strict=True`` turns the first of them into a
:class:`~ragctx.errors.DocumentError`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from .errors import DocumentError, RagctxError

__all__ = ["Document", "LoadReport", "load_documents", "load_path", "SUPPORTED_SUFFIXES"]


@dataclass(frozen=True)
class Document:
    """One document: ``id`` is stable across runs (relative path or given id)."""

    id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return self.metadata.get("sha256") or text_sha256(self.text)

    @classmethod
    def from_text(cls, id: str, text: str, **metadata: Any) -> Document:
        """Build a document from a string (metadata gets the text's sha256)."""
        return cls(id=id, text=text, metadata={**metadata, "sha256": text_sha256(text)})


@dataclass
class LoadReport:
    """What a load found: the documents, and one line per skipped file."""

    documents: list[Document] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)

    def summary(self) -> str:
        lines = [f"loaded {len(self.documents)} document(s), skipped {len(self.skipped)}"]
        lines += [f"  skipped {path}: {reason}" for path, reason in self.skipped]
        return "\n".join(lines)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class _Skip(Exception):
    """A file that is skipped (or, in strict mode, an error) for the reason given."""


def _read_utf8(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise _Skip(f"unreadable ({e.strerror or e})") from e
    if b"\x00" in raw[:8192]:
        raise _Skip("binary file (NUL bytes)")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _Skip(f"not UTF-8 (bad byte at offset {e.start}); convert it to UTF-8") from e
    return text


class _VisibleText(HTMLParser):
    """Collects the text a browser would show: no script/style/head content; block tags become line breaks."""

    HIDDEN = {"script", "style", "head", "title", "noscript", "template", "svg", "iframe", "object"}
    BLOCK = {"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header", "footer",
             "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "hr", "dd", "dt", "nav", "main"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self.HIDDEN:
            self.hidden_depth += 1
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.HIDDEN:
            self.hidden_depth = max(0, self.hidden_depth - 1)
        elif tag in self.BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.hidden_depth:
            self.parts.append(data)

    def text(self) -> str:
        lines = (" ".join(line.split()) for line in "".join(self.parts).splitlines())
        out, blank = [], False
        for line in lines:  # collapse runs of empty lines into one paragraph break
            if line:
                out.append(line)
                blank = False
            elif not blank and out:
                out.append("")
                blank = True
        return "\n".join(out).strip()


def _html_text(path: Path) -> str:
    parser = _VisibleText()
    parser.feed(_read_utf8(path))
    parser.close()
    return parser.text()


def _pdf_text(path: Path) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PyPdfError

    try:
        reader = PdfReader(str(path))
        if reader.is_encrypted:
            raise _Skip("encrypted PDF; decrypt it first")
        return "\n\n".join((page.extract_text() or "").strip() for page in reader.pages).strip()
    except _Skip:
        raise
    except (PyPdfError, OSError, ValueError, KeyError, TypeError) as e:
        raise _Skip(f"unreadable PDF ({type(e).__name__}: {e})") from e


_TEXT_READERS: dict[str, Callable[[Path], str]] = {
    ".txt": _read_utf8,
    ".md": _read_utf8,
    ".markdown": _read_utf8,
    ".html": _html_text,
    ".htm": _html_text,
    ".pdf": _pdf_text,
}
SUPPORTED_SUFFIXES = tuple(sorted([*_TEXT_READERS, ".jsonl"]))


def _file_metadata(path: Path, text: str) -> dict[str, Any]:
    st = path.stat()
    return {"source": str(path), "mtime": st.st_mtime, "sha256": text_sha256(text)}


def _jsonl_documents(path: Path, report: LoadReport, strict: bool) -> Iterator[Document]:
    text = _read_utf8(path)
    mtime = path.stat().st_mtime
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise _Skip("a line must be a JSON object with 'id' and 'text'")
            doc_id, body = row.get("id"), row.get("text")
            if not isinstance(doc_id, (str, int)) or str(doc_id) == "":
                raise _Skip("missing 'id' (a non-empty string)")
            if not isinstance(body, str):
                raise _Skip("missing 'text' (a string)")
            if not body.strip():
                raise _Skip("empty text")
            meta = row.get("metadata") or {}
            if not isinstance(meta, dict):
                raise _Skip("'metadata' must be a JSON object")
        except (json.JSONDecodeError, _Skip) as e:
            reason = f"invalid JSON ({e.msg})" if isinstance(e, json.JSONDecodeError) else str(e)
            if strict:
                raise DocumentError(f"{where}: {reason}") from e
            report.skipped.append((where, reason))
            continue
        yield Document(str(doc_id), body, {**meta, "source": where, "mtime": mtime, "sha256": text_sha256(body)})


def _walk(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def load_path(path: str | os.PathLike[str], *, strict: bool = False) -> LoadReport:
    """Load one file, or every file under a folder (recursively, hidden entries skipped).

    Document ids are paths relative to ``path`` when it is a folder (POSIX separators), the file name when it is
    a file, and the given ``id`` for .jsonl lines. Duplicate ids are skipped after the first.
    """
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise RagctxError(f"load_path({path!r}): pass the path of a file or folder of documents (an empty path would "
                          "mean the current folder: pass '.' if that is what you want)")
    root = Path(path)
    if not root.exists():
        raise RagctxError(f"{root}: no such file or folder; pass the folder that holds your documents")
    files = [root] if root.is_file() else list(_walk(root))
    report = LoadReport()
    seen: set[str] = set()
    for file in files:
        rel = file.name if root.is_file() else file.relative_to(root).as_posix()
        try:
            suffix = file.suffix.lower()
            if suffix == ".jsonl":
                docs: Iterable[Document] = _jsonl_documents(file, report, strict)
            elif suffix in _TEXT_READERS:
                text = _TEXT_READERS[suffix](file)
                if not text.strip():
                    raise _Skip("empty (no text)")
                docs = [Document(rel, text, _file_metadata(file, text))]
            else:
                raise _Skip(f"unsupported type '{suffix or '(none)'}' (supported: {', '.join(SUPPORTED_SUFFIXES)})")
            for doc in docs:
                if doc.id in seen:
                    where = doc.metadata.get("source", str(file))
                    if strict:
                        raise DocumentError(f"{where}: duplicate document id '{doc.id}'")
                    report.skipped.append((where, f"duplicate document id '{doc.id}'"))
                    continue
                seen.add(doc.id)
                report.documents.append(doc)
        except _Skip as e:
            if strict:
                raise DocumentError(f"{file}: {e}") from e
            report.skipped.append((str(file), str(e)))
    return report


def load_documents(path: str | os.PathLike[str], *, strict: bool = False) -> list[Document]:
    """The documents of :func:`load_path`, without the report."""
    return load_path(path, strict=strict).documents
