#!/usr/bin/env bash
# Command 2: install what is missing (idempotent), then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/install.sh
exec .venv/bin/python -m pytest -q tests "$@"
