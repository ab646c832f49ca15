#!/usr/bin/env bash
# Command 1: install everything (idempotent), then build and test the default pipeline.
set -euo pipefail
cd "$(dirname "$0")"
./scripts/install.sh
.venv/bin/doit build
.venv/bin/doit test
