#!/usr/bin/env bash
# Install and start what the tests need, then run them. The fixtures start a private
# PostgreSQL server and an rsync daemon on 127.0.0.1 themselves; extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
python3 -m ruff check src tests
python3 -m ruff format --check src tests
exec python3 -m pytest "$@"
