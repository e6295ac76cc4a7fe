"""A small searchable world for the search / server / browser tests, built with the real pipeline.

Demo-task data (a 64-entity KB with reference PNGs, a few scene queries) -> the tiny OpenAI-format ViT CLIP ->
feature files through the demo's ``extract_features`` (KB images and texts: fc; scenes: fc + 4x4 grid; questions:
text fc) -> a Flat index -> a random tiny :class:`vlt5.QueryEncoder` saved with ``save_pretrained`` and a
``backbone.json``.
Built once per test session (a marker file makes later calls reuse it, whichever module asks first).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.demo.prepare import DemoPaths
from retrieval.querying.server_process import ServerProcess, free_port  # noqa: F401  (used by the tests)

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class World(DemoPaths):
    """The demo's layout (a tiny task, extracted with the tests' tiny CLIP) plus an index and an encoder."""

    @property
    def kb(self) -> Path:
        return self.data / "kb.jsonl"

    @property
    def queries(self) -> Path:
        return self.data / "queries.test.jsonl"

    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def encoder(self) -> Path:
        return self.root / "encoder"

    def scene(self, scene_id: str) -> Path:
        return self.data / "images" / "scenes" / f"{scene_id}.png"

    def first_queries(self, n: int) -> list[dict]:
        return [json.loads(line) for line in self.queries.read_text().splitlines()[:n]]


def build_world(root: Path, clip_pt: Path) -> World:
    """Everything the search tests need under ``root`` (reused when already complete)."""
    world = World(root, clip_pt)
    if (root / "DONE").is_file():
        return world
    import torch

    from retrieval.demo.prepare import extract_features
    from retrieval.demo.task import DemoTaskConfig, write_demo_task
    from retrieval.indexing import IndexConfig, build_index_from_features
    from retrieval.querying import write_backbone_record
    from vlt5 import QueryEncoder, QueryEncoderConfig, VisualConfig, VLT5Config, load_tokenizer
    from vlt5.tiny import make_tiny_tokenizer_dir

    write_demo_task(world.data, DemoTaskConfig(train_scenes=2, dev_scenes=2, test_scenes=6, image_size=32,
                                               questions_per_scene=2))
    extract_features(world, num_workers=0)
    build_index_from_features(world.features("kb_image"), IndexConfig(factory="Flat")).save(world.index)
    tokenizer = load_tokenizer(make_tiny_tokenizer_dir(root / "tokenizer"))
    torch.manual_seed(0)
    model = VLT5Config(vocab_size=len(tokenizer), d_model=24, d_kv=8, d_ff=20, num_layers=1, num_heads=2,
                       dropout_rate=0.0, visual=VisualConfig(feat_dim=128))  # tiny ViT grid width 128
    qe = QueryEncoder(QueryEncoderConfig(model=model, proj_dim=48), tokenizer=tokenizer)  # 48 = CLIP embed dim
    qe.save_pretrained(world.encoder)
    from feature_extraction.readers import open_features

    with open_features(world.features("scenes")) as store:
        write_backbone_record(world.encoder, store.attrs)
    (root / "DONE").write_text("ok")
    return world


def brute_force_topk(world: World, query: np.ndarray, k: int) -> tuple[list[str], np.ndarray]:
    """Exact cosine top-k over the KB image features (the reference for every search result)."""
    from feature_extraction.readers import open_features

    with open_features(world.features("kb_image")) as store:
        ids, kb = store.ids, np.asarray(store.get_many(store.ids).fc, dtype=np.float64)
    kb /= np.linalg.norm(kb, axis=1, keepdims=True)
    q = np.asarray(query, dtype=np.float64) / np.linalg.norm(query)
    scores = kb @ q
    order = np.argsort(-scores, kind="stable")[:k]
    return [ids[i] for i in order], scores[order]


def run_cli(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python retrieval/<script> ARGS`` in a fresh process (as a user runs it)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(REPO / "retrieval" / script), *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def server_args(world: World) -> list[str]:
    return ["--index", str(world.index), "--encoder", str(world.encoder), "--kb", str(world.kb), "--images",
            str(world.data)]


def make_world_fixture():  # noqa: ANN201 - a pytest fixture factory
    """The session fixture ``world`` for a test module: ``world = make_world_fixture()``."""
    import pytest

    @pytest.fixture(scope="session")
    def world(tiny_vit_pt: Path, tmp_path_factory: pytest.TempPathFactory) -> World:
        return build_world(tmp_path_factory.getbasetemp() / "search_world", tiny_vit_pt)

    return world
