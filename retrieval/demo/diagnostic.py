"""A diagnostic sibling of the demo task where the *wording* of the question decides the answer (issue 10).

Same knowledge base and scenes as :mod:`retrieval.demo.task` (64 shape x colour entities; a 2x2 scene of four
entities with four distinct shapes and colours), but every question is relational: it names an *anchor* object
of the scene (by colour or by shape) and a relation, and asks for the object in that relation to it:

    "What is the name of the object left of the ring?"      "Which entry is diagonally across from the red one?"

* The answer is never named: the anchor shares neither shape nor colour with it (a scene's shapes and colours
  are all distinct), so a question-only retriever ranks the anchor's look-alikes first — provably weak.
* The same scene is asked about four times, once per object, each time with another anchor or relation; so
  an image-only retriever can at best put the right object among the scene's four — R@1 <= 1/4 (if it ranks the
  scene's objects first, MRR <= (1 + 1/2 + 1/3 + 1/4) / 4 = 0.52).
* Changing one word ("left of" -> "diagonally across from", or the anchor) changes the answer for the same image:
  a model that ignores the question cannot beat the image-only bound.
* ``position_share`` mixes in one-hop questions by position ("the object in the top left corner"): the same
  properties (the text names no entity, the image alone is ambiguous), easier to learn (the tests' small budget).

Files: the demo task's (``kb.jsonl``, ``queries.{train,dev,test}.jsonl`` with ``"kind": "relation"`` and the
``relation`` / ``anchor`` used, ``questions.jsonl``, ``task.json``) plus ``scenes.jsonl`` (``{"id", "objects":
[4 entity ids, row-major]}``), which :func:`synthetic_features` reads. Images are rendered only when asked
(``render=True``), for extraction with a real CLIP; the tests use :func:`synthetic_features` instead, CLIP-like
feature files in our HDF5 layout whose structure makes the baselines' weakness exact.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from foundations.errors import UserError
from foundations.rows import normalise_rows
from retrieval.demo.task import (COLORS, POSITIONS, SHAPES, SPLITS, Entity, draw_scene_entities, entities, hard_negatives,
                                 kb_record, reference_image, scene_image)

logger = logging.getLogger(__name__)

# cell k of the 2x2 layout is (row k // 2, column k % 2); RELATIONS[(target, anchor)] = how the target relates
RELATIONS: dict[tuple[int, int], str] = {}
for _t in range(4):
    for _a in range(4):
        if _t == _a:
            continue
        same_row, same_col = _t // 2 == _a // 2, _t % 2 == _a % 2
        if same_row:
            RELATIONS[(_t, _a)] = "left of" if _t % 2 < _a % 2 else "right of"
        elif same_col:
            RELATIONS[(_t, _a)] = "above" if _t // 2 < _a // 2 else "below"
        else:
            RELATIONS[(_t, _a)] = "diagonally across from"
_TEMPLATES = ("What is the name of the object {rel} the {anchor}?", "Which entry is the shape {rel} the {anchor}?",
              "Tell me about the one {rel} the {anchor}.")


@dataclass(frozen=True)
class DiagnosticTaskConfig:
    """Sizes of the generated diagnostic task."""

    seed: int = 0
    image_size: int = 64
    train_scenes: int = 600
    dev_scenes: int = 50
    test_scenes: int = 100
    position_share: float = 0.0  # questions asked by position ("the object in the top left corner"): one hop

    def __post_init__(self) -> None:
        if min(self.train_scenes, self.dev_scenes, self.test_scenes) < 1:
            raise UserError("every split needs at least one scene")
        if not 0.0 <= self.position_share <= 1.0:
            raise UserError(f"position_share must be in [0, 1], got {self.position_share}")


def relational_question(objects: list[Entity], target: int, rng: np.random.Generator) -> tuple[str, str, str]:
    """``(question, relation, anchor phrase)`` asking for ``objects[target]`` through another object."""
    anchor = int(rng.choice([k for k in range(4) if k != target]))
    relation = RELATIONS[(target, anchor)]
    a = objects[anchor]
    phrase = f"{a.color} one" if rng.random() < 0.5 else a.shape
    template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
    return template.format(rel=relation, anchor=phrase), relation, phrase


def split_scenes(cfg: DiagnosticTaskConfig, split: str, ents: list[Entity]
                 ) -> Iterator[tuple[str, list[Entity], np.random.Generator, list[dict[str, Any]]]]:
    """``(scene id, objects, the split's generator, query records)`` for every scene of ``split``: four
    questions per scene, one per object, each through a random anchor."""
    n_scenes = {"train": cfg.train_scenes, "dev": cfg.dev_scenes, "test": cfg.test_scenes}[split]
    rng = np.random.default_rng([cfg.seed, 1000 + SPLITS.index(split)])
    for n in range(n_scenes):
        objects = draw_scene_entities(ents, rng)
        scene_id = f"{split}-{n:05d}"
        records = []
        for target in range(4):
            if rng.random() < cfg.position_share:
                question, relation, anchor = f"What is the name of the object in the {POSITIONS[target]} corner?", \
                    "position", POSITIONS[target]
            else:
                question, relation, anchor = relational_question(objects, target, rng)
            records.append({"id": f"{scene_id}-q{target}", "question": question, "image": scene_id,
                            "positives": [objects[target].id],
                            "hard_negatives": hard_negatives(objects, target, ents),
                            "kind": "position" if relation == "position" else "relation",
                            "relation": relation, "anchor": anchor})
        yield scene_id, objects, rng, records


def write_diagnostic_task(out_dir: str | Path, cfg: DiagnosticTaskConfig = DiagnosticTaskConfig(),
                          render: bool = False) -> dict[str, Path]:
    """Generate the task under ``out_dir`` (images only with ``render``); returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ents = entities()
    paths = {"kb": out / "kb.jsonl", "questions": out / "questions.jsonl", "scenes_jsonl": out / "scenes.jsonl",
             "kb_images": out / "images" / "kb", "scenes": out / "images" / "scenes"}
    if render:
        paths["kb_images"].mkdir(parents=True, exist_ok=True)
        paths["scenes"].mkdir(parents=True, exist_ok=True)
    image_rng = np.random.default_rng([cfg.seed, 99])
    with open(paths["kb"], "w") as kb:
        for e in ents:
            if render:
                reference_image(e, cfg.image_size, image_rng).save(paths["kb_images"] / f"{e.id}.png")
            kb.write(json.dumps(kb_record(e)) + "\n")
    with open(paths["questions"], "w") as questions, open(paths["scenes_jsonl"], "w") as scenes:
        for split in SPLITS:
            paths[split] = out / f"queries.{split}.jsonl"
            with open(paths[split], "w") as f:
                for scene_id, objects, rng, records in split_scenes(cfg, split, ents):
                    scenes.write(json.dumps({"id": scene_id, "objects": [e.id for e in objects]}) + "\n")
                    if render:
                        scene_image(objects, cfg.image_size, rng).save(paths["scenes"] / f"{scene_id}.png")
                    for r in records:
                        f.write(json.dumps(r) + "\n")
                        questions.write(json.dumps({"id": r["id"], "text": r["question"]}) + "\n")
    (out / "task.json").write_text(json.dumps({"task": "vlt5-retrieval diagnostic (relational questions)",
                                               **asdict(cfg)}, indent=2))
    logger.info("diagnostic task written to %s", out)
    return paths


# -- synthetic CLIP-like features ----------------------------------------------------------------------------
def _write_h5(path: Path, ids: list[str], fc: np.ndarray, grid: np.ndarray | None, attrs: dict[str, Any]) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("ids", data=np.array(ids, dtype=object), dtype=h5py.string_dtype("utf-8"))
        f.create_dataset("fc", data=fc.astype(np.float32))
        if grid is not None:
            f.create_dataset("grid", data=grid.astype(np.float32))
        f.attrs.update({"format_version": 1, "fc_dim": fc.shape[1], **attrs})
    return path


def synthetic_features(task_dir: str | Path, out_dir: str | Path, dim: int = 48, grid_dim: int = 40,
                       noise: float = 0.3, seed: int = 0) -> dict[str, Path]:
    """CLIP-like feature files for a diagnostic task, without rendering or a CLIP (fast, for tests).

    * KB (``kb.h5``): entity = normalise(shape vector + colour vector + a small own part) in ``dim`` dims, so
      look-alikes are close, as in CLIP space.
    * Scenes (``scenes.h5``): ``fc`` = the normalised mean of the four entity vectors + noise (a four-object
      scene is close to each of its objects, like CLIP's pooled embedding); ``grid`` (4, ``grid_dim``) = a fixed
      random linear map of each cell's entity vector + noise (the layer4 cell of that quadrant).
    * Questions (``questions.h5``): the CLIP text of "... left of the ring" lands near the anchor phrase's
      attribute (the ring / red vectors) plus a relation direction: never near the answer.
    """
    task_dir, out_dir = Path(task_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    ents = entities()
    shape_vec = {s: rng.standard_normal(dim) for s in SHAPES}
    color_vec = {c: rng.standard_normal(dim) for c in COLORS}
    kb = normalise_rows(np.stack([shape_vec[e.shape] + color_vec[e.color] + 0.5 * rng.standard_normal(dim)
                                  for e in ents]))  # (64, dim)
    row = {e.id: n for n, e in enumerate(ents)}
    project = rng.standard_normal((dim, grid_dim)) / np.sqrt(dim)
    scene_ids, fcs, grids = [], [], []
    for line in (task_dir / "scenes.jsonl").read_text().splitlines():
        scene = json.loads(line)
        vectors = kb[[row[i] for i in scene["objects"]]]  # (4, dim)
        scene_ids.append(scene["id"])
        fcs.append(vectors.mean(0) + noise * rng.standard_normal(dim) / np.sqrt(dim))
        grids.append(vectors @ project + noise * rng.standard_normal((4, grid_dim)) / np.sqrt(grid_dim))
    relation_vec = {r: rng.standard_normal(dim) for r in sorted(set(RELATIONS.values()))}
    relation_vec["position"] = np.zeros(dim)
    position_vec = {x: rng.standard_normal(dim) for x in POSITIONS}
    q_ids, q_vecs = [], []
    for split in SPLITS:
        for line in (task_dir / f"queries.{split}.jsonl").read_text().splitlines():
            q = json.loads(line)
            word = q["anchor"].removesuffix(" one")
            attribute = shape_vec.get(word, color_vec.get(word, position_vec.get(word)))
            q_ids.append(q["id"])
            q_vecs.append(attribute + 0.5 * relation_vec[q["relation"]] + 0.3 * rng.standard_normal(dim))
    common = {"backbone": f"synthetic-diagnostic-{seed}", "backbone_sha256": f"synthetic-{seed}"}
    return {
        "kb_features": _write_h5(out_dir / "kb.h5", [e.id for e in ents], kb, None, {**common, "modality": "image"}),
        "query_features": _write_h5(out_dir / "scenes.h5", scene_ids, np.stack(fcs), np.stack(grids),
                                    {**common, "modality": "image", "grid_hw": [2, 2], "grid_dim": grid_dim}),
        "question_features": _write_h5(out_dir / "questions.h5", q_ids, normalise_rows(np.stack(q_vecs)), None,
                                       {**common, "modality": "text"}),
    }


def prepare_training_run(root: str | Path, cfg: DiagnosticTaskConfig) -> list[str]:
    """Write the task (``root/data``), its synthetic features (``root/feats``) and a tokenizer of its training
    questions (``root/tok``); return the data flags of ``vlt5r train`` for them (what the diagnostic test and
    ``benchmarks/bench_diagnostic.py`` train on)."""
    from vlt5.tokenization import train_tokenizer

    root = Path(root)
    paths = write_diagnostic_task(root / "data", cfg)
    feats = synthetic_features(root / "data", root / "feats")
    questions = [json.loads(line)["question"] for line in paths["train"].read_text().splitlines()]
    train_tokenizer(questions, root / "tok", 200)
    return ["--kb", str(paths["kb"]), "--kb-features", str(feats["kb_features"]),
            "--train-queries", str(paths["train"]), "--dev-queries", str(paths["dev"]),
            "--test-queries", str(paths["test"]), "--query-features", str(feats["query_features"]),
            "--question-features", str(feats["question_features"]), "--tokenizer", str(root / "tok")]
