"""The extraction driver: list -> (resume bookkeeping) -> DataLoader -> model -> spool -> consolidated HDF5.

Reads top to bottom like nanoGPT's loop; each stage lives in its own module (``inputs``/``decode``/``loader``
read, ``backbones`` encode, ``spool``/``spool_writer``/``writer`` write), as in clip-retrieval's inference
split.  :func:`extract` is the one entry point (the CLI ``clip_prepro_feats.py`` and the demo call it).
"""

from __future__ import annotations

import dataclasses
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
from feature_extraction.inputs import Listing, Skip, list_inputs, text_of_name
from feature_extraction.device_decode import DeviceDecoder
from feature_extraction.loader import Batch, make_loader
from feature_extraction.speed import (auto_batch_size, autocast, compile_tower, pad_batch, prepare_tower,
                                      resolve_precision, to_device, use_channels_last, weights_dtype)
from feature_extraction.spool import Spool, consolidate, exclusive_run
from feature_extraction.spool_writer import SpoolWriter
from feature_extraction.store import FORMAT_NAME, FORMAT_VERSION, FeatureFileError, H5FeatureStore
from feature_extraction.writer import COMPAT_KEYS, Block, attrs_mismatch, read_skip_record
from foundations.io import atomic_replace, check_writable_dir

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
    compile_seconds: float = 0.0  # --compile: the warm-up batch (the compile itself), not in the rate
    decoded_on_cpu: Counter[str] = field(default_factory=Counter)  # --decode gpu: files the CPU decoded, by reason

    def text(self) -> str:
        skipped = ", ".join(f"{n} {c}" for c, n in sorted(self.skipped.items())) or "none"
        if self.nothing_to_do:
            head = f"nothing to do: {self.out} already holds all {self.total_rows} items"
        else:
            rate = self.written / self.encode_seconds if self.encode_seconds > 0 else 0.0
            head = f"written {self.written} ({rate:.1f} items/s), file now {self.total_rows} rows: {self.out}"
        tail = f" (listed in {self.sidecar})" if self.sidecar and sum(self.skipped.values()) else ""
        extra = ""
        if self.decoded_on_cpu:
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(self.decoded_on_cpu.items()))
            extra += f"\ndecoded on the CPU instead of the device: {sum(self.decoded_on_cpu.values())}: {reasons}"
        if self.compile_seconds:
            extra += f"\ntorch.compile warm-up {self.compile_seconds:.1f} s (not in the rate)"
        return (f"{head}\nskipped {sum(self.skipped.values())}: {skipped}{tail}{extra}\n"
                f"elapsed {self.elapsed:.1f} s")


def build_attrs(backbone: Backbone, cfg: ExtractConfig) -> dict[str, Any]:
    """The feature file's attributes (DESIGN.md §3). Deterministic: no timestamps, so reruns compare equal."""
    attrs: dict[str, Any] = dict(
        format_name=FORMAT_NAME, format_version=FORMAT_VERSION, modality=cfg.modality, backbone=cfg.backbone,
        backbone_family=backbone.family, backbone_arch=backbone.arch, backbone_path=backbone.weights_path,
        backbone_sha256=backbone.weights_sha256, fc_dim=backbone.fc_dim, dtype=cfg.dtype, precision=cfg.precision,
        num_shards=cfg.shard.num_shards, shard_id=cfg.shard.shard_id, has_grid=cfg.grid and cfg.modality == "image")
    if cfg.modality == "image":
        attrs.update(image_size=backbone.image_size, native_image_size=backbone.native_image_size,
                     pos_embed_interpolated=backbone.image_size != backbone.native_image_size,
                     grid_hw=list(backbone.grid_hw), grid_dim=backbone.grid_dim if attrs["has_grid"] else 0,
                     preprocessing=backbone.preprocessing, decode=cfg.decode)
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
        problems, cfg_backbone = attrs_mismatch(legacy_defaults(store.attrs), attrs), attrs["backbone"]
        if problems:
            raise UsageError(f"--out {out} was written with backbone {store.attrs.get('backbone')!r} and other "
                             f"settings than this run ({cfg_backbone!r}): {'; '.join(problems)}; refusing to append, "
                             "use another --out or the same settings")
        written = set(store.ids)
    return written, {s.item_id for s in read_skip_record(out)}


