#!/usr/bin/env bash
# Runs a project Python script in the interpreter scripts/lib/venv.sh provides for a package set:
#   bash scripts/py.sh torch scripts/fixtures/classify.py
#   bash scripts/py.sh interop scripts/fixtures/interop_onnx.py --mnv2 target/release/mnv2
# ($PYTHON overrides the virtualenv; $MNV2_VENV moves it from the repository's .venv/.)
set -euo pipefail
# shellcheck source=lib/venv.sh
source "$(dirname "$0")/lib/venv.sh"
set_name="${1:?usage: scripts/py.sh torch|interop|coco SCRIPT [ARGS...]}"
shift
py="$(mnv2_python "$set_name")"
exec "$py" "$@"
