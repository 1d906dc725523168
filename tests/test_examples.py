"""The examples run end to end (with a small saved model standing in for the built-in ones)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ragctx.generator import ByteTokenizer, Generator, ModelConfig, Transformer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ex")
    docs = root / "docs"
    docs.mkdir()
    (docs / "volcano.txt").write_text("Mount Zirkel erupted in 1842. The ash covered the valley.")
    (docs / "bakery.md").write_text("The bakery sells the Midnight Crust loaf. It opens at five.")
    torch.manual_seed(0)
    model = Generator(Transformer(ModelConfig.from_name("tiny", max_seq_len=1024)), ByteTokenizer()).save(root / "gen")
    return docs, model


@pytest.mark.parametrize("script,expect", [
    ("qa_over_folder.py", ["loaded 2 document(s)", "route:", "volcano.txt ["]),
    ("switch_attention.py", ["softmax", "flash", "linear", "sliding_window", "hybrid"]),
    ("force_modes.py", ["rag   route=rag", "full  route=full", "auto  route=rag"]),
    ("my_attention.py", ["my_softmax   '", "softmax      '"]),
])
def test_example_runs(setup, script, expect):
    docs, model = setup
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), str(docs), "When did Mount Zirkel erupt?",
                           "--generator", str(model), "--device", "cpu"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for text in expect:
        assert text in proc.stdout, (text, proc.stdout)
