from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ragctx.cli import main


@pytest.fixture()
def built(corpus, tmp_path, capsys):
    out = tmp_path / "idx"
    assert main(["index", "build", str(corpus), "--out", str(out), "--chunk-tokens", "64", "--overlap", "8",
                 "--device", "cpu"]) == 0
    return out, capsys.readouterr()


def test_build_over_mixed_folder_reports_skips_and_search_gives_exact_spans(built, corpus, capsys):
    out, captured = built
    assert "skipped 7" in captured.err and "badbom.txt: starts with a utf-16 byte-order mark" in captured.err
    assert "index saved to" in captured.out
    assert main(["search", str(out), "Which moon did the Kestrel-9 probe reach?", "-k", "2", "--json",
                 "--device", "cpu"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert hits[0]["doc_id"] == "notes/space.txt"
    text = (corpus / "notes/space.txt").read_text()
    assert text[hits[0]["start"] : hits[0]["end"]] == hits[0]["text"]
    assert main(["search", str(out), "museum ticket", "--mode", "hybrid", "--filter", "lang=en",
                 "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "faq-1" in printed and "faq-2" not in printed


def test_info_add_delete(built, tmp_path, capsys):
    out, _ = built
    assert main(["index", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "documents  8" in info and "Flat, 1 shard" in info
    more = tmp_path / "more"
    more.mkdir()
    (more / "owls.txt").write_text("Snowy owls hunt lemmings on the tundra.")
    assert main(["index", "add", str(out), str(more), "--device", "cpu"]) == 0
    assert "1 added" in capsys.readouterr().out
    assert main(["index", "add", str(out), str(more), "--device", "cpu"]) == 0
    assert "0 added, 0 updated, 1 unchanged" in capsys.readouterr().out
    assert main(["index", "delete", str(out), "owls.txt"]) == 0
    assert main(["index", "info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["counts"]["documents"] == 8


@pytest.mark.parametrize("argv,message", [
    (["search", "{idx}", "", "--device", "cpu"], "empty query"),
    (["search", "{idx}", "lava", "-k", "0", "--device", "cpu"], "positive number"),
    (["search", "{missing}", "lava"], "no such index"),
    (["search", "{docs}", "lava"], "not a ragctx index"),
    (["search", "{idx}", "lava", "--filter", "novalue", "--device", "cpu"], "KEY=VALUE"),
    (["index", "build", "{docs}", "--out", "{tmp}/x", "--factory", "Bogus"], "factory"),
    (["index", "build", "{docs}", "--out", "{tmp}/x", "--strict"], "bad.jsonl:2: invalid JSON"),
    (["index", "build", "{missing}", "--out", "{tmp}/x"], "no such file"),
    (["index", "build", "{docs}", "--out", "{tmp}/x", "--chunk-tokens", "4"], "too small"),
    (["index", "delete", "{idx}", "nope.txt"], "no such document"),
])
def test_bad_input_exits_2_with_one_line(built, corpus, tmp_path, capsys, argv, message):
    out, _ = built
    names = dict(idx=out, missing=tmp_path / "missing", docs=corpus, tmp=tmp_path)
    assert main([a.format(**names) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ragctx: error: ") and message in err[-1]
    assert not (tmp_path / "x").exists()


def test_console_script_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "ragctx", "search", str(tmp_path / "nope"), "q"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1
