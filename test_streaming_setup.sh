#!/usr/bin/env bash
# Validate this node before a big run, with the settings a run would use (PIPELINE_* variables):
#   PIPELINE_DSN=... PIPELINE_REMOTE=... PIPELINE_MODEL=/models/large-v3 ./test_streaming_setup.sh
# Runs `streaming-pipeline doctor --offline` (here, and inside the image when PIPELINE_CONTAINER is
# set), then `sbatch --test-only` of the worker when Slurm is here. Extra arguments go to doctor
# (e.g. --require-gpu on a GPU node). Exit 0 only when everything passed.
set -uo pipefail
cd "$(dirname "$(realpath "$0")")"
rc=0

echo "== streaming-pipeline doctor --offline $*"
streaming-pipeline doctor --offline "$@" || rc=1

if [ -n "${PIPELINE_CONTAINER:-}" ] && command -v apptainer >/dev/null; then
    echo "== the same inside $PIPELINE_CONTAINER"
    apptainer exec --nv "$PIPELINE_CONTAINER" streaming-pipeline doctor --offline "$@" || rc=1
fi

if command -v sbatch >/dev/null; then
    echo "== sbatch --test-only of the worker (PIPELINE_WORKER_SBATCH_ARGS: ${PIPELINE_WORKER_SBATCH_ARGS:-none})"
    read -ra extra <<<"${PIPELINE_WORKER_SBATCH_ARGS:-}"
    if out=$(sbatch --test-only "${extra[@]}" hpc/process_single_tar_streaming.sh 2000-01-01 /dev/null probe 2>&1); then
        echo "PASS  sbatch       $out"
    else
        echo "FAIL  sbatch       $out"
        echo "      hint: edit the #SBATCH lines of hpc/process_single_tar_streaming.sh or PIPELINE_WORKER_SBATCH_ARGS"
        rc=1
    fi
else
    echo "SKIP  sbatch       not a Slurm node"
fi

[ "$rc" -eq 0 ] && echo "node ready" || echo "node NOT ready: see the FAIL lines above"
exit "$rc"
