#!/usr/bin/env bash
# Fashion-MNIST (60k train + 10k test, IDX gz, MIT) from Debian's dataset-fashion-mnist package,
# unpacked to data/fashion-mnist/ (ignored by git). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../.."
dst=data/fashion-mnist
if [ -f "$dst/t10k-labels-idx1-ubyte.gz" ]; then echo "$dst: present"; exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && { apt-get download dataset-fashion-mnist 2>/dev/null || { apt-get update -qq && apt-get download dataset-fashion-mnist; }; } && dpkg-deb -x dataset-fashion-mnist_*.deb fm)
mkdir -p "$dst"
printf "*\n" > data/.gitignore
cp "$tmp"/fm/usr/share/datasets/fashion-mnist/*-ubyte.gz "$dst"/
ls -l "$dst"
