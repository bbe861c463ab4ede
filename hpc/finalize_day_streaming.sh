#!/usr/bin/env bash
# Runs after the day's job array (afterany): records the day's outcome and prints its summary.
# Submitted by process_day_streaming.sh; by hand: sbatch hpc/finalize_day_streaming.sh 2025-01-25
#SBATCH --job-name=stream_day_finalize
#SBATCH --cpus-per-task=1
#SBATCH --mem=1G
#SBATCH --time=00:10:00
#SBATCH --gres=none
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DATE" >&2; exit 2; }
echo "=== finalize $1 at $(date -Is) on $(hostname) job ${SLURM_JOB_ID:-}"
exec streaming-pipeline finalize-day "$1"
