"""Shared fixtures. Every tiny artefact comes from one factory (``feature_extraction.tiny`` for CLIP,
``vlt5.tiny`` for VL-T5) and is built once per session into a temporary directory."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a wrong hub name must fail at once, not hang on the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from feature_extraction.tiny import TINY_RESNET, TINY_VIT, make_hf_clip, make_openai_clip

pytest_plugins = ["vlt5_fixtures"]  # VL-T5 fixtures (tiny Epoch30.pth, T5 dir, tokenizer, feature file)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``@pytest.mark.gpu`` tests need CUDA: skipped (with the reason shown by ``-ra``) where torch sees none.
    ``make test-gpu`` (``pytest -m gpu``) runs only them."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is false)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _restore_global_state():
    """Seed every RNG and restore torch's global settings after each test."""
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.manual_seed(0)
    random.seed(0)
    np.random.seed(0)
    yield
    torch.set_default_dtype(dtype)
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_vit_pt(tmp_path_factory) -> Path:
    """OpenAI-format ViT CLIP state dict (32 px, 4x4 patch grid of width 128, embedding 48)."""
    return make_openai_clip(tmp_path_factory.mktemp("clip") / "tiny_vit.pt", TINY_VIT)


@pytest.fixture(scope="session")
def tiny_resnet_pt(tmp_path_factory) -> Path:
    """OpenAI-format ModifiedResNet CLIP state dict (96 px, 3x3x256 layer4 map, embedding 40)."""
    return make_openai_clip(tmp_path_factory.mktemp("clip") / "tiny_rn.pt", TINY_RESNET)


@pytest.fixture(scope="session")
def tiny_hf_clip_dir(tmp_path_factory) -> Path:
    """transformers CLIP directory (save_pretrained) with tokenizer and image processor."""
    return make_hf_clip(tmp_path_factory.mktemp("hf") / "tiny_clip")
