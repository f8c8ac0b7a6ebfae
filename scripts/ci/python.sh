#!/usr/bin/env bash
# The Python package (crates/mnv2-py + python/mobilenetv2): lints the binding crate, builds the
# abi3 wheel with maturin, installs it into a cached venv and runs python/tests with pytest
# (outputs against the `mnv2` binary's, numpy interop, threads, the GIL, errors, the README's
# snippets, and the Ray Data pipeline on a local 2-CPU Ray cluster).
#
# Installs once into $PY_CI_CACHE (default ~/.cache/mnv2-python): a venv with maturin, pytest,
# numpy, pillow, and ray[data] + pandas + pyarrow from PyPI. Later runs reuse it; after the
# installs a run takes a few minutes (most of it the release build).
#
# Env: MNV2 (the CLI binary; default: built with cargo --release), PY_CI_CACHE.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
CACHE=${PY_CI_CACHE:-$HOME/.cache/mnv2-python}
VENV=$CACHE/venv
PACKAGES="maturin>=1.9,<2 pytest numpy pillow ray[data] pandas pyarrow"
mkdir -p "$CACHE"

step() { echo "== python: $*"; }

[ -f weights/mobilenet_v2-b0353104.pth ] || bash scripts/fetch_assets.sh

step "clippy (the binding crate is not a default member: it is only built through maturin)"
cargo clippy -p mnv2-py --all-targets -- -D warnings

if [ -z "${MNV2:-}" ]; then
  step "building mnv2 (release), the reference the package is compared with"
  timeout 1800 cargo build --release -q -p mnv2
  MNV2=$TARGET/release/mnv2
fi
export MNV2

if [ "$(cat "$VENV/.packages" 2>/dev/null)" != "$PACKAGES" ]; then
  step "creating the venv $VENV ($PACKAGES)"
  rm -rf "$VENV"
  timeout 120 python3 -m venv "$VENV"
  # shellcheck disable=SC2086
  timeout 1200 "$VENV/bin/pip" install -q --disable-pip-version-check $PACKAGES
  echo "$PACKAGES" >"$VENV/.packages"
fi

step "building the wheel as pip install . does (PEP 517, maturin, release, abi3)"
WHEELS=$TARGET/wheels
rm -f "$WHEELS"/mobilenetv2-*.whl
# --no-build-isolation: the venv's maturin (found on PATH by its PEP 517 hook) instead of a
# fresh download per run.
PATH=$VENV/bin:$PATH CARGO_TARGET_DIR=$TARGET timeout 1800 "$VENV/bin/pip" wheel --quiet --disable-pip-version-check \
  --no-build-isolation --no-deps -w "$WHEELS" .
WHEEL=$(ls "$WHEELS"/mobilenetv2-*.whl)
ls -l "$WHEEL"
"$VENV/bin/pip" install -q --disable-pip-version-check --force-reinstall --no-deps "$WHEEL"

step "pytest"
# `import mobilenetv2` is the installed wheel: the sources are in python/, not on sys.path.
timeout 900 "$VENV/bin/python" -m pytest -q -rs -p no:cacheprovider python/tests
