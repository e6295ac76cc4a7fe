"""A synthetic compositional world for the NegCLIP proof: 32×32 scenes of two coloured shapes, one in each half,
captioned "a red square left of a blue circle". A bag-of-words model knows which colours and shapes are there but
not which colour goes with which shape, nor which object is on the left; the swapped captions are the negatives
(ARO's VG-Attribution / VG-Relation in miniature).

:func:`write_shapes_world` writes, under ``root``:

* ``images/*.png`` and ``train.csv`` / ``val.csv`` (``filepath``, ``title``: the CLIP-family CSV reader's columns);
  the validation scenes are object pairs never seen in training;
* ``sugar_crepe/swap_att.json`` (the two colours exchanged: "a blue square left of a red circle") and
  ``sugar_crepe/swap_obj.json`` (the two objects exchanged: "a blue circle left of a red square"), in SugarCREPE's
  format, for :mod:`evaluation.sugar_crepe` — caption vs swap, chance is 0.5.

:func:`tag` is a dictionary part-of-speech tagger of the world's words (Penn tags as spaCy gives them), for the
mining (:mod:`clip_family.mining`) without a spaCy pipeline.
"""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (40, 60, 230), "yellow": (235, 215, 20),
           "purple": (150, 40, 190), "orange": (245, 135, 20), "white": (245, 245, 245), "cyan": (20, 210, 220),
           "pink": (250, 140, 200), "grey": (128, 128, 128)}
SHAPES = ("square", "circle", "triangle", "cross", "diamond")
SIZE = 32
_TAGS = {"a": "DT", "left": "RB", "of": "IN", **{c: "JJ" for c in COLOURS}, **{s: "NN" for s in SHAPES}}


def tag(text: str) -> list[tuple[str, str]]:
    """Penn Treebank tags of a caption of this world (``left`` as spaCy tags it in "left of": an adverb)."""
    return [(word, _TAGS.get(word, "NN")) for word in text.split()]


def caption(left: tuple[str, str], right: tuple[str, str]) -> str:
    return f"a {left[0]} {left[1]} left of a {right[0]} {right[1]}"


def draw(image: ImageDraw.ImageDraw, shape: str, colour: tuple[int, int, int], box: tuple[int, int, int, int]
         ) -> None:
    x0, y0, x1, y1 = box
    if shape == "square":
        image.rectangle(box, fill=colour)
    elif shape == "circle":
        image.ellipse(box, fill=colour)
    elif shape == "triangle":
        image.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)
    elif shape == "diamond":
        image.polygon([((x0 + x1) / 2, y0), (x1, (y0 + y1) / 2), ((x0 + x1) / 2, y1), (x0, (y0 + y1) / 2)],
                      fill=colour)
    else:  # cross
        w, h = (x1 - x0) // 3, (y1 - y0) // 3
        image.rectangle((x0 + w, y0, x1 - w, y1), fill=colour)
        image.rectangle((x0, y0 + h, x1, y1 - h), fill=colour)


def render(left: tuple[str, str], right: tuple[str, str], rng: np.random.Generator, jitter: int = 1
           ) -> Image.Image:
    """One scene: each object 11–13 px wide near the centre of its half (± ``jitter`` px), on a dark background of
    a random shade."""
    background = tuple(int(v) for v in rng.integers(0, 50, 3))
    image = Image.new("RGB", (SIZE, SIZE), background)  # type: ignore[arg-type]
    pen = ImageDraw.Draw(image)
    for half, (colour, shape) in enumerate((left, right)):
        size = int(rng.integers(11, 14))
        dx = min(jitter, (SIZE // 2 - size) // 2)  # the object stays in its half
        x = half * SIZE // 2 + (SIZE // 2 - size) // 2 + int(rng.integers(-dx, dx + 1))
        y = (SIZE - size) // 2 + int(rng.integers(-jitter, jitter + 1))
        draw(pen, shape, COLOURS[colour], (x, y, x + size - 1, y + size - 1))
    return image


def scenes() -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """Every ordered pair of objects with two different colours and two different shapes (so every swap changes
    the meaning)."""
    objects = list(itertools.product(COLOURS, SHAPES))
    return [(a, b) for a, b in itertools.product(objects, objects) if a[0] != b[0] and a[1] != b[1]]


def write_shapes_world(root: str | Path, n_train: int = 1200, n_val: int = 150, seed: int = 0, jitter: int = 3
                       ) -> dict[str, Path]:
    """Write the world (see the module docstring); returns its paths (``train``, ``val``, ``sugar_crepe``,
    ``images``). Every image shows another scene (while there are enough: 1,800 of them); validation scenes are
    object pairs that no training image shows. ``jitter``: how far (px) an object may move from the centre of its
    half — at 1 a tiny ViT learns the binding without negatives too; at 3 (the default) it does not, measured in
    docs/negclip.md."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    pairs = scenes()
    order = rng.permutation(len(pairs))
    val_pairs = [pairs[i] for i in order[:n_val]]
    train_pairs = [pairs[i] for i in order[n_val:]]
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "sugar_crepe").mkdir(exist_ok=True)
    swaps: dict[str, dict[str, dict[str, str]]] = {"swap_att": {}, "swap_obj": {}}
    for split, chosen, n in (("train", train_pairs, n_train), ("val", val_pairs, n_val)):
        rows = []
        for i in range(n):
            left, right = chosen[i % len(chosen)]
            name = f"images/{split}_{i:05d}.png"
            render(left, right, rng, jitter).save(root / name)
            rows.append((name, caption(left, right)))
            if split == "val":
                swaps["swap_att"][str(1000 + i)] = {"filename": name, "caption": caption(left, right),
                                                    "negative_caption": caption((right[0], left[1]),
                                                                                (left[0], right[1]))}
                swaps["swap_obj"][str(1000 + i)] = {"filename": name, "caption": caption(left, right),
                                                    "negative_caption": caption(right, left)}
        with (root / f"{split}.csv").open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["filepath", "title"])
            writer.writerows(rows)
    for category, items in swaps.items():
        (root / "sugar_crepe" / f"{category}.json").write_text(json.dumps(items, indent=1))
    return {"train": root / "train.csv", "val": root / "val.csv", "sugar_crepe": root / "sugar_crepe",
            "images": root}
