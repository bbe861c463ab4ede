#!/usr/bin/env bash
# Build the workers' Apptainer image from this checkout, print its size, run its %test.
#   containers/build_streaming_containers.sh [OUTPUT.sif] [extra apptainer build options]
#   e.g. ... streaming_audio_processing.sif --build-arg MODEL_DIR=/models/large-v3
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/containers/streaming_audio_processing.sif}
shift || true

if ! command -v apptainer >/dev/null; then
    echo "build_streaming_containers: apptainer is not installed (it is not in Debian's archive)." >&2
    echo "  On the cluster: module load apptainer, or see https://apptainer.org/docs/admin/main/installation.html" >&2
    exit 1
fi
build=(apptainer build --force)
[ "$(id -u)" -eq 0 ] || build+=(--fakeroot)
cd "$root"  # %files copies the checkout (.) and MODEL_DIR relative to here
echo "building $out from $root ($(git -C "$root" describe --always --dirty 2>/dev/null || echo 'no git'))"
"${build[@]}" "$@" "$out" containers/streaming_audio_processing.def
echo "image: $out ($(du -h "$out" | cut -f1))"
apptainer test "$out"
