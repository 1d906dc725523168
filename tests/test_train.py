from __future__ import annotations

import json

import pytest
import torch

from ragctx import RagctxError
from ragctx.generator import Generator
from ragctx.generator.train import TrainConfig, _batch, train
from ragctx.generator.tokenizer import ByteTokenizer
from ragctx.tasks import NeedleTask

TINY = dict(model="tiny", lengths=(700, 900), tokens_per_step=2800, steps=25, lr=3e-3, warmup=5,
            eval_every=0, eval_examples=2, eval_lengths=(700,), haystack="repeat", device="cpu")


def test_batches_weigh_the_target_and_pad_on_the_right():
    import random

    tok = ByteTokenizer()
    cfg = TrainConfig(**{**TINY, "lm_weight": 0.1})
    ids, wts, is_target = _batch(NeedleTask("repeat", seed=0), random.Random(0), cfg, 700, 1, tok)
    assert ids.shape[0] == 4 and wts.shape == is_target.shape == (4, ids.shape[1] - 1)
    for row, w, t in zip(ids, wts, is_target):
        eos = (row == tok.eos_id).nonzero()[0].item()
        assert (row[eos + 1 :] == tok.pad_id).all() and (w[eos:] == 0).all()
        target = bytes(row[1:eos].tolist()).rsplit(b"Answer:", 1)[1]  # row[0] is <bos>
        assert (w[eos - len(target) - 1 : eos] == 1.0).all()  # every target byte and <eos> at full weight
        assert torch.allclose(w[: eos - len(target) - 1], torch.tensor(0.1))
        assert t.nonzero().flatten().tolist() == list(range(eos - len(target) - 1, eos))  # predictions of target


