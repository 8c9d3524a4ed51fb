#!/usr/bin/env bash
# Install into a fresh virtual environment and run the test suite (CPU, no network).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-test
. .venv-test/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0
pip install -q -e ".[test]"
HF_HUB_OFFLINE=1 python -m pytest -q -rs -p no:cacheprovider tests