def legacy_defaults(attrs: Any) -> dict[str, Any]:
    """A file written before ``precision`` / ``decode`` were recorded was decoded on the CPU, and computed in fp32
    when stored as float32 (a float16 one: fp16 on a GPU, fp32 on a CPU; unknown, so appending to it is refused)."""
    have = dict(attrs)
    if "precision" not in have and have.get("dtype") == "float32":
        have["precision"] = "fp32"
    if "decode" not in have and have.get("modality") == "image":
        have["decode"] = "cpu"
    return have


def write_sidecar(out: Path, skipped: list[Skip]) -> Path | None:
    """``feats.h5`` -> ``feats.skipped.tsv``: id, category, detail, source of every item not in the file."""
    path = out.with_suffix(".skipped.tsv")
    if not skipped:
        path.unlink(missing_ok=True)
        return None
    tmp = path.with_name(path.name + ".tmp")
    fields = ("item_id", "category", "detail", "source")
    clean = [[text_of_name(str(getattr(s, f))).replace("\t", " ").replace("\n", " ") for f in fields] for s in skipped]
    tmp.write_text("id\tcategory\tdetail\tsource\n" + "".join("\t".join(row) + "\n" for row in clean), encoding="utf-8")
    atomic_replace(tmp, path)
    return path


def to_numpy(x: torch.Tensor, dtype: str) -> np.ndarray:
    """``x`` as a numpy array of the stored ``dtype`` (bf16 goes through float32: numpy has no bfloat16)."""
    wide = dtype == "float32" or x.dtype == torch.bfloat16
    return x.detach().to("cpu", torch.float32 if wide else x.dtype).numpy().astype(dtype, copy=False)


def encode_all(todo: Listing, backbone: Backbone, cfg: ExtractConfig, writer: SpoolWriter,
               channels_last: bool = False) -> Counter[str]:
    """The hot loop: the DataLoader's workers decode ahead (or, with ``--decode gpu``, read JPEG bytes that the
    device decodes here), the model encodes at ``cfg.precision``, the writer thread stores. Returns the files the
    CPU decoded instead of the device, by reason."""
    on_cuda = backbone.device.startswith("cuda")
    device_decode = cfg.decode == "gpu" and cfg.modality == "image"
    loader = make_loader(todo, cfg.batch_size, cfg.decode_workers(backbone.device), backbone.preprocess,
                         backbone.tokenize, cfg.max_pixels, pin_memory=on_cuda, device_decode=device_decode)
    decoder = DeviceDecoder(backbone.device, backbone.tensor_preprocess, backbone.preprocess,  # type: ignore[arg-type]
                            cfg.max_pixels) if device_decode else None
    on_cpu: Counter[str] = Counter()
    pad_to = cfg.batch_size if cfg.compile and cfg.modality == "image" else 0  # one shape for the compiled graph
    want_grid = cfg.grid and cfg.modality == "image"
    grid_shape = (backbone.grid_hw[0] * backbone.grid_hw[1], backbone.grid_dim)
    delay = float(os.environ.get("VLT5_EXTRACT_TEST_DELAY", "0"))  # test-only: slow down to kill mid-run
    unit = "img" if cfg.modality == "image" else "text"
    with torch.inference_mode(), tqdm(total=len(todo.ids), unit=unit, disable=not cfg.progress,
                                      mininterval=1.0, dynamic_ncols=True) as bar:
        for batch in loader:
            if decoder is not None and batch.ids:
                decoded = decoder(batch.ids, batch.inputs)  # type: ignore[arg-type]
                for item_id, reason, detail in decoded.on_cpu:
                    logger.info("%s: decoded on the CPU: %s (%s)", item_id, reason, detail)
                    on_cpu[reason] += 1
                batch = Batch(decoded.ids, decoded.pixels, batch.skipped + decoded.skipped)
            if batch.ids and cfg.modality == "image":
                n = batch.inputs.shape[0]  # type: ignore[union-attr]
                pixels = pad_batch(batch.inputs, pad_to)  # type: ignore[arg-type]
                pixels = to_device(pixels, backbone.device, channels_last)
                with autocast(backbone.device, cfg.precision):  # type: ignore[arg-type]
                    fc, grid = backbone.encode_images(pixels, want_grid)  # (B, D), (B, T, C)
                fc, grid = fc[:n], None if grid is None else grid[:n]
            elif batch.ids:
                with autocast(backbone.device, cfg.precision):  # type: ignore[arg-type]
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
    return on_cpu


