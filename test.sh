#!/usr/bin/env bash
# Command 2: install what is missing (idempotent), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/install.sh
# Two workers, each taking whole test files, so a module's shared fixture is built once (7 min instead of 11 here).
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile tests "$@"
