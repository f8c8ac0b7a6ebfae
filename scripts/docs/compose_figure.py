#!/usr/bin/env python3
"""The README's picture of a composed scene set (`mnv2 dataset compose`): the first N images of
a split with their COCO boxes (class colour, VOC palette) on top, their class masks below.

    mnv2 dataset compose --out /tmp/scenes --train 8 --val 0 --seed 5
    python3 scripts/docs/compose_figure.py /tmp/scenes train docs/img/compose.png

Needs Pillow only. The picture is reduced to 256 colours to stay small in the repository.
"""
import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw


def voc_color(c):
    rgb = [0, 0, 0]
    for bit in range(8):
        for ch in range(3):
            rgb[ch] |= ((c >> ch) & 1) << (7 - bit)
        c >>= 3
    return tuple(rgb)


def main(root, split, out, n=4, side=200):
    root = Path(root) / split
    coco = json.loads((root / "instances.json").read_text())
    tiles = []
    for img in coco["images"][:n]:
        photo = Image.open(root / "images" / img["file_name"]).convert("RGB")
        draw = ImageDraw.Draw(photo)
        for a in coco["annotations"]:
            if a["image_id"] == img["id"]:
                x, y, w, h = a["bbox"]
                draw.rectangle([x - 1, y - 1, x + w, y + h], outline=voc_color(a["category_id"]), width=2)
        mask = Image.open(root / "masks" / (Path(img["file_name"]).stem + ".png"))
        tiles.append((photo.resize((side, side), Image.BILINEAR), mask.convert("RGB").resize((side, side), Image.NEAREST)))
    sheet = Image.new("RGB", (side * len(tiles) + 4 * (len(tiles) - 1), 2 * side + 4), "white")
    for i, (photo, mask) in enumerate(tiles):
        sheet.paste(photo, (i * (side + 4), 0))
        sheet.paste(mask, (i * (side + 4), side + 4))
    sheet.quantize(256).save(out, optimize=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
