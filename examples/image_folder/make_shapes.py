"""Write a small image folder to try `dist-train prepare imagefolder` on:
ROOT/<class>/<n>.png with circles, squares and triangles of random size,
place and shade, drawn with Pillow.

    python examples/image_folder/make_shapes.py data/shapes
    dist-train prepare imagefolder --source-dir data/shapes --image-size 24 --color grey --out data/prepared/shapes
    dist-train launch --nproc-per-node 2 examples/image_folder/shapes.yaml"""

import random
import sys
from pathlib import Path

from PIL import Image, ImageDraw


def draw(shape: str, rng: random.Random, size: int = 32) -> Image.Image:
    image = Image.new("L", (size, size), color=rng.randint(0, 60))
    pen = ImageDraw.Draw(image)
    r = rng.randint(6, 12)
    cx, cy = rng.randint(r, size - r), rng.randint(r, size - r)
    shade = rng.randint(150, 255)
    if shape == "circle":
        pen.ellipse([cx - r, cy - r, cx + r, cy + r], fill=shade)
    elif shape == "square":
        pen.rectangle([cx - r, cy - r, cx + r, cy + r], fill=shade)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=shade)
    return image


def main(root: str, per_class: int = 300, seed: int = 0) -> None:
    rng = random.Random(seed)
    for shape in ("circle", "square", "triangle"):
        folder = Path(root) / shape
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            draw(shape, rng).save(folder / f"{n:04d}.png")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
