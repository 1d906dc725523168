#!/usr/bin/env bash
# Trains the four built-in generators at once, one per GPU (round-robin when fewer), on the GPU machine.
# Each run stops with a checkpoint after MINUTES; the same command again resumes every unfinished run.
# Then packs each run into $OUT/NAME.tar: logs, evaluations and the model in bf16 (the final one, or the
# latest checkpoint's weights when the run is not finished yet).
#
#   MINUTES=8.5 bash eval/train_builtins.sh
#   VARIANTS="softmax linear-elu" EXTRA=--smoke OUT=/tmp/o bash eval/train_builtins.sh   # CPU check
set -u
cd "$(dirname "$0")/.."
variants=(${VARIANTS:-softmax linear-elu sliding_window hybrid-taylor})
minutes=${MINUTES:-8.5}
out=${OUT:-eval/runs/out}
mkdir -p eval/runs "$out"
n=$(python3 -c 'import torch; print(max(1, torch.cuda.device_count()))')
i=0
for v in "${variants[@]}"; do
  CUDA_VISIBLE_DEVICES=$((i % n)) PYTHONUNBUFFERED=1 \
    python3 eval/train_builtin.py --variant "$v" --out "eval/runs/$v" --max-minutes "$minutes" ${EXTRA:-} \
    >>"eval/runs/$v.log" 2>&1 &
  i=$((i + 1))
done
wait
for v in "${variants[@]}"; do
  run="eval/runs/$v"
  if [ ! -d "$run/model" ] && [ -d "$run/checkpoint" ]; then  # unfinished: bring the checkpoint's weights
    python3 - "$run" <<'PY'
import sys, torch
from safetensors.torch import load_file, save_file
run = sys.argv[1]
w = load_file(f"{run}/checkpoint/model.safetensors")
save_file({k: v.to(torch.bfloat16) for k, v in w.items()}, f"{run}/checkpoint-bf16.safetensors")
PY
  fi
  tail -n 3 "eval/runs/$v.log"
  tar -cf "$out/$v.tar" -C eval/runs "$v.log" "$v/train.jsonl" "$v/eval.jsonl" "$v/train_config.json" \
    $(cd eval/runs && ls -d "$v/model" "$v/checkpoint-bf16.safetensors" "$v/checkpoint/state.json" 2>/dev/null)
done
ls -la "$out"
