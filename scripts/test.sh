#!/usr/bin/env bash
# Runs the test suite against throwaway Redis and PostgreSQL servers (scripts/services.sh),
# stopping them however the run ends. Exits with pytest's exit code.
# Extra pytest arguments: PYTEST_ARGS='-k store -x' scripts/test.sh
#
# Coverage is measured by path (src/bastion), not by package name: Alembic loads migration
# scripts under synthetic module names, which a package-name filter would not trace.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

trap 'scripts/services.sh down' EXIT
scripts/services.sh up
set -a
# shellcheck disable=SC1091
source .services/env
set +a

read -r -a extra <<<"${PYTEST_ARGS:-}"
status=0
.venv/bin/pytest --cov=src/bastion --cov-report=term "${extra[@]}" || status=$?
exit "$status"
