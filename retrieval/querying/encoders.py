"""Query encoders behind one small protocol: a question and/or an image -> one vector in the KB's CLIP space.

Three kinds, picked by :func:`load_encoder` from a spec string (a dict-literal registry with lazy builders):

* ``DIR`` — a saved :class:`vlt5.QueryEncoder` (joint question + image; the image's CLIP fc + grid are computed
  with the backbone recorded for the encoder, see :mod:`retrieval.querying.backbone_ref`);
* ``clip-image[:BACKBONE]`` — the image's CLIP embedding alone (ViQuAE's image-only baseline);
* ``clip-text[:BACKBONE]`` — the question's CLIP text embedding alone.

``encode_queries`` takes decoded images (CLI ``--image``, server uploads); ``encode_stored`` takes queries whose
image is an id in a feature file (``--queries`` mode), so no image is decoded twice. The torch part of every
call runs under a per-encoder lock: fast tokenizers are not re-entrant, and on a CPU concurrent forwards only
contend for the same cores.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from feature_extraction.backbones import Backbone
from feature_extraction.store import FeatureStore, MemoryFeatureStore
from retrieval.formats import Query
from retrieval.querying.backbone_ref import BackboneMismatch, BackboneRef, encoder_record, resolve_backbone
from retrieval.querying.features import encode_with_features
from foundations.errors import UserError

logger = logging.getLogger(__name__)


class QueryEncoderLike(Protocol):
    spec: str
    needs_image: bool
    needs_question: bool

    def describe(self) -> dict[str, Any]: ...

    def load(self) -> None: ...

    def encode_query(self, question: str | None, image: Image.Image | None) -> np.ndarray: ...

    def encode_queries(self, questions: Sequence[str | None], images: Sequence[Image.Image | None]) -> np.ndarray: ...

    def encode_stored(self, queries: Sequence[Query], features: FeatureStore | None,
                      text_features: FeatureStore | None) -> np.ndarray: ...


def check_feature_backbone(store: FeatureStore, ref: BackboneRef, what: str) -> None:
    """Refuse a feature file made with other weights than the recorded backbone (when both are known)."""
    sha = store.attrs.get("backbone_sha256")
    if sha and ref.sha256 and sha != ref.sha256:
        raise BackboneMismatch(f"{store.path}: {what} were extracted with backbone sha256 {sha[:16]}…, but "
                               f"{ref.source} records {ref.sha256[:16]}… (another CLIP model)")


class _ClipEncoder:
    """Shared by the three kinds: a backbone loaded once (lazily), a lock around torch."""

    needs_image = True
    needs_question = False
    kind = "clip"

    def __init__(self, spec: str, ref: BackboneRef, device: str) -> None:
        self.spec, self.ref, self.device = spec, ref, device
        self._backbone: Backbone | None = None
        self._lock = threading.Lock()

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            self._backbone = self.ref.load(self.device)
        return self._backbone

    def load(self) -> None:
        """Load everything now (the server does this once at start-up)."""
        _ = self.backbone

    def describe(self) -> dict[str, Any]:
        out = {"encoder": self.spec, "kind": self.kind, "backbone": self.ref.spec,
               "backbone_sha256": self.ref.sha256, "backbone_source": self.ref.source}
        if self._backbone is not None:
            out.update(backbone_sha256=self._backbone.weights_sha256, image_size=self._backbone.image_size)
        return out

    def encode_query(self, question: str | None, image: Image.Image | None) -> np.ndarray:
        return self.encode_queries([question], [image])[0]  # (D,)

    def _check_inputs(self, questions: Sequence[str | None], images: Sequence[Image.Image | None]) -> None:
        if len(questions) != len(images):
            raise ValueError(f"{len(questions)} questions but {len(images)} images")
        if self.needs_image and any(i is None for i in images):
            raise UserError(f"encoder {self.spec!r} needs an image for every query")
        if self.needs_question and any(not q for q in questions):
            raise UserError(f"encoder {self.spec!r} needs a question for every query")

    def _image_features(self, images: Sequence[Image.Image], grid: bool) -> tuple[np.ndarray, np.ndarray | None]:
        backbone = self.backbone
        pixels = torch.stack([backbone.preprocess(im) for im in images]).to(self.device)  # (B, 3, S, S)
        with torch.inference_mode():
            fc, g = backbone.encode_images(pixels.to(backbone.compute_dtype), grid)  # (B, D), (B, T, C)
        return fc.float().cpu().numpy(), None if g is None else g.float().cpu().numpy()


def _checked_image_features(queries: Sequence[Query], features: FeatureStore | None, ref: BackboneRef,
                            who: str) -> FeatureStore:
    """The query image feature file, checked: given, made by the encoder's backbone, and every query has an image."""
    if features is None:
        raise UserError(f"{who} needs the query image features (--query-features)")
    check_feature_backbone(features, ref, "the query image features")
    missing = [q.id for q in queries if q.image is None]
    if missing:
        raise UserError(f"queries {missing[:5]} have no image; {who} needs one")
    return features


