#!/usr/bin/env bash
# The controller: finds <PIPELINE_INPUT_ROOT>/DATE/*.tar.xz for each day, registers them in
# PostgreSQL, and submits the ones not done as job arrays of process_single_tar_streaming.sh
# (split at the cluster's MaxArraySize, at most PIPELINE_MAX_PARALLEL at a time overall) plus a
# finalize job per day that runs after its archives.
#
#   sbatch hpc/process_day_streaming.sh 2025-01-25
#   sbatch hpc/process_day_streaming.sh 2025-01-01..2025-01-31 2025-02-03
#
# Resubmitting submits only what is not done. Needs `streaming-pipeline` and sbatch here
# (the workers may run in the Apptainer image named by PIPELINE_CONTAINER).
#SBATCH --job-name=stream_day
#SBATCH --cpus-per-task=1
#SBATCH --mem=2G
#SBATCH --time=00:15:00
#SBATCH --gres=none
#SBATCH --output=stream_day_%j.out
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 DATE|FIRST..LAST [...]" >&2; exit 2; }

# Under sbatch this file runs from a spool copy; the job's Command= is where it really lives.
here=$(dirname "$(realpath "${BASH_SOURCE[0]}")")
if [ -n "${SLURM_JOB_ID:-}" ]; then
    command=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null | sed -n 's/^ *Command=\(.*\)$/\1/p')
    command=${command% "$*"}  # Command= is the script's path followed by its arguments
    if [ -n "$command" ] && [ -f "$command" ]; then here=$(dirname "$(realpath "$command")"); fi
fi
echo "=== days $*: controller on $(hostname) at $(date -Is), job ${SLURM_JOB_ID:-none}"
exec streaming-pipeline process-day "$@" --executor slurm --hpc-dir "$here"
