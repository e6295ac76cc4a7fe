"""The embedded demo task: a small knowledge-based VQA problem whose answer needs the question *and* the image.

The knowledge base holds 64 entities, one per (shape, colour) pair of 8 shapes x 8 colours, each with a made-up
name, a passage and a reference image (the shape alone, large, centred). A query image is a 2x2 scene of four
entities with four different shapes and four different colours; the question names which one matters — by
position ("the object in the top left"), by colour ("the red one") or by shape ("the ring") — and asks for
its knowledge-base entry.

* Image alone: the scene shows four entities, so at best one of four is right (and a CLIP embedding of a
  four-object scene is close to none of them).
* Question alone: a position names nothing; a colour or a shape narrows 64 entries to 8.
* Both: exactly one entry.

Everything is deterministic for a seed: drawing uses only PIL and a ``numpy`` generator per split. Positives
are the one entity asked about; hard negatives are the three other objects of the scene (what an image-only
retriever confuses) and the entities sharing the target's shape or colour (what a question-only one confuses).
Files follow DESIGN.md §3: ``kb.jsonl``, ``queries.{train,dev,test}.jsonl`` (``image`` = the scene's id in
the feature file extracted from ``images/scenes``), ``questions.jsonl`` (``{"id","text"}`` for CLIP text
features), PNG images under ``images/kb`` and ``images/scenes``, and ``task.json`` with the config.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from foundations.errors import UserError

logger = logging.getLogger(__name__)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 160, 50), "blue": (30, 70, 230), "yellow": (235, 200, 20),
    "purple": (140, 40, 190), "orange": (245, 120, 10), "cyan": (20, 190, 200), "black": (20, 20, 20)}
SHAPES = ("circle", "square", "triangle", "diamond", "plus", "ring", "frame", "cross")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
_SYLLABLES = ("ka", "lo", "mi", "re", "su", "ta", "vo", "ne", "di", "ra", "po", "le", "zu", "fa", "ki", "mo")
_POSITION_TEMPLATES = ("What is the name of the object in the {x} corner?",
                       "Which entry describes the shape at the {x}?",
                       "Who is the {x} one in this picture?",
                       "Tell me about the object in the {x}.")
_COLOR_TEMPLATES = ("What is the name of the {x} object?", "Which entry describes the {x} shape in this picture?",
                    "Who is the {x} one here?")
_SHAPE_TEMPLATES = ("What is the name of the {x}?", "Which entry is the {x} in this image?",
                    "Tell me about the {x} in the picture.")
SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class DemoTaskConfig:
    """Sizes of the generated task (the defaults make the ``make demo`` data)."""

    seed: int = 0
    image_size: int = 64
    train_scenes: int = 3000
    dev_scenes: int = 100
    test_scenes: int = 150
    questions_per_scene: int = 4
    question_mix: tuple[float, float, float] = (0.5, 0.25, 0.25)  # by position, by colour, by shape

    def __post_init__(self) -> None:
        if self.image_size < 32 or self.image_size % 2:
            raise UserError(f"image_size must be an even number >= 32, got {self.image_size}")
        if not 1 <= self.questions_per_scene <= 4:
            raise UserError(f"questions_per_scene must be 1..4, got {self.questions_per_scene}")
        if abs(sum(self.question_mix) - 1) > 1e-6 or min(self.question_mix) < 0:
            raise UserError(f"question_mix must be 3 non-negative weights summing to 1, got {self.question_mix}")


@dataclass(frozen=True)
class Entity:
    id: str
    shape: str
    color: str
    name: str

    @property
    def caption(self) -> str:
        return f"a {self.color} {self.shape}"


def entities() -> list[Entity]:
    """The 64 knowledge-base entities (fixed: independent of the seed), with distinct made-up names."""
    out = []
    for n, (shape, color) in enumerate((s, c) for s in SHAPES for c in COLORS):
        # (first, second) syllable = (n mod 16, 4 * (n div 16) + n mod 4): a different pair for every n < 64
        a, b, c = _SYLLABLES[n % 16], _SYLLABLES[4 * (n // 16) + n % 4], _SYLLABLES[(n * 5 + 11) % 16]
        out.append(Entity(f"E{n:03d}", shape, color, (a + b + c).capitalize()))
    return out


def kb_record(e: Entity) -> dict[str, Any]:
    text = (f"{e.name} is the {e.color} {e.shape} of the Shapes collection. Catalogue entry {e.id}: "
            f"a single {e.shape} drawn in {e.color}.")
    return {"id": e.id, "title": f"{e.name} ({e.color} {e.shape})", "text": text, "image": f"images/kb/{e.id}.png"}


# -- drawing ------------------------------------------------------------------------------------------------
def draw_shape(draw: ImageDraw.ImageDraw, shape: str, color: str, x0: int, y0: int, size: int) -> None:
    """Draw ``shape`` in ``color`` inside the square (x0, y0, x0+size, y0+size)."""
    fill = COLORS[color]
    x1, y1 = x0 + size, y0 + size
    w = max(2, size // 5)
    mx, my = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    elif shape == "triangle":
        draw.polygon([(mx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(mx, y0), (x1, my), (mx, y1), (x0, my)], fill=fill)
    elif shape == "plus":
        draw.rectangle([mx - w / 2, y0, mx + w / 2, y1], fill=fill)
        draw.rectangle([x0, my - w / 2, x1, my + w / 2], fill=fill)
    elif shape == "ring":
        draw.ellipse([x0, y0, x1, y1], outline=fill, width=w)
    elif shape == "frame":
        draw.rectangle([x0, y0, x1, y1], outline=fill, width=w)
    elif shape == "cross":
        draw.line([x0, y0, x1, y1], fill=fill, width=w)
        draw.line([x0, y1, x1, y0], fill=fill, width=w)
    else:
        raise UserError(f"unknown shape {shape!r}; known: {SHAPES}")


def _canvas(size: int, rng: np.random.Generator) -> Image.Image:
    """A light, slightly noisy background (so no two images are identical)."""
    return Image.fromarray(np.clip(rng.normal(240, 6, (size, size, 3)), 0, 255).astype(np.uint8))


def reference_image(e: Entity, size: int, rng: np.random.Generator) -> Image.Image:
    """The entity alone, large and centred: the knowledge base's image."""
    img = _canvas(size, rng)
    s = int(size * 0.62)
    draw_shape(ImageDraw.Draw(img), e.shape, e.color, (size - s) // 2, (size - s) // 2, s)
    return img


def single_object_image(e: Entity, size: int, rng: np.random.Generator) -> Image.Image:
    """The entity at a random size and place (CLIP pre-training data)."""
    img = _canvas(size, rng)
    s = int(rng.integers(size // 5, int(size * 0.6)))
    x, y = (int(v) for v in rng.integers(0, size - s, 2))
    draw_shape(ImageDraw.Draw(img), e.shape, e.color, x, y, s)
    return img


def scene_image(objects: list[Entity], size: int, rng: np.random.Generator) -> Image.Image:
    """Four entities in the cells of a 2x2 layout (row-major: top left, top right, bottom left, bottom right)."""
    img = _canvas(size, rng)
    draw = ImageDraw.Draw(img)
    cell = size // 2
    for k, e in enumerate(objects):
        s = int(rng.integers(int(cell * 0.56), int(cell * 0.88)))
        y = (k // 2) * cell + int(rng.integers(0, cell - s))
        x = (k % 2) * cell + int(rng.integers(0, cell - s))
        draw_shape(draw, e.shape, e.color, x, y, s)
    return img


# -- queries ------------------------------------------------------------------------------------------------
def draw_scene_entities(ents: list[Entity], rng: np.random.Generator) -> list[Entity]:
    """Four entities with four distinct shapes and four distinct colours, in random cells."""
    shapes = rng.choice(len(SHAPES), 4, replace=False)
    colors = rng.choice(len(COLORS), 4, replace=False)
    by_key = {(e.shape, e.color): e for e in ents}
    names = list(COLORS)
    return [by_key[(SHAPES[s], names[c])] for s, c in zip(shapes, colors)]


def make_question(objects: list[Entity], target: int, kind: str, rng: np.random.Generator) -> str:
    if kind == "position":
        template, x = _POSITION_TEMPLATES[rng.integers(len(_POSITION_TEMPLATES))], POSITIONS[target]
    elif kind == "color":
        template, x = _COLOR_TEMPLATES[rng.integers(len(_COLOR_TEMPLATES))], objects[target].color
    else:
        template, x = _SHAPE_TEMPLATES[rng.integers(len(_SHAPE_TEMPLATES))], objects[target].shape
    return template.format(x=x)


def hard_negatives(objects: list[Entity], target: int, ents: list[Entity]) -> list[str]:
    """The scene's other objects, then the entities sharing the target's shape or colour (sorted ids)."""
    t = objects[target]
    scene = [e.id for k, e in enumerate(objects) if k != target]
    near = sorted(e.id for e in ents if e.id != t.id and (e.shape == t.shape or e.color == t.color))
    return scene + [i for i in near if i not in scene]


def split_queries(cfg: DemoTaskConfig, split: str, ents: list[Entity]) -> Iterator[tuple[Image.Image, str,
                                                                                          list[dict[str, Any]]]]:
    """(scene image, scene id, its query records) for every scene of ``split``."""
    n_scenes = {"train": cfg.train_scenes, "dev": cfg.dev_scenes, "test": cfg.test_scenes}[split]
    rng = np.random.default_rng([cfg.seed, SPLITS.index(split)])
    kinds = ("position", "color", "shape")
    for n in range(n_scenes):
        objects = draw_scene_entities(ents, rng)
        scene_id = f"{split}-{n:05d}"
        image = scene_image(objects, cfg.image_size, rng)
        records = []
        for j, target in enumerate(rng.choice(4, cfg.questions_per_scene, replace=False)):
            kind = kinds[rng.choice(3, p=cfg.question_mix)]
            records.append({"id": f"{scene_id}-q{j}", "question": make_question(objects, int(target), kind, rng),
                            "image": scene_id, "positives": [objects[target].id],
                            "hard_negatives": hard_negatives(objects, int(target), ents), "kind": kind})
        yield image, scene_id, records


def write_demo_task(out_dir: str | Path, cfg: DemoTaskConfig = DemoTaskConfig()) -> dict[str, Path]:
    """Generate the whole task under ``out_dir``; returns the paths of what was written."""
    out = Path(out_dir)
    (out / "images" / "kb").mkdir(parents=True, exist_ok=True)
    (out / "images" / "scenes").mkdir(parents=True, exist_ok=True)
    ents = entities()
    rng = np.random.default_rng([cfg.seed, 99])
    with open(out / "kb.jsonl", "w") as kb:
        for e in ents:
            reference_image(e, cfg.image_size, rng).save(out / "images" / "kb" / f"{e.id}.png")
            kb.write(json.dumps(kb_record(e)) + "\n")
    paths = {"kb": out / "kb.jsonl", "kb_images": out / "images" / "kb", "scenes": out / "images" / "scenes",
             "questions": out / "questions.jsonl"}
    with open(paths["questions"], "w") as questions:
        for split in SPLITS:
            paths[split] = out / f"queries.{split}.jsonl"
            with open(paths[split], "w") as f:
                for image, scene_id, records in split_queries(cfg, split, ents):
                    image.save(out / "images" / "scenes" / f"{scene_id}.png")
                    for r in records:
                        f.write(json.dumps(r) + "\n")
                        questions.write(json.dumps({"id": r["id"], "text": r["question"]}) + "\n")
    (out / "task.json").write_text(json.dumps({"task": "vlt5-retrieval demo (shapes KB-VQA)", **asdict(cfg)},
                                              indent=2))
    logger.info("demo task written to %s (%d entities)", out, len(ents))
    return paths