class ClipImageEncoder(_ClipEncoder):
    kind = "clip-image"

    def encode_queries(self, questions: Sequence[str | None], images: Sequence[Image.Image | None]) -> np.ndarray:
        self._check_inputs(questions, images)
        with self._lock:
            return self._image_features([im for im in images if im is not None], grid=False)[0]  # (B, D)

    def encode_stored(self, queries: Sequence[Query], features: FeatureStore | None,
                      text_features: FeatureStore | None) -> np.ndarray:
        features = _checked_image_features(queries, features, self.ref, "clip-image")
        return np.asarray(features.get_many([q.image for q in queries]).fc, dtype=np.float32)  # (Q, D)


class ClipTextEncoder(_ClipEncoder):
    kind = "clip-text"
    needs_image = False
    needs_question = True

    def encode_queries(self, questions: Sequence[str | None], images: Sequence[Image.Image | None]) -> np.ndarray:
        self._check_inputs(questions, images)
        backbone = self.backbone
        with self._lock, torch.inference_mode():
            tokens = backbone.tokenize([q or "" for q in questions])
            return backbone.encode_texts(tokens).float().cpu().numpy()  # (B, D)

    def encode_stored(self, queries: Sequence[Query], features: FeatureStore | None,
                      text_features: FeatureStore | None) -> np.ndarray:
        if text_features is None:  # no stored question features: encode the questions now
            return self.encode_queries([q.question for q in queries], [None] * len(queries))
        check_feature_backbone(text_features, self.ref, "the question features")
        return np.asarray(text_features.get_many([q.id for q in queries]).fc, dtype=np.float32)  # (Q, D)


class JointQueryEncoder(_ClipEncoder):
    """A saved :class:`vlt5.QueryEncoder` + the CLIP backbone that makes its image features."""

    kind = "joint"

    def __init__(self, spec: str, ref: BackboneRef, device: str) -> None:
        from vlt5 import QueryEncoder

        super().__init__(spec, ref, device)
        self.model = QueryEncoder.from_pretrained(spec).to(device).eval()

    @property
    def dim(self) -> int:
        return int(self.model.config.proj_dim)

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            backbone = self.ref.load(self.device)
            inputs, feat_dim = self.model.config.inputs, self.model.config.model.visual.feat_dim
            if inputs.grid and backbone.grid_dim != feat_dim:
                raise BackboneMismatch(f"{self.spec}: the encoder takes grid features of dim {feat_dim}, backbone "
                                       f"{self.ref.spec} makes {backbone.grid_dim}")
            self._backbone = backbone
        return self._backbone

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "dim": self.dim}

    def encode_queries(self, questions: Sequence[str | None], images: Sequence[Image.Image | None]) -> np.ndarray:
        self._check_inputs(questions, images)
        ids = [f"query{i}" for i in range(len(images))]
        with self._lock:
            fc, grid = self._image_features([im for im in images if im is not None],
                                            grid=self.model.config.inputs.grid)
            store = MemoryFeatureStore(ids, fc, grid, {"grid_hw": list(self.backbone.grid_hw)})
            return encode_with_features(self.model, store, [q or "" for q in questions], ids)  # (B, D)

    def encode_stored(self, queries: Sequence[Query], features: FeatureStore | None,
                      text_features: FeatureStore | None) -> np.ndarray:
        features = _checked_image_features(queries, features, self.ref, "a joint encoder")
        with self._lock:
            return encode_with_features(self.model, features, [q.question for q in queries],
                                        [q.image for q in queries])  # (Q, D)


# -- registry --------------------------------------------------------------------------------------------------
IndexRecord = tuple[dict[str, Any], str] | None
Builder = Callable[[str, str, IndexRecord, str | None, str], QueryEncoderLike]


def _clip(cls: type[_ClipEncoder]) -> Builder:
    def build(spec: str, arg: str, index_rec: IndexRecord, backbone: str | None, device: str) -> QueryEncoderLike:
        return cls(spec, resolve_backbone([index_rec], arg or backbone), device)

    return build


def _joint(spec: str, arg: str, index_rec: IndexRecord, backbone: str | None, device: str) -> QueryEncoderLike:
    if not Path(arg).is_dir():
        raise UserError(f"--encoder {arg!r}: not a saved query encoder directory, nor clip-image[:BACKBONE] / "
                         "clip-text[:BACKBONE]")
    return JointQueryEncoder(arg, resolve_backbone([encoder_record(arg), index_rec], backbone), device)


ENCODERS: dict[str, Builder] = {
    "clip-image": _clip(ClipImageEncoder),
    "clip-text": _clip(ClipTextEncoder),
    "joint": _joint,
}


def load_encoder(spec: str, *, index_record: IndexRecord = None, backbone: str | None = None,
                 device: str = "cpu") -> QueryEncoderLike:
    """``DIR`` (joint), ``clip-image[:BACKBONE]`` or ``clip-text[:BACKBONE]``. ``index_record`` is the index's
    backbone record (:func:`retrieval.querying.backbone_ref.index_record`); ``backbone`` is ``--backbone``."""
    kind, _, arg = spec.partition(":")
    if kind not in ENCODERS or kind == "joint":
        kind, arg = "joint", spec
    return ENCODERS[kind](spec, arg, index_record, backbone, device)
