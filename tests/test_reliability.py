"""Fault injection (issue 18): concurrent writers lose nothing, a save killed at any step leaves the old or the new
index (never neither, leftovers cleaned by the next writer), readers never see a half-written index, and every
failure is one clear error. The cases and their outcomes are listed in eval/reports/reliability.md."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ragctx import Document, Index, IndexFormatError, RagctxError, load_path
from ragctx.cli import main
from ragctx.index import MANIFEST, read_manifest
from ragctx.locks import lock_files, writer_lock

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def copy_index(built_index, tmp_path: Path) -> Path:
    path = tmp_path / "idx"
    shutil.copytree(built_index[0], path)
    return path


def doc_ids(path: Path) -> set[str]:
    return {c.doc_id for c in Index.load(path, device="cpu").store.document_chunks()}


def leftovers(path: Path) -> list[str]:
    return [p.name for p in path.parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def test_concurrent_writers_lose_no_document(built_index, tmp_path):
    """Four `ragctx index add` processes on one index at once: all exit 0 and every document of every writer is
    there afterwards (before the writer lock, the last writer won and the others' documents were lost)."""
    path = copy_index(built_index, tmp_path)
    before = doc_ids(path)
    writers = 4
    for w in range(writers):
        folder = tmp_path / f"docs{w}"
        folder.mkdir()
        for d in range(3):
            (folder / f"w{w}-d{d}.txt").write_text(f"Writer {w} wrote document {d} about topic {w * 10 + d}.")
    procs = [subprocess.Popen([sys.executable, "-m", "ragctx", "index", "add", str(path), str(tmp_path / f"docs{w}"),
                               "--device", "cpu"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(writers)]
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * writers, [err[-500:] for _, err in results]
    after = doc_ids(path)
    expected = before | {f"w{w}-d{d}.txt" for w in range(writers) for d in range(3)}
    assert after == expected  # lost: 0
    assert any("waiting for another process writing the index" in err for _, err in results)
    assert not leftovers(path)


def test_no_wait_refuses_while_another_process_writes(built_index, tmp_path, capsys):
    path = copy_index(built_index, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ragctx.locks import writer_lock\n"
                               f"with writer_lock({str(path)!r}):\n print('held', flush=True); time.sleep(30)"],
                              env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["index", "delete", str(path), "bakery.txt", "--no-wait"]) == 2
        assert "another process is writing the index" in capsys.readouterr().err
        with pytest.raises(RagctxError, match="another process is writing"):
            with Index.editing(path, wait=False):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert main(["index", "delete", str(path), "bakery.txt", "--no-wait"]) == 0  # the OS released the dead lock


KILL_AT = r"""
import os, shutil, sys, tempfile
import ragctx.index as ix, ragctx.store as st, ragctx.vectors as vx
step, count = int(sys.argv[2]), [0]
def die_at(fn):  # the process dies at the step-th file operation of the save: no finally, no cleanup
    def wrapped(*a, **k):
        count[0] += 1
        if count[0] == step:
            os._exit(17)
        return fn(*a, **k)
    return wrapped
index = ix.Index.load(sys.argv[1], device="cpu")
index.delete([sys.argv[3]])
os.rename, os.chmod, os.fsync, shutil.rmtree = map(die_at, (os.rename, os.chmod, os.fsync, shutil.rmtree))
tempfile.mkdtemp = die_at(tempfile.mkdtemp)
st.ChunkStore.save, vx.VectorIndex.save = die_at(st.ChunkStore.save), die_at(vx.VectorIndex.save)
index.save(sys.argv[1])
print(count[0])
"""


def test_a_save_killed_at_every_step_leaves_the_old_or_the_new_index(built_index, tmp_path):
    """The save's file operations (mkdtemp, chmod, the store, the shards, fsync, the renames, the removal of the old
    folder) are counted in one clean run; then a fresh copy is saved again and killed (os._exit) at each of them in
    turn. Every time `ragctx index info` and a load see the old or the new index, and the next save leaves no
    leftovers."""
    source = copy_index(built_index, tmp_path / "source")
    old = doc_ids(source)
    gone = sorted(old)[0]
    clean = subprocess.run([sys.executable, "-c", KILL_AT, str(source), "0", gone], env=ENV, capture_output=True,
                           text=True, timeout=120)
    steps = int(clean.stdout.strip())
    assert clean.returncode == 0 and steps >= 8
    for step in range(1, steps + 1):
        path = copy_index(built_index, tmp_path / f"step{step}")
        run = subprocess.run([sys.executable, "-c", KILL_AT, str(path), str(step), gone], env=ENV,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 17, (step, run.stderr[-300:])
        info = subprocess.run([sys.executable, "-m", "ragctx", "index", "info", str(path), "--json"], env=ENV,
                              capture_output=True, text=True, timeout=120)
        assert info.returncode == 0, (step, info.stderr)
        seen = doc_ids(path)
        assert seen in (old, old - {gone}), step
        assert json.loads(info.stdout)["counts"]["documents"] == len(seen)
        index = Index.load(path, device="cpu")
        index.delete([sorted(seen - {gone})[0]])
        index.save(path)  # the next writer cleans what the dead one left
        assert not leftovers(path), (step, leftovers(path))


def test_readers_never_see_a_missing_or_half_written_index(built_index, tmp_path):
    path = copy_index(built_index, tmp_path)
    writer = subprocess.Popen([sys.executable, "-c", "import sys\nfrom ragctx import Index\n"
                               "for i in range(25):\n"
                               "    index = Index.load(sys.argv[1], device='cpu')\n"
                               "    index.save(sys.argv[1])\n", str(path)], env=ENV)
    loads = 0
    try:
        while writer.poll() is None:
            assert read_manifest(path)["counts"]["chunks"] > 0
            assert len(Index.load(path, device="cpu")) > 0  # checksums verified: one version's files
            loads += 1
    finally:
        writer.wait(timeout=120)
    assert writer.returncode == 0 and loads > 0 and not leftovers(path)


# -- one clear error each --------------------------------------------------------------------------------------
def edit_manifest(path: Path, change) -> None:
    data = json.loads((path / MANIFEST).read_text())
    change(data)
    (path / MANIFEST).write_text(json.dumps(data))


@pytest.mark.parametrize("change,match", [
    (lambda m: m["embedder"].pop("name"), "'embedder.name' is None"),
    (lambda m: m["vectors"].pop("files"), "'vectors.files' is None"),
    (lambda m: m["vectors"].update(shards="two"), "'vectors.shards' is 'two', not a int"),
    (lambda m: m["counts"].update(chunks=None), "'counts.chunks'"),
    (lambda m: m.pop("chunking"), "lacks 'chunking'"),
])
def test_damaged_manifests_are_one_line_errors(built_index, tmp_path, capsys, change, match):
    path = copy_index(built_index, tmp_path)
    edit_manifest(path, change)
    with pytest.raises(IndexFormatError, match=match):
        Index.load(path, device="cpu")
    assert main(["index", "info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ragctx: error:")


def test_a_newer_manifests_extra_keys_do_not_stop_an_older_reader(built_index, tmp_path):
    path = copy_index(built_index, tmp_path)
    edit_manifest(path, lambda m: (m["chunking"].update(splitter="semantic-v2"), m.update(future={"x": 1})))
    assert len(Index.load(path, device="cpu", verify=False)) > 0


def test_a_full_disk_at_save_is_one_line_and_keeps_the_old_index(built_index, tmp_path, monkeypatch, capsys):
    import sqlite3

    from ragctx.store import ChunkStore

    path = copy_index(built_index, tmp_path)
    before = doc_ids(path)
    docs = tmp_path / "more"
    docs.mkdir()
    (docs / "new.txt").write_text("A new fact about herons and the wetlands they nest in.")

    def full(self, dest):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(ChunkStore, "save", full)
    assert main(["index", "add", str(path), str(docs), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "could not write the index" in err and "disk is full" in err and "unchanged" in err
    monkeypatch.undo()
    assert doc_ids(path) == before and not leftovers(path)


def test_checks_run_before_anything_is_embedded(tmp_path, monkeypatch, capsys, corpus):
    import ragctx.embeddings as embeddings

    def no_embedding(*args, **kwargs):
        raise AssertionError("embedded before the check")

    monkeypatch.setattr(embeddings.Embedder, "encode", no_embedding)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    assert main(["index", "build", str(corpus), "--out", str(tmp_path / "notes")]) == 2
    assert "not a ragctx index" in capsys.readouterr().err
    assert main(["index", "build", str(corpus), "--out", str(tmp_path / "ivf"), "--factory", "IVF4096,Flat",
                 "--device", "cpu"]) == 2
    assert "needs at least 4096 chunks" in capsys.readouterr().err
    import shutil as sh
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(sh, "disk_usage", lambda p: usage(10, 10, 0))
    assert main(["index", "build", str(corpus), "--out", str(tmp_path / "full"), "--device", "cpu"]) == 2
    assert "MiB free" in capsys.readouterr().err


def test_wrong_types_in_the_python_api_are_ragctx_errors(built_index):
    index = Index.load(built_index[0], device="cpu")
    with pytest.raises(RagctxError, match="Document objects, got str"):
        Index.build(["some text"])
    with pytest.raises(RagctxError, match="not str"):
        Index.build("some text")
    with pytest.raises(RagctxError, match="pass a dict"):
        index.search("volcano", filter="lang=en")
    with pytest.raises(RagctxError, match="pass the path"):
        load_path(None)
    with pytest.raises(RagctxError, match="empty path"):
        load_path("")


def test_silent_wrong_behaviour_is_gone(built_index, tmp_path, capsys):
    path = copy_index(built_index, tmp_path)
    index = Index.load(path, device="cpu")
    assert index.delete("volcano.md") == [] and "volcano.md" not in {c.doc_id for c in index.store.document_chunks()}
    assert main(["search", str(path), "ticket", "--filter", "nosuchkey=1", "--mode", "bm25"]) == 2
    assert "no document has such metadata" in capsys.readouterr().err
    numbered = Index.build([Document.from_text("a.txt", "Herons nest in wetlands.", year=2010)], device="cpu")
    numbered.save(tmp_path / "years")
    assert main(["search", str(tmp_path / "years"), "herons", "--filter", "year=2010", "--mode", "bm25"]) == 0
    assert "a.txt" in capsys.readouterr().out  # a number on the command line matches a number in the metadata


def test_a_pickled_embedder_folder_is_refused(tmp_path):
    from ragctx.embeddings import resolve_model

    (tmp_path / "emb").mkdir()
    (tmp_path / "emb" / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    (tmp_path / "emb" / "config.json").write_text("{}")
    with pytest.raises(RagctxError, match="pickled"):
        resolve_model(str(tmp_path / "emb"))


def test_oversized_max_new_tokens_is_a_clear_error(built_index, capsys):
    import torch

    from ragctx.generator import ByteTokenizer, Generator, ModelConfig, Transformer
    from ragctx.qa import QA

    torch.manual_seed(0)
    gen = Generator(Transformer(ModelConfig.from_name("tiny", max_seq_len=1024)), ByteTokenizer())
    qa = QA(Index.load(built_index[0], device="cpu"), gen, max_new_tokens=100000)
    with pytest.raises(RagctxError, match="max_new_tokens=100000 leaves no room"):
        qa.ask("When did Mount Zirkel erupt?")
    t = time.perf_counter()
    assert main(["ask", str(built_index[0]), "q", "--generator", "builtin:flash", "--max-new-tokens", "100000"]) == 2
    assert "leaves no room" in capsys.readouterr().err and time.perf_counter() - t < 60


@pytest.mark.parametrize("damage,match", [
    ("truncated", "not a readable safetensors file"), ("random", "not a readable safetensors file"),
    ("missing", "model.safetensors is missing"), ("json", "config.json is not valid JSON"),
    ("shapes", "do not match the config's shapes"),
])
def test_a_damaged_generator_folder_is_one_line(tmp_path, capsys, built_index, damage, match):
    import torch

    from ragctx.generator import ByteTokenizer, Generator, ModelConfig, Transformer

    torch.manual_seed(0)
    folder = Generator(Transformer(ModelConfig.from_name("tiny")), ByteTokenizer()).save(tmp_path / "gen")
    weights, config = folder / "model.safetensors", folder / "config.json"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "random":
        weights.write_bytes(os.urandom(4096))
    elif damage == "missing":
        weights.unlink()
    elif damage == "json":
        config.write_text("{not json")
    else:
        data = json.loads(config.read_text())
        data["model"]["dim"] = 128
        config.write_text(json.dumps(data))
    with pytest.raises(RagctxError, match=match):
        Generator.load(folder)
    assert main(["ask", str(built_index[0]), "q", "--generator", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and match.split()[0] in err


def test_threads_of_one_process_load_and_save_side_by_side(built_index, tmp_path):
    """The swap lock coordinates processes through a file; threads of one process take turns on it (a reader
    thread and a saving thread used to collide inside the lock library)."""
    import threading

    path = copy_index(built_index, tmp_path)
    errors: list[BaseException] = []

    def saves():
        try:
            for _ in range(10):
                Index.load(path, device="cpu").save(path)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    writer = threading.Thread(target=saves)
    writer.start()
    while writer.is_alive():
        assert len(Index.load(path, device="cpu")) > 0
    writer.join()
    assert not errors and not leftovers(path)


def test_lock_files_follow_the_umask_and_a_mistyped_path_leaves_none(built_index, tmp_path, capsys):
    path = copy_index(built_index, tmp_path)
    mask = os.umask(0o022)
    try:
        Index.load(path, device="cpu").save(path)
    finally:
        os.umask(mask)
    writer, swap = lock_files(path)
    assert (path.stat().st_mode & 0o777) == 0o755  # not mkdtemp's 0700: a shared index is readable
    assert (writer.stat().st_mode & 0o777) == 0o644 and (swap.stat().st_mode & 0o777) == 0o644
    assert main(["search", str(tmp_path / "typo"), "q"]) == 2
    capsys.readouterr()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".typo")]
