"""The extraction driver: list -> (resume bookkeeping) -> DataLoader -> model -> spool -> consolidated HDF5.

Reads top to bottom like nanoGPT's loop; each stage lives in its own module (``inputs``/``decode``/``loader``
read, ``backbones`` encode, ``spool``/``spool_writer``/``writer`` write), as in clip-retrieval's inference
split.  :func:`extract` is the one entry point (the CLI ``clip_prepro_feats.py`` and the demo call it).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from feature_extraction.backbones import Backbone, load_backbone
from feature_extraction.config import ExtractConfig
from foundations.device import resolve_device
from foundations.errors import UsageError
from feature_extraction.inputs import Listing, Skip, list_inputs
from feature_extraction.loader import make_loader
from feature_extraction.spool import Spool, consolidate, exclusive_run
from feature_extraction.spool_writer import SpoolWriter
from feature_extraction.store import FORMAT_NAME, FORMAT_VERSION, FeatureFileError, H5FeatureStore
from feature_extraction.writer import COMPAT_KEYS, Block, attrs_mismatch, read_skip_record
from foundations.io import atomic_replace

logger = logging.getLogger(__name__)


@dataclass
class ExtractSummary:
    out: Path
    written: int = 0  # rows encoded by this run
    total_rows: int = 0  # rows in the final file
    skipped: Counter[str] = field(default_factory=Counter)  # this run's skips, by category
    elapsed: float = 0.0  # whole run: listing, model load, encoding, consolidation
    encode_seconds: float = 0.0  # the encoding loop alone (the rate shown)
    nothing_to_do: bool = False
    sidecar: Path | None = None

    def text(self) -> str:
        skipped = ", ".join(f"{n} {c}" for c, n in sorted(self.skipped.items())) or "none"
        if self.nothing_to_do:
            head = f"nothing to do: {self.out} already holds all {self.total_rows} items"
        else:
            rate = self.written / self.encode_seconds if self.encode_seconds > 0 else 0.0
            head = f"written {self.written} ({rate:.1f} items/s), file now {self.total_rows} rows: {self.out}"
        tail = f" (listed in {self.sidecar})" if self.sidecar and sum(self.skipped.values()) else ""
        return f"{head}\nskipped {sum(self.skipped.values())}: {skipped}{tail}\nelapsed {self.elapsed:.1f} s"


def build_attrs(backbone: Backbone, cfg: ExtractConfig) -> dict[str, Any]:
    """The feature file's attributes (DESIGN.md §3). Deterministic: no timestamps, so reruns compare equal."""
    attrs: dict[str, Any] = dict(
        format_name=FORMAT_NAME, format_version=FORMAT_VERSION, modality=cfg.modality, backbone=cfg.backbone,
        backbone_family=backbone.family, backbone_arch=backbone.arch, backbone_path=backbone.weights_path,
        backbone_sha256=backbone.weights_sha256, fc_dim=backbone.fc_dim, dtype=cfg.dtype,
        num_shards=cfg.shard.num_shards, shard_id=cfg.shard.shard_id, has_grid=cfg.grid and cfg.modality == "image")
    if cfg.modality == "image":
        attrs.update(image_size=backbone.image_size, native_image_size=backbone.native_image_size,
                     pos_embed_interpolated=backbone.image_size != backbone.native_image_size,
                     grid_hw=list(backbone.grid_hw), grid_dim=backbone.grid_dim if attrs["has_grid"] else 0,
                     preprocessing=backbone.preprocessing)
    else:
        attrs.update(tokenization=backbone.tokenization)
    return attrs


