#!/usr/bin/env bash
# The main job on this machine with embedded defaults: a generated sample day, a tiny generated
# Whisper model, a private PostgreSQL in .demo/postgres and a local directory as destination.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec streaming-pipeline demo "$@"