def _resume_or_run(out: Path, listing: Listing, backbone: Backbone, attrs: dict[str, Any],
                   cfg: ExtractConfig, channels_last: bool = False) -> ExtractSummary:
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
    logger.info("%s: %d to encode, %d already done, batch %d, device %s, precision %s, decode %s", out,
                len(todo.ids), len(listing.ids) - len(todo.ids), cfg.batch_size, backbone.device, cfg.precision,
                cfg.decode)
    grid_shape = (backbone.grid_hw[0] * backbone.grid_hw[1], backbone.grid_dim) if attrs["has_grid"] else None
    chunks = spool.chunks()
    first_chunk = int(chunks[-1].stem.split("-")[1]) + 1 if chunks else 0
    writer = SpoolWriter(spool, first_chunk, cfg.batches_per_chunk, backbone.fc_dim, grid_shape, cfg.dtype)
    threads_before = torch.get_num_threads()
    if not backbone.device.startswith("cuda"):
        torch.set_num_threads(cfg.cpu_threads())
        logger.info("CPU forward on %d threads, %d decoding workers", cfg.cpu_threads(), cfg.decode_workers("cpu"))
    try:
        if cfg.compile and cfg.modality == "image":
            summary.compile_seconds = compile_tower(
                backbone, cfg.batch_size, attrs["has_grid"], cfg.precision, channels_last)  # type: ignore[arg-type]
        elif cfg.compile:
            logger.warning("--compile: only image towers are compiled; texts run eagerly")
        encode_start = time.perf_counter()
        summary.decoded_on_cpu = encode_all(todo, backbone, cfg, writer, channels_last)
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
    check_writable_dir(out.parent)  # before the listing and the model: one line, not a failure an hour in
    listing = list_inputs(cfg.images, cfg.image_list, cfg.texts)
    if not listing.ids and not listing.skipped:
        raise UsageError(f"found nothing to encode in {cfg.images or cfg.image_list or cfg.texts}")
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if cfg.decode == "gpu" and not device.startswith("cuda"):
        logger.warning("--decode gpu on %s: torchvision decodes the JPEGs on the CPU, in the main process", device)
    logger.info("computing in %s, storing %s, on %s", precision, cfg.dtype, device)
    backbone = load_backbone(cfg.backbone, device, weights_dtype(precision),
                             cfg.image_size if cfg.modality == "image" else None)
    if cfg.decode == "gpu" and backbone.tensor_preprocess is None:
        raise UsageError(f"--decode gpu: {cfg.backbone} preprocesses with its own image processor ({backbone.family});"
                         " the device path reproduces CLIP's transform only (OpenAI-format models): use --decode cpu")
    channels_last = cfg.modality == "image" and use_channels_last(cfg.channels_last, precision) and \
        prepare_tower(backbone)
    batch_size = auto_batch_size(backbone, cfg.modality, precision, cfg.grid, channels_last) \
        if cfg.batch_size == "auto" else cfg.batch_size
    cfg = dataclasses.replace(cfg, precision=precision, batch_size=batch_size)
    listing = listing.shard(cfg.shard, batch_size)  # type: ignore[arg-type]
    attrs = build_attrs(backbone, cfg)

    with exclusive_run(out):
        summary = _resume_or_run(out, listing, backbone, attrs, cfg, channels_last)
    summary.sidecar = write_sidecar(out, read_skip_record(out) + listing.skipped)
    summary.elapsed = time.perf_counter() - start
    return summary


def extract_folder(images: str | Path, out: str | Path, backbone: str | Path, **options: Any) -> ExtractSummary:
    """One call for scripts and the demo: ``extract(ExtractConfig(images=..., out=..., backbone=..., **options))``;
    ``options`` are the other :class:`ExtractConfig` fields (``batch_size``, ``num_workers``, ``dtype``, ...)."""
    return extract(ExtractConfig(out=Path(out), backbone=str(backbone), images=Path(images), **options))
