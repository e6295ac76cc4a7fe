"""Prepare everything the demo trains and evaluates on: task data, a tiny CLIP, and CLIP feature files.

    vlt5r demo prepare --out runs/demo

writes (each step skipped when its output is already complete, so a rerun resumes)::

    runs/demo/data/          kb.jsonl, queries.{train,dev,test}.jsonl, questions.jsonl, images/  (retrieval.demo.task)
    runs/demo/clip/pairs/                the entities drawn alone with captions "a red ring" (train.csv, val.csv)
    runs/demo/clip/train/                the CLIP-family trainer's run (clip_family.training.train: log, last/, best/)
    runs/demo/clip/demo_clip.pt          tiny OpenAI-format CLIP exported from that run (clip_family.export)
    runs/demo/features/scenes.h5         query images: fc + 2x2 grid   (vlt5r extract's pipeline)
    runs/demo/features/kb_image.h5       knowledge-base reference images: fc
    runs/demo/features/kb_text.h5        knowledge-base passages: CLIP text fc
    runs/demo/features/questions.h5      questions: CLIP text fc (the text-only baseline)
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from foundations.errors import UserError
from foundations.io import atomic_write_text
from retrieval.demo.task import (DemoTaskConfig, entities, reference_image, single_object_image,
                                 write_demo_task)

if TYPE_CHECKING:
    from clip_family.training import ClipTrainConfig

logger = logging.getLogger(__name__)

# The demo CLIP (clip_family ModelConfig): a ModifiedResNet (the VL_adapter backbone family), 64 px -> a 2x2x512
# layer4 grid, one cell per quadrant of a demo scene; embedding 48; text width 64, 2 layers. It learns the shapes
# far faster than a ViT of similar cost (zero-shot 0.99 vs 0.67 after 400 steps, measured while building the demo).
DEMO_CLIP_MODEL = {"embed_dim": 48,
                   "image": {"kind": "openai", "image_resolution": 64, "layers": [1, 1, 1, 1], "width": 16,
                             "patch_size": None},
                   "text": {"kind": "openai", "context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1,
                            "layers": 2}}


@dataclass(frozen=True)
class DemoClipConfig:
    """The demo CLIP's pre-training: ``renders_per_entity`` images per entity (its reference image + random
    renders) for ``steps`` optimizer steps of :func:`clip_family.training.train` (recipe: :func:`clip_train_config`)."""

    steps: int = 300
    renders_per_entity: int = 48
    val_renders_per_entity: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.steps, self.renders_per_entity, self.val_renders_per_entity) < 1:
            raise UserError(f"demo CLIP: steps, renders_per_entity and val_renders_per_entity must be >= 1, got "
                            f"{self.steps}, {self.renders_per_entity}, {self.val_renders_per_entity}")


@dataclass(frozen=True)
class DemoPaths:
    """Where the demo's pieces live under ``root``; ``clip_file`` points at another CLIP (the tests' tiny one)."""

    root: Path
    clip_file: Path | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def clip(self) -> Path:
        return self.clip_file or self.root / "clip" / "demo_clip.pt"

    def features(self, name: str) -> Path:
        return self.root / "features" / f"{name}.h5"


def extract_features(paths: DemoPaths, num_workers: int = 1) -> dict[str, Path]:
    """Run the real extraction pipeline on the demo data (resumable; a complete file is a no-op)."""
    from feature_extraction.config import ExtractConfig
    from feature_extraction.extract import extract

    jobs = {
        "scenes": dict(images=paths.data / "images" / "scenes", grid=True),
        "kb_image": dict(images=paths.data / "images" / "kb", grid=False),
        "kb_text": dict(texts=paths.data / "kb.jsonl", grid=False),
        "questions": dict(texts=paths.data / "questions.jsonl", grid=False),
    }
    out = {}
    (paths.root / "features").mkdir(parents=True, exist_ok=True)
    for name, job in jobs.items():
        cfg = ExtractConfig(out=paths.features(name), backbone=str(paths.clip), batch_size=128,
                            num_workers=num_workers if "images" in job else 0, dtype="float32", progress=False,
                            **job)
        summary = extract(cfg)
        logger.info("%s: %s", name, summary.text().splitlines()[0])
        out[name] = paths.features(name)
    return out


def write_caption_pairs(out_dir: Path, split: str, renders: int, with_reference: bool, size: int,
                        rng: np.random.Generator) -> Path:
    """``out_dir/SPLIT.csv`` (open_clip's ``filepath,title``) over ``out_dir/images/SPLIT/E000_00.png`` …: every
    entity drawn alone (first its reference image when ``with_reference``), captioned "a red ring"."""
    image_dir = out_dir / "images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["filepath", "title"])
    for e in entities():
        for n in range(renders):
            draw = reference_image if with_reference and n == 0 else single_object_image
            name = f"images/{split}/{e.id}_{n:02d}.png"
            draw(e, size, rng).save(out_dir / name)
            writer.writerow([name, e.caption])
    atomic_write_text(out_dir / f"{split}.csv", table.getvalue())  # written last: its presence means complete
    return out_dir / f"{split}.csv"


def clip_train_config(work: Path, cfg: DemoClipConfig) -> ClipTrainConfig:
    """The demo's recipe on the CLIP-family trainer: CLIP loss, global batch 64, AdamW lr 5e-4, weight decay 0.1,
    30 warmup steps then cosine, ``cfg.steps`` steps; zero-shot accuracy on fresh renders after every epoch."""
    from clip_family.training import ClipTrainConfig
    from foundations.config import from_dict

    batch = 64
    epochs = math.ceil(cfg.steps / (len(entities()) * cfg.renders_per_entity // batch))
    recipe = {
        "model": {"model_name": str(work / "model.json"), "variant": "CLIP"},
        "data": {"train_data": str(work / "pairs" / "train.csv"), "val_data": str(work / "pairs" / "val.csv"),
                 "batch_size": batch, "cache_images": True},
        "optim": {"lr": 5e-4, "weight_decay": 0.1, "warmup_steps": 30, "schedule": "cosine"},
        "loop": {"out": str(work / "train"), "epochs": epochs, "max_steps": cfg.steps, "seed": cfg.seed,
                 "save_init": False, "tensorboard": False, "progress": False},
        "eval": {"classes": [f"{e.color} {e.shape}" for e in entities()], "templates": ["a {}"]}}
    return from_dict(ClipTrainConfig, recipe, "the demo CLIP's recipe")


def pretrain_demo_clip(out_path: str | Path, cfg: DemoClipConfig = DemoClipConfig()) -> Path:
    """Pre-train the demo CLIP with the CLIP-family trainer in ``out_path``'s folder (a rerun resumes from
    ``train/last``) and export its final weights as the OpenAI-format ``out_path`` that ``clip.load`` reads."""
    from clip_family.export import export_openai
    from clip_family.model import ClipFamilyModel
    from clip_family.training import train

    out_path = Path(out_path)
    work, size = out_path.parent, DEMO_CLIP_MODEL["image"]["image_resolution"]  # renders at the CLIP's resolution
    start = time.perf_counter()
    for split, renders, with_reference, stream in (("train", cfg.renders_per_entity, True, 0),
                                                   ("val", cfg.val_renders_per_entity, False, 1)):
        if not (work / "pairs" / f"{split}.csv").is_file():
            write_caption_pairs(work / "pairs", split, renders, with_reference, size,
                                np.random.default_rng([cfg.seed, stream]))
    atomic_write_text(work / "model.json", json.dumps(DEMO_CLIP_MODEL, indent=2))
    result = train(clip_train_config(work, cfg))
    accuracy = (result.dev or {}).get("zeroshot_accuracy")  # None when a finished run was only resumed
    logger.info("tiny CLIP pre-trained in %.0f s (%d steps); zero-shot accuracy on fresh renders: %s",
                time.perf_counter() - start, result.global_step, "n/a" if accuracy is None else f"{accuracy:.3f}")
    return export_openai(ClipFamilyModel.from_pretrained(Path(result.run_dir) / "last"), out_path)


def prepare(root: str | Path, task: DemoTaskConfig = DemoTaskConfig(),
            clip: DemoClipConfig = DemoClipConfig(), num_workers: int = 1) -> DemoPaths:
    paths = DemoPaths(Path(root))
    if not (paths.data / "task.json").is_file():
        write_demo_task(paths.data, task)  # task.json is written last: its presence means the data is complete
    else:
        logger.info("demo data already in %s", paths.data)
    if not paths.clip.is_file():
        pretrain_demo_clip(paths.clip, clip)  # the export is written atomically, last
    else:
        logger.info("demo CLIP already at %s", paths.clip)
    extract_features(paths, num_workers)
    return paths
