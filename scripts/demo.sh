#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the offline demo: `lrs-plugin demo`. Extra arguments go to the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/lrs-plugin demo "$@"
