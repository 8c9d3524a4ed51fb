#!/usr/bin/env bash
# Install and run the main job: learn the example project on the built-in model,
# show its masks, and generate images with the learned concepts.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
pip install -q torch==2.13.0
pip install -q -e .
work=$(mktemp -d)/shapes-duo
cp -r examples/shapes-duo "$work"
conceptforge learn "$work"
conceptforge masks "$work" --sheet "$work/masks.png"
conceptforge generate "$work" "a <v1> and a <v2>" -n 4
conceptforge generate "$work" "a <v1> on a <v3>" -n 4
echo "Project, masks and samples: $work"
