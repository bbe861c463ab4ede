#!/usr/bin/env bash
# One archive of a day: stream, convert, transcribe, upload, with progress in PostgreSQL.
#
#   sbatch hpc/process_single_tar_streaming.sh 2025-01-25 /data/2025-01-25/12_30.tar.xz 12_30
#   (as a task of a job array, process-day passes: --manifest FILE, whose line TASK+1 is
#    DATE<TAB>SLOT<TAB>TAR)
#
# Settings come from PIPELINE_* variables (sbatch exports the submitting environment).
# Its log: $PIPELINE_LOG_DIR/stream_tar_<DATE>_<SLOT>_<jobid>.out, appended across requeues.
#
# Defaults for a GPU node; edit them for your cluster, or override per run on the sbatch command
# line (PIPELINE_WORKER_SBATCH_ARGS for the day's workers), e.g. on CPU-only nodes:
#   PIPELINE_WORKER_SBATCH_ARGS="--gres=none --cpus-per-task=4 --mem=8G"
#SBATCH --job-name=stream_tar
#SBATCH --cpus-per-task=12         # CPU for a GPU at ~1000x realtime (bench --feed-only: ~100x a core; docs/performance.md)
#SBATCH --mem=96G                  # model, one decoded batch, conversion workers; flat in archive size
#SBATCH --time=02:00:00            # a longer slot is fine: the job requeues itself and resumes
#SBATCH --gres=gpu:1               # faster-whisper on one GPU
#SBATCH --signal=B:USR1@120        # 2 min before the limit: stop cleanly, record state, requeue
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=stream_tar_%j.slurm.out   # only what happens before the job log below is opened
set -euo pipefail

usage() {
    echo "usage: $0 DATE TAR SLOT | --manifest FILE (as an array task)" >&2
    exit 2
}
if [ $# -eq 2 ] && [ "$1" = --manifest ]; then
    [ -n "${SLURM_ARRAY_TASK_ID:-}" ] || { echo "--manifest needs SLURM_ARRAY_TASK_ID" >&2; exit 2; }
    line=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" "$2")
    [ -n "$line" ] || { echo "no task $SLURM_ARRAY_TASK_ID in $2" >&2; exit 2; }
    IFS=$'\t' read -r date slot tar <<<"$line"
elif [ $# -eq 3 ]; then
    date=$1
    tar=$2
    slot=$3
else
    usage
fi

if [ -n "${SLURM_ARRAY_JOB_ID:-}" ]; then
    job_id=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
else
    job_id=${SLURM_JOB_ID:-local-$$}
fi
log_dir=${PIPELINE_LOG_DIR:-logs}
mkdir -p "$log_dir"
exec >>"$log_dir/stream_tar_${date}_${slot}_${job_id}.out" 2>&1
echo "=== start $(date -Is) on $(hostname) job $job_id (restart ${SLURM_RESTART_COUNT:-0}): $tar as $slot"

cmd=(streaming-pipeline process-tar "$date" "$tar" "$slot")
if [ -n "${PIPELINE_CONTAINER:-}" ]; then
    # Input, scratch, logs and a model directory must be visible inside the image (same paths);
    # --nv brings the host's GPU driver.
    binds=$(dirname "$(realpath "$tar")")
    for dir in "${PIPELINE_SCRATCH:-${TMPDIR:-/tmp}}" "$log_dir"; do
        mkdir -p "$dir"
        binds+=",$(realpath "$dir")"
    done
    if [ -d "${PIPELINE_MODEL:-}" ]; then binds+=",$(realpath "$PIPELINE_MODEL")"; fi
    if [ -n "${PIPELINE_CONTAINER_BINDS:-}" ]; then binds+=",$PIPELINE_CONTAINER_BINDS"; fi
    cmd=(apptainer exec --nv --bind "$binds" "$PIPELINE_CONTAINER" "${cmd[@]}")
fi
echo "=== running: ${cmd[*]}"

# The batch shell gets Slurm's signal (B:USR1); pass it on to the worker, which stops cleanly
# and requeues this job. A second signal makes the worker exit at once.
"${cmd[@]}" &
child=$!
trap 'kill -USR1 "$child" 2>/dev/null || true' USR1
trap 'kill -TERM "$child" 2>/dev/null || true' TERM INT
while :; do
    rc=0
    wait "$child" || rc=$?
    kill -0 "$child" 2>/dev/null || break  # wait returned because the worker exited
done
echo "=== end $(date -Is) on $(hostname) job $job_id: exit $rc"
exit "$rc"
