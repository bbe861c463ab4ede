#!/usr/bin/env bash
# Install what the pipeline, its demo and its tests need on Debian/Ubuntu: system packages
# (only the missing ones) and the Python package with its test extras.
#   --slurm   also Slurm and munge, for a single-node Slurm (scripts/slurm-local.sh)
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(rsync xz-utils espeak-ng sox libsndfile1 postgresql pgbouncer util-linux chromium chromium-driver)
if [ "${1:-}" = --slurm ]; then packages+=(slurm-wlm munge); fi
command -v npm >/dev/null || packages+=(npm)  # any Node.js with npm will do
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    sudo=()
    [ "$(id -u)" -eq 0 ] || sudo=(sudo)
    echo "installing system packages: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python3 -m pip install -q --disable-pip-version-check -e ".[test]"

# axe-core, the accessibility checker the browser tests run in each page (tests/web/test_browser.py)
axe_dir="${XDG_CACHE_HOME:-$HOME/.cache}/streaming-pipeline/npm"
if [ ! -f "$axe_dir/node_modules/axe-core/axe.min.js" ]; then
    npm install --silent --no-save --no-audit --no-fund --prefix "$axe_dir" axe-core@4.14.1 >/dev/null
fi
