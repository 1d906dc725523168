from __future__ import annotations

import pytest

from ragctx import DocumentError, RagctxError, load_path
from tests.conftest import FACTS


def test_loads_every_supported_type_and_skips_broken_files(corpus):
    report = load_path(corpus)
    ids = {d.id for d in report.documents}
    assert ids == set(FACTS) | {"report.pdf", "faq-1", "faq-2", "ok-1"}
    skipped = {path.split("/")[-1]: reason for path, reason in report.skipped}
    assert "empty" in skipped["empty.txt"]
    assert "not utf-16" in skipped["badbom.txt"]
    assert "binary" in skipped["binary.txt"]
    assert "unsupported type '.png'" in skipped["image.png"]
    assert "PDF" in skipped["broken.pdf"]
    assert sum("bad.jsonl" in p for p, _ in report.skipped) == 2  # one bad JSON line, one without text
    assert len(report.summary().splitlines()) == 1 + len(report.skipped)


def test_document_text_and_metadata(corpus):
    docs = {d.id: d for d in load_path(corpus).documents}
    html = docs["notes/chess.html"].text
    assert "Marrakesh Gambit" in html and "Chess" in html
    assert "secret" not in html and "Hidden title" not in html and "color" not in html
    assert "Lindqvist turbine produces 40 megawatts" in docs["report.pdf"].text
    assert docs["bakery.txt"].text == FACTS["bakery.txt"]  # CRLF kept verbatim: offsets refer to the file
    meta = docs["volcano.md"].metadata
    assert meta["source"].endswith("volcano.md") and len(meta["sha256"]) == 64 and meta["mtime"] > 0
    assert docs["faq-2"].metadata["lang"] == "de"


def test_strict_mode_turns_the_first_problem_into_an_error(corpus):
    with pytest.raises(DocumentError, match="bad.jsonl"):
        load_path(corpus, strict=True)


def test_single_file_and_missing_path(tmp_path):
    f = tmp_path / "one.txt"
    f.write_text("hello")
    assert [d.id for d in load_path(f).documents] == ["one.txt"]
    with pytest.raises(RagctxError, match="no such file"):
        load_path(tmp_path / "nope")


def test_duplicate_jsonl_ids_are_skipped(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"id": "d", "text": "one"}\n{"id": "d", "text": "two"}\n')
    report = load_path(tmp_path)
    assert [d.text for d in report.documents] == ["one"]
    assert "duplicate" in report.skipped[0][1]


def test_a_built_in_corpus_loads_by_name():
    """load_path takes the names the CLI takes (the README's Python quickstart starts with the packaged essays)."""
    from ragctx.data import essays_dir

    report = load_path("builtin:essays")
    by_id = {d.id: d for d in report.documents}
    assert len(by_id) == len(list(essays_dir().glob("*.txt"))) > 40
    assert by_id["bias.txt"].text == (essays_dir() / "bias.txt").read_text(encoding="utf-8")
    with pytest.raises(RagctxError, match="builtin:essays"):
        load_path("builtin:poems")