def read_existing(out: Path, attrs: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(written ids, skipped ids) of an existing output; refuses one written with other settings."""
    if not out.exists():
        return set(), set()
    try:
        store = H5FeatureStore(out)
    except (FeatureFileError, OSError) as exc:
        raise UsageError(f"--out {out} exists but is not a feature file written by this tool ({exc})") from exc
    with store:
        problems, cfg_backbone = attrs_mismatch(store.attrs, attrs), attrs["backbone"]
        if problems:
            raise UsageError(f"--out {out} was written with backbone {store.attrs.get('backbone')!r} and other "
                             f"settings than this run ({cfg_backbone!r}): {'; '.join(problems)}; refusing to append, "
                             "use another --out or the same settings")
        written = set(store.ids)
    return written, {s.item_id for s in read_skip_record(out)}


def write_sidecar(out: Path, skipped: list[Skip]) -> Path | None:
    """``feats.h5`` -> ``feats.skipped.tsv``: id, category, detail, source of every item not in the file."""
    path = out.with_suffix(".skipped.tsv")
    if not skipped:
        path.unlink(missing_ok=True)
        return None
    tmp = path.with_name(path.name + ".tmp")
    clean = [[str(v).replace("\t", " ").replace("\n", " ") for v in (s.item_id, s.category, s.detail, s.source)]
             for s in skipped]
    tmp.write_text("id\tcategory\tdetail\tsource\n" + "".join("\t".join(row) + "\n" for row in clean))
    atomic_replace(tmp, path)
    return path


def to_numpy(x: torch.Tensor, dtype: str) -> np.ndarray:
    return x.detach().to("cpu", torch.float32 if dtype == "float32" else x.dtype).numpy().astype(dtype, copy=False)


def encode_all(todo: Listing, backbone: Backbone, cfg: ExtractConfig, writer: SpoolWriter) -> None:
    """The hot loop: the DataLoader's workers decode ahead, the model encodes, the writer thread stores."""
    on_cuda = backbone.device.startswith("cuda")
    loader = make_loader(todo, cfg.batch_size, cfg.decode_workers(backbone.device), backbone.preprocess,
                         backbone.tokenize, cfg.max_pixels, pin_memory=on_cuda)
    want_grid = cfg.grid and cfg.modality == "image"
    grid_shape = (backbone.grid_hw[0] * backbone.grid_hw[1], backbone.grid_dim)
    delay = float(os.environ.get("VLT5_EXTRACT_TEST_DELAY", "0"))  # test-only: slow down to kill mid-run
    unit = "img" if cfg.modality == "image" else "text"
    with torch.inference_mode(), tqdm(total=len(todo.ids), unit=unit, disable=not cfg.progress,
                                      mininterval=1.0, dynamic_ncols=True) as bar:
        for batch in loader:
            if batch.ids and cfg.modality == "image":
                pixels = batch.inputs.to(backbone.device, non_blocking=on_cuda)  # type: ignore[union-attr]
                fc, grid = backbone.encode_images(pixels, want_grid)  # (B, D), (B, T, C)
            elif batch.ids:
                fc, grid = backbone.encode_texts(batch.inputs), None  # type: ignore[arg-type]
            else:  # every item of this batch was skipped
                fc = torch.empty(0, backbone.fc_dim)
                grid = torch.empty(0, *grid_shape) if want_grid else None
            writer.put(Block(batch.ids, to_numpy(fc, cfg.dtype), None if grid is None else to_numpy(grid, cfg.dtype)),
                       batch.skipped)
            for s in batch.skipped:
                logger.warning("skipped %s: %s (%s)", s.item_id, s.category, s.detail)
            bar.update(len(batch.ids) + len(batch.skipped))
            if delay:
                time.sleep(delay)


def _resume_or_run(out: Path, listing: Listing, backbone: Backbone, attrs: dict[str, Any],
                   cfg: ExtractConfig) -> ExtractSummary:
    """Everything that touches ``out`` and its spool (called with the run lock held)."""
    written_before, skipped_before = read_existing(out, attrs)
    spool = Spool(out)
    meta = {k: attrs.get(k) for k in COMPAT_KEYS} | {"backbone": cfg.backbone, "batch_size": cfg.batch_size}
    in_chunks = spool.recover(meta, written_before | skipped_before)
    done = written_before | in_chunks | (set() if cfg.retry_skipped else skipped_before)
    keep = [n for n, i in enumerate(listing.ids) if i not in done]
    todo = Listing(listing.modality, [listing.ids[n] for n in keep], [listing.sources[n] for n in keep],
                   listing.skipped, listing.text_file)
    summary = ExtractSummary(out, skipped=Counter(s.category for s in listing.skipped))
    for s in listing.skipped:
        logger.warning("skipped %s (%s): %s (%s)", s.item_id, s.source, s.category, s.detail)

    if out.exists() and not todo.ids and not spool.chunks():
        spool.remove()
        summary.nothing_to_do, summary.total_rows = True, len(written_before)
        return summary
    logger.info("%s: %d to encode, %d already done, batch %d, device %s", out, len(todo.ids),
                len(listing.ids) - len(todo.ids), cfg.batch_size, backbone.device)
    grid_shape = (backbone.grid_hw[0] * backbone.grid_hw[1], backbone.grid_dim) if attrs["has_grid"] else None
    chunks = spool.chunks()
    first_chunk = int(chunks[-1].stem.split("-")[1]) + 1 if chunks else 0
    writer = SpoolWriter(spool, first_chunk, cfg.batches_per_chunk, backbone.fc_dim, grid_shape, cfg.dtype)
    threads_before = torch.get_num_threads()
    if not backbone.device.startswith("cuda"):
        torch.set_num_threads(cfg.cpu_threads())
        logger.info("CPU forward on %d threads, %d decoding workers", cfg.cpu_threads(), cfg.decode_workers("cpu"))
    encode_start = time.perf_counter()
    try:
        encode_all(todo, backbone, cfg, writer)
    finally:
        stats = writer.close()
        torch.set_num_threads(threads_before)
    summary.encode_seconds = time.perf_counter() - encode_start
    summary.written = stats.rows
    summary.skipped.update(s.category for s in stats.skipped)
    summary.total_rows, _ = consolidate(spool, attrs, backbone.fc_dim, grid_shape, cfg.dtype)
    return summary


def extract(cfg: ExtractConfig) -> ExtractSummary:
    """Run (or resume, or append to) one extraction; see ``docs/extraction.md``."""
    start = time.perf_counter()
    out = cfg.shard.output_path(Path(cfg.out))
    listing = list_inputs(cfg.images, cfg.image_list, cfg.texts)
    if not listing.ids and not listing.skipped:
        raise UsageError(f"found nothing to encode in {cfg.images or cfg.image_list or cfg.texts}")
    listing = listing.shard(cfg.shard, cfg.batch_size)
    device = resolve_device(cfg.device)
    on_cuda = device.startswith("cuda")
    if cfg.dtype == "float16" and not on_cuda:
        logger.info("--dtype float16 on %s: computing in float32, storing float16", device)
    compute_dtype = torch.float16 if cfg.dtype == "float16" and on_cuda else torch.float32
    backbone = load_backbone(cfg.backbone, device, compute_dtype, cfg.image_size if cfg.modality == "image" else None)
    attrs = build_attrs(backbone, cfg)

    with exclusive_run(out):
        summary = _resume_or_run(out, listing, backbone, attrs, cfg)
    summary.sidecar = write_sidecar(out, read_skip_record(out) + listing.skipped)
    summary.elapsed = time.perf_counter() - start
    return summary


def extract_folder(images: str | Path, out: str | Path, backbone: str | Path, **options: Any) -> ExtractSummary:
    """One call for scripts and the demo: ``extract(ExtractConfig(images=..., out=..., backbone=..., **options))``;
    ``options`` are the other :class:`ExtractConfig` fields (``batch_size``, ``num_workers``, ``dtype``, ...)."""
    return extract(ExtractConfig(out=Path(out), backbone=str(backbone), images=Path(images), **options))
