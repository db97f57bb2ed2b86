"""Hand-made webdataset shards for train tests: learnable colour/shape images with captions."""

from __future__ import annotations

import io
import random
from pathlib import Path

from tasks.io.wds import write_tar

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (230, 210, 30),
}
SHAPES = ("circle", "square", "triangle")


def _image(colour: tuple[int, int, int], shape: str, rng: random.Random, size: int) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (size, size), tuple(rng.randrange(0, 60) for _ in range(3)))
    draw = ImageDraw.Draw(img)
    m = rng.randrange(2, size // 6)
    box = (m, m, size - m, size - m)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(size // 2, m), (m, size - m), (size - m, size - m)], fill=colour)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_shards(
    folder: Path, n_shards: int = 2, per_shard: int = 48, size: int = 48, seed: int = 0
) -> Path:
    """Shards like the crawl/curate stages write: uid.jpg, uid.txt, uid.json (with a recaption)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    uid = 0
    for s in range(n_shards):
        samples = []
        for _ in range(per_shard):
            colour = rng.choice(list(COLOURS))
            shape = rng.choice(SHAPES)
            key = f"{uid:012x}"
            image = _image(COLOURS[colour], shape, rng, size)
            meta = {"uid": key, "recaption": f"a picture of a {shape} coloured {colour}"}
            samples.append((key, {"jpg": image, "txt": f"a {colour} {shape}", "json": meta}))
            uid += 1
        write_tar(folder / f"{s:05d}.tar", samples)
    return folder
