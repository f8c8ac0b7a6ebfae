#!/usr/bin/env python3
"""Lays images side by side in one PNG for the README (Pillow only).

  montage.py OUT.png [--height H] IMAGE...

Each image is scaled to height H (default 240) keeping its aspect; 4-pixel white gaps.
"""
import argparse

from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("images", nargs="+")
    ap.add_argument("--height", type=int, default=240)
    a = ap.parse_args()
    tiles = []
    for p in a.images:
        im = Image.open(p).convert("RGB")
        tiles.append(im.resize((round(im.width * a.height / im.height), a.height), Image.LANCZOS))
    gap = 4
    out = Image.new("RGB", (sum(t.width for t in tiles) + gap * (len(tiles) - 1), a.height), "white")
    x = 0
    for t in tiles:
        out.paste(t, (x, 0))
        x += t.width + gap
    out.save(a.out, optimize=True)


if __name__ == "__main__":
    main()
