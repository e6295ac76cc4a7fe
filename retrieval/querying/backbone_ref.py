"""Which CLIP backbone turns a *new* query image (or question) into features: resolved from metadata, sha-checked.

A query image must go through the same CLIP weights and image size as the features the encoder was trained on
(joint encoder) or the KB was indexed with (CLIP baselines). The record is looked up, first match wins:

1. the encoder directory: ``backbone.json`` (:func:`write_backbone_record`), else ``train_config.json``'s
   ``data.query_features`` file (written by ``python -m retrieval.train``), whose attrs name the backbone;
2. the index directory's ``index.json`` ``source.attrs`` (the KB feature file's attrs);
3. ``--backbone`` alone (nothing recorded: nothing to verify).

``--backbone`` also overrides *where* the weights are (a moved file), but a recorded ``backbone_sha256`` is still
verified after loading: a different file is refused with one line naming both hashes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from feature_extraction.backbones import Backbone, file_sha256, load_backbone
from foundations.config import load_json
from foundations.errors import UsageError
from foundations.errors import UserError

logger = logging.getLogger(__name__)

BACKBONE_RECORD = "backbone.json"
RECORD_KEYS = ("backbone", "backbone_family", "backbone_path", "backbone_sha256", "image_size", "grid_hw")


class BackboneMismatch(UserError):
    """The weights found are not the ones recorded (sha256 differs), or no weights can be found."""


@dataclass(frozen=True)
class BackboneRef:
    """What to load (``spec`` for :func:`load_backbone`) and what it must hash to."""

    spec: str
    sha256: str | None
    image_size: int | None
    source: str  # where the record came from, for messages

    def load(self, device: str = "cpu") -> Backbone:
        """Load the backbone (fp32) and refuse it when its sha256 is not the recorded one: a weights file named by a
        path is hashed *before* any loader opens it (a ``.pt`` is a pickle), a named or directory backbone after."""
        if self.sha256 and Path(self.spec).is_file():
            self._refuse_other(file_sha256(self.spec), "not loaded")
        try:
            backbone = load_backbone(self.spec, device, torch.float32, self.image_size)
        except UsageError as exc:
            raise BackboneMismatch(f"backbone {self.spec!r} ({self.source}): {exc}") from None
        if self.sha256:
            self._refuse_other(backbone.weights_sha256, "")
        logger.info("backbone %s (%s, sha256 %s…, %d px)", self.spec, self.source,
                    backbone.weights_sha256[:12], backbone.image_size)
        return backbone

    def _refuse_other(self, sha256: str, note: str) -> None:
        if sha256 != self.sha256:
            raise BackboneMismatch(f"backbone {self.spec!r} has sha256 {sha256[:16]}…, but {self.source} records "
                                   f"{str(self.sha256)[:16]}… (the features were made with other weights; pass "
                                   f"--backbone with the recorded file){'; ' + note if note else ''}")


def record_from_attrs(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """The backbone fields of a feature file's attrs, or None when it names no backbone."""
    if not attrs.get("backbone") or attrs.get("backbone") == "random":
        return None
    return {k: attrs[k] for k in RECORD_KEYS if attrs.get(k) is not None}


def write_backbone_record(encoder_dir: str | Path, attrs: dict[str, Any]) -> Path:
    """Store the backbone of the query features (their attrs) next to a saved encoder."""
    record = record_from_attrs(attrs)
    if record is None:
        raise ValueError("these feature attrs name no backbone")
    path = Path(encoder_dir) / BACKBONE_RECORD
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def encoder_record(encoder_dir: str | Path) -> tuple[dict[str, Any], str] | None:
    """(record, where) from an encoder directory: ``backbone.json``, else the training run's query features."""
    directory = Path(encoder_dir)
    if (directory / BACKBONE_RECORD).is_file():
        record = load_json(directory / BACKBONE_RECORD)
        if not isinstance(record, dict) or not record.get("backbone"):
            raise BackboneMismatch(f"{directory / BACKBONE_RECORD}: expected an object naming a 'backbone'")
        return record, str(directory / BACKBONE_RECORD)
    train_config = directory / "train_config.json"
    if train_config.is_file():
        features = json.loads(train_config.read_text(encoding="utf-8")).get("data", {}).get("query_features")
        if features and Path(features).is_file():
            from feature_extraction.readers import open_features

            with open_features(features) as store:
                record = record_from_attrs(store.attrs)
            if record is not None:
                return record, f"{features} (query features of {train_config})"
    return None


def index_record(source: dict[str, Any], index_dir: str | Path) -> tuple[dict[str, Any], str] | None:
    """(record, where) from an index's ``source`` metadata (the KB feature file's attrs)."""
    record = record_from_attrs(source.get("attrs", {}) or {})
    return (record, f"{Path(index_dir) / 'index.json'}") if record is not None else None


def _recorded_spec(record: dict[str, Any], where: str) -> str:
    """A loadable spec from a record: the absolute weights path when it still exists, else the spec as given."""
    spec = str(record["backbone"])
    if spec.startswith("hf:") or record.get("backbone_family") == "hf-clip":
        return spec
    path = record.get("backbone_path")
    if record.get("backbone_family") == "clip-family":  # a model directory (an mCLIP): its weights file's folder
        for directory in (spec, str(Path(path).parent) if path else None):
            if directory and Path(directory).is_dir():
                return directory
    if path and Path(path).is_file():
        return str(path)
    if Path(spec).is_file():
        return spec
    import clip

    if spec in clip.available_models():
        return spec
    raise BackboneMismatch(f"{where} records backbone {spec!r} ({path or 'no path'}), which is not here: "
                           "pass --backbone PATH to the same weights")


def resolve_backbone(records: list[tuple[dict[str, Any], str] | None], override: str | None) -> BackboneRef:
    """The first available record (see the module docstring), with ``override`` as the weights' location."""
    found = next((r for r in records if r is not None), None)
    if found is None:
        if override is None:
            raise BackboneMismatch("no backbone is recorded in the encoder directory or the index: pass --backbone")
        return BackboneRef(override, None, None, "--backbone")
    record, where = found
    spec = override or _recorded_spec(record, where)
    size = record.get("image_size")
    return BackboneRef(spec, record.get("backbone_sha256"), int(size) if size else None, where)
