"""Prepare everything the demo trains and evaluates on: task data, a tiny CLIP, and CLIP feature files.

    vlt5r demo prepare --out runs/demo

writes (each step skipped when its output is already complete, so a rerun resumes)::

    runs/demo/data/          kb.jsonl, queries.{train,dev,test}.jsonl, questions.jsonl, images/  (retrieval.demo.task)
    runs/demo/clip/demo_clip.pt          tiny OpenAI-format CLIP, pre-trained here (retrieval.demo.pretrain_clip)
    runs/demo/features/scenes.h5         query images: fc + 8x8 grid   (vlt5r extract's pipeline)
    runs/demo/features/kb_image.h5       knowledge-base reference images: fc
    runs/demo/features/kb_text.h5        knowledge-base passages: CLIP text fc
    runs/demo/features/questions.h5      questions: CLIP text fc (the text-only baseline)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from retrieval.demo.pretrain_clip import PretrainConfig, pretrain_demo_clip
from retrieval.demo.task import DemoTaskConfig, write_demo_task

logger = logging.getLogger(__name__)


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


def prepare(root: str | Path, task: DemoTaskConfig = DemoTaskConfig(),
            pretrain: PretrainConfig = PretrainConfig(), num_workers: int = 1) -> DemoPaths:
    paths = DemoPaths(Path(root))
    if not (paths.data / "task.json").is_file():
        write_demo_task(paths.data, task)  # task.json is written last: its presence means the data is complete
    else:
        logger.info("demo data already in %s", paths.data)
    if not paths.clip.is_file():
        pretrain_demo_clip(paths.clip, pretrain)  # torch.save writes the file at the end
    else:
        logger.info("demo CLIP already at %s", paths.clip)
    extract_features(paths, num_workers)
    return paths
