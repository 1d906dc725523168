"""The trial/row schema (ragctx.evaluation.results): the resume key, the one function that makes every row, and
eval/eval_builtin.py as a config of the runner (its grid, and the migration of its old rows)."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch

from ragctx import RagctxError
from ragctx.evaluation import EvalConfig
from ragctx.evaluation.results import (
    Outcome,
    Reference,
    Row,
    make_row,
    pending,
    trial_id,
    trial_key,
)
from ragctx.evaluation.runner import load_config, trials
from ragctx.tasks import NeedleTask

ROOT = Path(__file__).resolve().parents[1]


def needle(**kw) -> dict:
    return {"length": 300, "depth": 0.5, "kind": "single", "seed": 0, "unanswerable": False, "chunk_tokens": 32,
            "overlap": 4, "attention": "softmax", "mode": "rag", "k": 2, "generator": "g", "haystack": "repeat",
            "index": 0, **kw}


QA_SETTINGS = {"corpus": None, "focus": "auto", "refusal_threshold": None, "bos": None, "max_new_tokens": 48,
               "full_truncate": None, "options": {}, "dtype": None, "max_seq_len": None}


def question(**kw) -> dict:
    return {"qa_file": "qa.jsonl", "qid": "q1", "chunk_tokens": 200, "overlap": 32, "retrieval": "bm25",
            "attention": "flash", "mode": "rag", "k": 5, "generator": "smollm2", "settings": dict(QA_SETTINGS),
            "length": None, "depth": -1.0, **kw}


def test_the_key_is_the_defining_fields_read_from_rows_of_any_age():
    t = needle()
    row = {**t, "id": "stale", "status": "ok", "prediction": "x", "accuracy": 1.0, "batch": 4, "date": "2026-01-01",
           "a_field_added_later": True}
    assert trial_key(row) == trial_key(t)  # outcome, a stale id and fields outside the key do not count
    for change in ({"length": 600}, {"attention": "linear"}, {"mode": "full", "k": None}, {"index": 1},
                   {"haystack": "essays"}, {"settings": {"retrieval": "bm25", "options": {}}}):
        assert trial_key({**t, **change}) != trial_key(t), change
    before_index = {k: v for k, v in t.items() if k != "index"}  # rows written before `index`: example 0
    assert trial_key(before_index) == trial_key(t)
    assert trial_key({**t, "settings": {"retrieval": "dense", "options": {}}}) == trial_key(t)  # the defaults
    # the id of a row written before the key was named: the hash of its parameters, as it was written
    assert trial_id(t) == hashlib.sha1(json.dumps(before_index, sort_keys=True).encode()).hexdigest()[:16]
    with pytest.raises(RagctxError, match="lacks a field"):
        trial_id({k: v for k, v in t.items() if k != "length"})


def test_a_qa_row_from_before_settings_were_recorded_is_run_again():
    t = question()
    assert trial_key({**t, "kind": "multi", "split": "test", "status": "ok"}) == trial_key(t)
    assert trial_key({**t, "settings": {**QA_SETTINGS, "max_new_tokens": 3}}) != trial_key(t)
    unsettled = {k: v for k, v in t.items() if k != "settings"}
    assert trial_key(unsettled) is None  # what it ran with is unknown: it matches no trial
    assert pending([t], [unsettled]) == [t]


def test_pending_skips_finished_trials_only():
    a, b = needle(), needle(length=600)
    assert pending([a, b], [{**a, "status": "error", "error": "too long"}]) == [b]  # an error counts as done
    assert pending([a, b], []) == [a, b]


def test_needle_and_qa_rows_are_made_by_one_function_with_one_schema():
    ex = NeedleTask("repeat", seed=0).example(0, length=400)
    start, end = ex.needle_spans[0]
    read = [("context", start, end)]
    answer = Outcome(f" {ex.answers[0]}", "rag", False, 120, {"retrieve_s": 0.1, "prefill_s": 0.2, "decode_s": 0.3},
                     1024, cited=read, read=read, retrieved=read)
    needle_row = make_row(needle(), answer, Reference.of_needle(ex))
    item = {"qid": "q1", "answers": ["Ada"], "kind": "single", "split": "test",
            "evidence": [{"doc_id": "a.txt", "start": 0, "end": 40}]}
    qa_row = make_row(question(), Outcome("It was Ada.", "rag", False, 90, {"prefill_s": 0.1}, None,
                                          cited=[("a.txt", 0, 20)], read=[("a.txt", 0, 20)], retrieved=[("b", 0, 9)]),
                      Reference.of_question(item), total_s=0.5, full_scope="corpus")
    schema = set(Row.__annotations__)
    assert set(needle_row) <= schema and set(qa_row) <= schema
    common = {"status", "prediction", "answers", "route", "accuracy", "refused", "retrieval_recall", "input_tokens",
              "peak_memory_bytes", "prefill_s"}
    assert common <= set(needle_row) and common <= set(qa_row)
    assert needle_row["accuracy"] == 1.0 and needle_row["retrieval_recall"] == 1.0 and not needle_row["refused"]
    assert qa_row["accuracy"] == 1.0 and qa_row["retrieval_recall"] == 0.0 and qa_row["passage_recall"] == 1.0
    assert qa_row["citation_precision"] == 1.0 and qa_row["kind"] == "single" and qa_row["total_s"] == 0.5
    assert make_row(question(), RagctxError("too long"), Reference.of_question(item))["status"] == "error"
    oom = make_row(needle(), torch.OutOfMemoryError("CUDA out of memory.\nmore"), Reference.of_needle(ex))
    assert oom["status"] == "oom" and oom["error"] == "CUDA out of memory."
    unanswerable = NeedleTask("repeat", seed=0).example(0, length=400, unanswerable=True)
    said = make_row(needle(unanswerable=True, mode="direct"),
                    Outcome.of_generation(type("G", (), {"text": " Unanswerable", "prompt_tokens": 99,
                                                         "prefill_s": 0.1, "decode_s": 0.2})()),
                    Reference.of_needle(unanswerable))
    assert said["accuracy"] == 1.0 and said["refused"] and said["route"] == "direct"
    assert said["retrieval_recall"] is None and said["input_tokens"] == 99


def test_parts_and_needle_modes_are_checked():
    with pytest.raises(RagctxError, match="a part sets \\['out'\\]"):
        EvalConfig(parts=[{"out": "elsewhere"}])
    with pytest.raises(RagctxError, match="kind 'haystack'"):
        EvalConfig(parts=[{"kinds": ["haystack"]}])
    with pytest.raises(RagctxError, match="modes \\['gold2'\\] are unknown for needle tasks"):
        EvalConfig(modes=["gold2"])
    with pytest.raises(RagctxError, match="examples 0"):
        EvalConfig(examples=0)


def test_the_builtin_needles_config_is_the_old_scripts_grid():
    cfg = load_config(ROOT / "eval/configs/builtin-needles.json")
    ts = trials(cfg)
    # per model and haystack: 4 lengths x 30 single + 2 x 3 kinds x 30 + 2 x 20 long, absent keys 4 x 30 + 2 x 10
    assert len(ts) == 4 * 2 * (120 + 180 + 40 + 120 + 20)
    assert {t["mode"] for t in ts} == {"direct"} and {t["chunk_tokens"] for t in ts} == {None}
    assert len({t["id"] for t in ts}) == len(ts)


def test_old_eval_builtin_rows_migrate_to_trials_of_the_config(tmp_path):
    sys.path.insert(0, str(ROOT))
    from eval.eval_builtin import migrate

    old = [{"model": "softmax", "haystack": "repeat", "length": 512, "kind": "single", "answerable": True, "index": 3,
            "depth": 0.4, "prediction": " 6357092", "target": " 6357092", "score": 1.0, "said_unanswerable": False,
            "date": "2026-12-01"},
           {"model": "linear", "haystack": "essays", "length": 8192, "kind": "single", "answerable": False,
            "index": 0, "depth": 0.9, "prediction": " 1234", "target": " unanswerable", "score": 0.0,
            "said_unanswerable": False, "date": "2026-12-01"}]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    (tmp_path / "summary.json").write_text(json.dumps({"meta": {"date": "2026-12-01", "device": "CPU",
                                                                "torch": "2.13.0+cpu"}, "rows": []}))
    assert migrate(tmp_path) == 2 and migrate(tmp_path) == 0  # runner rows are left as they are
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert [r["attention"] for r in rows] == ["flash", "linear"] and rows[1]["answers"] == ["unanswerable"]
    grid = trials(load_config(ROOT / "eval/configs/builtin-needles.json"))
    assert len(pending(grid, rows)) == len(grid) - 2  # both are trials of the config, found done
    assert json.loads((tmp_path / "runs.jsonl").read_text())["device"] == "CPU"
