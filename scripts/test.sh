#!/usr/bin/env bash
# Install and start what the tests need, then run them: a single-node Slurm (slurmctld, slurmd,
# munge) is started here; the fixtures start a private PostgreSQL server and an rsync daemon on
# 127.0.0.1 themselves. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --slurm
python3 -m ruff check src tests
python3 -m ruff format --check src tests
# The layering declared in pyproject.toml (import-linter): imports only go down.
python3 -c "from importlinter.cli import lint_imports_command; lint_imports_command()"
# Types of the whole package (pyproject.toml's [tool.mypy]).
python3 -m mypy
if [ "$(id -u)" -eq 0 ]; then
    SLURM_CONF=$(scripts/slurm-local.sh start)
    export SLURM_CONF PIPELINE_TEST_REQUIRE_SLURM=1
else
    echo "not root: the Slurm tests use a running Slurm if there is one, else they are skipped" >&2
fi
exec python3 -m pytest "$@"
