#!/usr/bin/env bash
# Get the three sets of test recordings (docs/tests.md) into DIR and check every file's sha256
# against the manifest in the package (src/streaming_pipeline/tools/recordings.tsv).
#   scripts/get-test-recordings.sh DIR --from COPY   # a copy of the sets: a path, host:path or rsync://
#   scripts/get-test-recordings.sh DIR               # only what public repositories hold verbatim
set -euo pipefail
if [ $# -lt 1 ]; then
    echo "usage: $0 DIR [--from COPY]" >&2
    exit 2
fi
exec python3 -m streaming_pipeline.tools.recordings fetch "$@"
