from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test must never reach a hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "RAGCTX_CACHE" not in os.environ:  # derived files (ONNX export, GGUF tokenizers) go to a folder of this run
    import tempfile

    os.environ["RAGCTX_CACHE"] = tempfile.mkdtemp(prefix="ragctx-test-cache-")

FACTS = {
    "volcano.md": "# Volcanoes\n\nMount Zirkel erupted in 1842 and buried the village of Ostrava-Kel under ash. "
    "Geologists measured the lava at 1,150 degrees Celsius.\n\nThe crater lake is green.",
    "bakery.txt": "The bakery on Quince Street sells a sourdough loaf called the Midnight Crust for 7 dollars. "
    "It opens at five in the morning.\r\n\r\nIts owner, Hedda Lund, trained in Copenhagen.",
    "notes/space.txt": "The probe Kestrel-9 reached Saturn's moon Enceladus after a flight of eleven years. "
    "Its spectrometer found salt water plumes.",
    "notes/chess.html": "<html><head><title>Hidden title</title><script>var secret = 'do not index';</script>"
    "</head><body><h1>Chess</h1><p>The Marrakesh Gambit sacrifices a rook on move nine.</p>"
    "<style>p {color: red}</style></body></html>",
}


def minimal_pdf(text: str) -> bytes:
    """A valid one-page PDF showing ``text`` in Helvetica (no PDF writer needed)."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def hedgehog_case(b, hq, hkv, d, p, window, t, pad, dtype, seed, device, chunk_size=64):
    """A learned-map hybrid layer's inputs for the Triton kernel tests: (cfg, maps, q, k, v, valid, positions) on
    ``device`` in ``dtype``, the maps' parameters drawn far from their start, ``pad`` left padding in row 1."""
    import torch

    from ragctx.generator.attention.learned import FeatureMaps
    from ragctx.generator.config import ModelConfig

    cfg = ModelConfig(dim=hq * d, n_heads=hq, n_kv_heads=hkv, head_dim=d, window=window, attention="hybrid",
                      hybrid_feature_map="hedgehog", hedgehog_dim=p, chunk_size=chunk_size)
    torch.manual_seed(seed)
    maps = FeatureMaps(hq, hkv, d, p)
    with torch.no_grad():
        for prm in maps.parameters():
            prm.normal_(0, 0.3)
    maps = maps.to(device, dtype)
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t, d, generator=g) for h in (hq, hkv, hkv))
    valid = torch.ones(b, t, dtype=torch.bool)
    if b > 1 and pad:
        valid[1, :pad] = False
    positions = (valid.long().cumsum(1) - 1).clamp_min(0)
    to = lambda x: x.to(device, dtype) if x.is_floating_point() else x.to(device)  # noqa: E731
    return cfg, maps, *(to(x) for x in (q, k, v, valid, positions))


def write_corpus(root: Path, *, broken: bool = True) -> Path:
    """A folder of mixed documents with planted facts; with ``broken``, also files that must be skipped."""
    for rel, text in FACTS.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode())
    (root / "report.pdf").write_bytes(minimal_pdf("The Lindqvist turbine produces 40 megawatts at full load."))
    (root / "extra.jsonl").write_text(
        '{"id": "faq-1", "text": "The museum ticket costs 12 euros on weekdays.", "metadata": {"lang": "en"}}\n'
        '{"id": "faq-2", "text": "Das Museum ist montags geschlossen.", "metadata": {"lang": "de"}}\n'
    )
    if broken:
        (root / "empty.txt").write_text("   \n")
        (root / "badbom.txt").write_bytes(b"\xff\xfe" + "caf\xe9".encode("utf-16-le") + b"\x00")  # odd length
        (root / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00binary")
        (root / "binary.txt").write_bytes(b"abc\x00\x01\x02def")
        (root / "broken.pdf").write_bytes(b"%PDF-1.4\nthis is not really a pdf")
        (root / "bad.jsonl").write_text('{"id": "ok-1", "text": "A fine line about otters."}\nnot json\n{"id": "x"}\n')
    return root


@pytest.fixture(scope="session")
def embedder():
    from ragctx.embeddings import Embedder

    return Embedder(device="cpu")


@pytest.fixture(scope="module")
def tiny_generator():
    """An untrained tiny byte-level Generator (seeded), one per test module: QA's mechanics without a real model."""
    import torch

    from ragctx.generator import ByteTokenizer, Generator, ModelConfig, Transformer

    torch.manual_seed(0)
    return Generator(Transformer(ModelConfig.from_name("tiny", max_seq_len=1024)), ByteTokenizer())


@pytest.fixture()
def corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "docs")


@pytest.fixture(scope="session")
def built_index(tmp_path_factory, embedder):
    """One index over the clean corpus, saved; tests that change an index load their own copy."""
    from ragctx import Index, load_documents
    from ragctx.chunking import ChunkConfig

    root = write_corpus(tmp_path_factory.mktemp("docs"), broken=False)
    index = Index.build(load_documents(root), embedder=embedder, chunking=ChunkConfig(64, 8), device="cpu")
    path = index.save(tmp_path_factory.mktemp("idx") / "facts")
    return path, root
