"""One scorer interface for every model the toolkit evaluates: L2-normalised embeddings of texts and images.

* :class:`ModelScorer` wraps any object with ``encode_image(pixels)`` / ``encode_text(tokens)`` plus its
  ``preprocess`` (PIL image -> tensor) and ``tokenize`` (list of str -> what ``encode_text`` takes): the OpenAI
  ``clip`` package's models, the CLIP-family models of this toolkit, mCLIP students.
* :func:`load_scorer` builds one from a spec through the same loaders feature extraction uses
  (:func:`feature_extraction.backbones.load_backbone`): an OpenAI name (``ViT-B/32``) or ``.pt`` file, or
  ``hf:<dir>`` (transformers CLIP; SigLIP and other ``AutoModel`` dirs with ``get_image_features`` /
  ``get_text_features`` go through :class:`HFAutoModel`).
* :class:`EncoderScorer` wraps the high-level form, ``encode_image(list of PIL images)`` /
  ``encode_text(list of str)`` (the CLIP-family models of ``vlt5r clip-train``: a run's ``best/`` or ``last/``
  directory is loaded with ``ClipFamilyModel.from_pretrained`` and scored through its own preprocessing).
* :class:`FeatureScorer` reads image embeddings from an HDF5 feature file written by ``vlt5r extract`` (the ``fc``
  rows, looked up by id = image path relative to the image root, without suffix) and texts from a model scorer.

Precision is fp32 unless asked otherwise (fp16 is only honoured on CUDA, through the model's own loader); the
precision actually used is recorded in :meth:`Scorer.describe` and so in every results file — fp16 vs fp32 loading
is one of the reasons published numbers disagree.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from evaluation.common import ImageRef, RunLog
from foundations.errors import UsageError, UserError
from foundations.images import BadImage, decode_image

logger = logging.getLogger(__name__)
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def normalise(x: torch.Tensor | np.ndarray) -> np.ndarray:
    t = torch.as_tensor(np.asarray(x) if isinstance(x, np.ndarray) else x).float()
    return F.normalize(t, dim=-1).cpu().numpy().astype(np.float32)  # (N, D)


class Scorer:
    """L2-normalised float32 embeddings: ``embed_texts(texts)`` -> (N, D); ``embed_images(refs, log)`` ->
    ((R, D), ok mask (R,)); an image that cannot be used is reported in ``log`` and its row is zeros."""

    name: str = "model"
    precision: str = "fp32"

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def embed_images(self, refs: Sequence[ImageRef], log: RunLog) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "precision": self.precision, "scorer": type(self).__name__}


def open_ref(ref: ImageRef) -> Any:
    """Decode ``ref`` (one decoder for the toolkit) and crop it to its box (x, y, w, h) as ARO and CREPE do."""
    image = decode_image(ref.path)
    if ref.box is not None:
        x, y, w, h = ref.box
        image = image.crop((x, y, x + w, y + h))
    return image


class ModelScorer(Scorer):
    """Any ``encode_image`` / ``encode_text`` model with its ``preprocess`` and ``tokenize``."""

    def __init__(self, model: Any, preprocess: Callable[[Any], torch.Tensor], tokenize: Callable[[list[str]], Any],
                 name: str = "model", device: str = "cpu", precision: str = "fp32", batch_size: int = 64) -> None:
        self.model, self.preprocess, self.tokenize = model, preprocess, tokenize
        self.name, self.device, self.precision, self.batch_size = name, device, precision, batch_size

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenize(list(texts[start:start + self.batch_size]))
            if isinstance(tokens, torch.Tensor):
                tokens = tokens.to(self.device)
            chunks.append(normalise(self.model.encode_text(tokens)))  # (B, D)
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)

    @torch.no_grad()
    def embed_pixels(self, pixels: torch.Tensor) -> np.ndarray:
        return normalise(self.model.encode_image(pixels.to(self.device)))  # (B, D)

    def embed_images(self, refs: Sequence[ImageRef], log: RunLog) -> tuple[np.ndarray, np.ndarray]:
        ok = np.zeros(len(refs), bool)
        rows: list[np.ndarray] = []
        for start in range(0, len(refs), self.batch_size):
            batch, where = [], []
            for i in range(start, min(start + self.batch_size, len(refs))):
                try:
                    batch.append(self.preprocess(open_ref(refs[i])))
                    where.append(i)
                except BadImage as exc:
                    log.missing(refs[i].path, str(exc))
            if batch:
                emb = self.embed_pixels(torch.stack(batch))
                ok[where] = True
                rows.append((np.asarray(where), emb))
        dim = rows[0][1].shape[1] if rows else self.embed_texts(["a"]).shape[1]
        out = np.zeros((len(refs), dim), np.float32)
        for where, emb in rows:
            out[where] = emb
        return out, ok


class EncoderScorer(Scorer):
    """A model whose ``encode_image`` takes PIL images and ``encode_text`` takes strings (it preprocesses and
    tokenizes itself), e.g. :class:`clip_family.model.ClipFamilyModel`."""

    def __init__(self, model: Any, name: str = "model", precision: str = "fp32", batch_size: int = 64) -> None:
        self.model, self.name, self.precision, self.batch_size = model, name, precision, batch_size

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        chunks = [normalise(self.model.encode_text(list(texts[i:i + self.batch_size])))
                  for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)

    @torch.no_grad()
    def embed_images(self, refs: Sequence[ImageRef], log: RunLog) -> tuple[np.ndarray, np.ndarray]:
        ok = np.zeros(len(refs), bool)
        out: np.ndarray | None = None
        for start in range(0, len(refs), self.batch_size):
            batch, where = [], []
            for i in range(start, min(start + self.batch_size, len(refs))):
                try:
                    batch.append(open_ref(refs[i]))
                    where.append(i)
                except BadImage as exc:
                    log.missing(refs[i].path, str(exc))
            if batch:
                emb = normalise(self.model.encode_image(batch))  # (B, D)
                if out is None:
                    out = np.zeros((len(refs), emb.shape[1]), np.float32)
                out[where], ok[where] = emb, True
        if out is None:
            out = np.zeros((len(refs), self.embed_texts(["a"]).shape[1]), np.float32)
        return out, ok


class BackboneModel:
    """A feature-extraction :class:`~feature_extraction.backbone_base.Backbone` seen as encode_image/encode_text."""

    def __init__(self, backbone: Any) -> None:
        self.backbone = backbone

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone.encode_images(pixels.to(self.backbone.compute_dtype), grid=False)[0]  # (N, D)

    def encode_text(self, tokens: Any) -> torch.Tensor:
        return self.backbone.encode_texts(tokens)  # (N, D)


def _pooled(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class HFAutoModel:
    """transformers dirs that are not plain CLIP (SigLIP, ...): ``AutoModel`` + ``AutoProcessor``; texts padded
    to ``max_length`` as SigLIP was trained."""

    def __init__(self, source: str, device: str, dtype: torch.dtype) -> None:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        try:
            self.model = AutoModel.from_pretrained(source, dtype=dtype).to(device).eval()
            self.processor = AutoImageProcessor.from_pretrained(source)
            self.tokenizer = AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError) as exc:
            raise UsageError(f"--model hf:{source}: cannot load a transformers model ({exc})") from exc
        self.device, self.dtype = device, dtype
        self.siglip = "siglip" in self.model.config.model_type

    def preprocess(self, image: Any) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def tokenize(self, texts: list[str]) -> dict[str, torch.Tensor]:
        padding = "max_length" if self.siglip else "longest"
        return dict(self.tokenizer(texts, padding=padding, truncation=True, return_tensors="pt",
                                   max_length=self.model.config.text_config.max_position_embeddings))

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return _pooled(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype)))

    def encode_text(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        return _pooled(self.model.get_text_features(**{k: v.to(self.device) for k, v in tokens.items()}))


def load_scorer(spec: str, device: str = "cpu", precision: str = "fp32", batch_size: int = 64) -> Scorer:
    """``ViT-B/32`` / ``model.pt`` (OpenAI format) / ``hf:<dir>`` (CLIP, SigLIP) / a ``vlt5r clip-train`` model
    directory -> a scorer."""
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r}: one of {', '.join(PRECISIONS)}")
    if precision != "fp32" and not device.startswith("cuda"):
        raise UsageError(f"--precision {precision} needs a CUDA device (got {device}); the CPU evaluates in fp32")
    dtype = PRECISIONS[precision]
    if Path(spec).is_dir() and (Path(spec) / "config.json").is_file() and _hf_model_type(spec) is None:
        from clip_family.model import ClipFamilyModel

        model = ClipFamilyModel.from_pretrained(spec).to(device=device, dtype=dtype).eval()
        return EncoderScorer(model, spec, precision, batch_size)
    if spec.startswith("hf:") and _hf_model_type(spec[3:]) not in ("clip", None):
        auto = HFAutoModel(spec[3:], device, dtype)
        return ModelScorer(auto, auto.preprocess, auto.tokenize, spec, device, precision, batch_size)
    from feature_extraction.backbones import load_backbone

    backbone = load_backbone(spec, device, dtype)
    return ModelScorer(BackboneModel(backbone), backbone.preprocess, backbone.tokenize, spec, device, precision,
                       batch_size)


def _hf_model_type(source: str) -> str | None:
    config = Path(source) / "config.json"
    if not config.is_file():
        return None
    return json.loads(config.read_text(encoding="utf-8")).get("model_type")


class FeatureScorer(Scorer):
    """Images from an HDF5 feature file (``fc`` rows by id), texts from ``text_scorer``."""

    def __init__(self, features: str | Path, image_root: str | Path, text_scorer: Scorer) -> None:
        from feature_extraction.readers import open_features

        self.store = open_features(features)
        self.features, self.image_root, self.text_scorer = Path(features), Path(image_root), text_scorer
        self.name, self.precision = text_scorer.name, text_scorer.precision
        self._ids = set(self.store.ids)

    def describe(self) -> dict[str, Any]:
        return {**self.text_scorer.describe(), "scorer": "FeatureScorer", "image_features": str(self.features)}

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        return self.text_scorer.embed_texts(texts)

    def feature_id(self, ref: ImageRef) -> str | None:
        if ref.box is not None:
            raise UserError(f"{self.features}: this task crops images to boxes ({ref.path}); pre-extracted features "
                            "cannot be cropped — run it with --model only")
        path = Path(ref.path)
        try:
            rel = path.relative_to(self.image_root).with_suffix("").as_posix()
        except ValueError:
            rel = path.with_suffix("").as_posix()
        for candidate in (rel, path.stem, path.name):
            if candidate in self._ids:
                return candidate
        return None

    def embed_images(self, refs: Sequence[ImageRef], log: RunLog) -> tuple[np.ndarray, np.ndarray]:
        ids = [self.feature_id(ref) for ref in refs]
        ok = np.array([i is not None for i in ids], bool)
        for ref, i in zip(refs, ids):
            if i is None:
                log.missing(ref.path, f"no row in {self.features}")
        found = [i for i in ids if i is not None]
        fc = self.store.get_many(found).fc if found else np.zeros((0, 1), np.float32)
        out = np.zeros((len(refs), fc.shape[1]), np.float32)
        out[ok] = normalise(fc)
        return out, ok
