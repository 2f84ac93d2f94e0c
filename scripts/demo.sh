#!/usr/bin/env bash
# Set up (if needed) and run the end-to-end demo on the synthetic corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
s3kit demo "$@"