@pytest.mark.parametrize("attention", ["softmax", "linear"])
def test_training_lowers_the_loss_and_saves_a_loadable_model(tmp_path, attention):
    gen, log = train(TrainConfig(**TINY, attention=attention), tmp_path / attention)
    first = sum(r["loss"] for r in log[:5]) / 5
    last = sum(r["loss"] for r in log[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    folder = tmp_path / attention
    lines = (folder / "train.jsonl").read_text().splitlines()
    assert len(lines) == 25 and json.loads(lines[-1])["step"] == 25
    final = json.loads((folder / "eval.jsonl").read_text().splitlines()[-1])
    assert set(final["700"]) == {"accuracy", "unanswerable_recall", "false_unanswerable", "n", "by_kind"}
    loaded = Generator.load(folder / "model")
    assert loaded.attention == attention
    ids = list(range(60))  # weights are stored in bf16: logits agree to bf16 rounding
    torch.testing.assert_close(loaded.logits(ids), gen.logits(ids), atol=0.1, rtol=0.05)
    card = json.loads((folder / "model" / "config.json").read_text())
    assert card["training"]["config"]["attention"] == attention


def test_flash_is_trained_as_softmax(tmp_path):
    with pytest.raises(RagctxError, match="shares its weights"):
        train(TrainConfig(**TINY, attention="flash"), tmp_path)


def test_short_lengths_draw_only_kinds_that_fit_and_too_short_fails_up_front(tmp_path):
    import random

    cfg = TrainConfig(**{**TINY, "lengths": (300, 900)})
    ids, _, _ = _batch(NeedleTask("repeat", seed=0), random.Random(0), cfg, 300, 1, ByteTokenizer())
    assert ids.shape[0] == 9  # 2800 // 300 single-needle examples: the multi-needle kinds need more room
    with pytest.raises(RagctxError, match="length 200 is too short for every kind"):
        train(TrainConfig(**{**TINY, "lengths": (200, 900)}), tmp_path)
    assert not (tmp_path / "train.jsonl").exists()


def test_builtin_preset_fits_the_size_limit():
    from ragctx.generator import ModelConfig

    cfg = ModelConfig.from_name("builtin")
    assert cfg.n_params * 2 <= 8 * 2**20  # bf16 bytes


def test_a_stopped_run_resumes_to_the_same_weights(tmp_path):
    base = {**TINY, "steps": 8, "checkpoint_every": 0, "lm_weight": 0.1}
    whole, _ = train(TrainConfig(**base), tmp_path / "whole")
    partial, log = train(TrainConfig(**base, max_minutes=0.0), tmp_path / "split")  # stops after step 1
    assert len(log) == 1 and (tmp_path / "split" / "checkpoint" / "state.json").is_file()
    saved = json.loads((tmp_path / "split" / "model" / "config.json").read_text())  # usable, marked unfinished
    assert saved["training"]["stopped_at"] == 1
    resumed, log = train(TrainConfig(**base), tmp_path / "split")
    assert [r["step"] for r in log] == list(range(2, 9))
    assert len((tmp_path / "split" / "train.jsonl").read_text().splitlines()) == 8
    ids = list(range(80))
    torch.testing.assert_close(resumed.logits(ids), whole.logits(ids), atol=1e-5, rtol=1e-5)


def test_the_same_command_again_leaves_a_finished_run_as_it_is(tmp_path):
    base = {**TINY, "steps": 3, "checkpoint_every": 3, "eval_every": 0}
    _, log = train(TrainConfig(**base), tmp_path)
    assert len(log) == 3
    files = {name: (tmp_path / name).read_bytes() for name in ("train.jsonl", "eval.jsonl", "model/config.json")}
    again, log = train(TrainConfig(**base, max_minutes=5.0), tmp_path)  # another time budget: the same run
    assert log == []
    assert {name: (tmp_path / name).read_bytes() for name in files} == files  # final evaluation kept
    ids = list(range(80))
    saved = Generator.load(tmp_path / "model")  # the saved (bf16) weights, not retrained ones
    torch.testing.assert_close(again.logits(ids), saved.logits(ids))
    more, log = train(TrainConfig(**{**base, "steps": 4}), tmp_path)  # a longer schedule resumes from step 3
    assert [r["step"] for r in log] == [4]


def test_curriculum_grows_the_lengths():
    from ragctx.generator.train import lengths_at

    cfg = TrainConfig(lengths=(256, 1024, 4096, 16384), curriculum_steps=100)
    assert lengths_at(cfg, 0) == [256]
    assert lengths_at(cfg, 50) == [256, 1024]  # cap 2048 halfway (geometric)
    assert lengths_at(cfg, 99) == [256, 1024, 4096]
    assert lengths_at(cfg, 100) == [256, 1024, 4096, 16384]
    assert lengths_at(TrainConfig(lengths=(4096, 256)), 0) == [256, 4096]  # no curriculum: all of them


def test_a_second_stage_starts_from_saved_weights(tmp_path):
    first, _ = train(TrainConfig(**{**TINY, "steps": 3}), tmp_path / "first")
    ids = list(range(60))
    # lr 0: the second stage's model is the first one's, read back from its bf16 safetensors
    second, _ = train(TrainConfig(**{**TINY, "steps": 1, "lr": 0.0, "init": str(tmp_path / "first" / "model")}),
                      tmp_path / "second")
    stored = Generator.load(tmp_path / "first" / "model")
    torch.testing.assert_close(second.logits(ids), stored.logits(ids), atol=1e-4, rtol=1e-4)
    fresh, _ = train(TrainConfig(**{**TINY, "steps": 1, "lr": 0.0}), tmp_path / "fresh")
    assert not torch.allclose(fresh.logits(ids), stored.logits(ids), atol=1e-2)
    with pytest.raises(RagctxError, match="does not fit this model"):
        train(TrainConfig(**{**TINY, "model": "small", "steps": 1, "init": str(tmp_path / "first" / "model")}),
              tmp_path / "bad")
    with pytest.raises(RagctxError, match="no model.safetensors"):
        train(TrainConfig(**{**TINY, "steps": 1, "init": str(tmp_path)}), tmp_path / "bad2")
