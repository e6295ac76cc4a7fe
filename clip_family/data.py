"""Image–caption readers of the CLIP family; each returns a :class:`CaptionDataset` with its skip accounting.

* :func:`read_folder` — stem-paired files (train-CLIP): ``a/b/img1.jpg`` pairs with ``x/img1.txt`` anywhere under
  the same root; any image suffix; one caption per line.
* :func:`read_parquet` — vi_clip's columns ``image_id, image, text_id, caption``; ``image`` is a path relative to
  the dataset's ``image/`` folder (next to the parquet file), the image bytes, or a ``{"bytes", "path"}`` struct;
  several rows per image become several captions.
* :func:`read_table` — CSV/TSV with configurable image and caption columns (open_clip's ``filepath`` / ``title``);
  relative paths are taken under ``image_root`` (default: the table's folder).
* :func:`iter_webdataset` / :func:`read_webdataset` — ``.tar`` shards of ``{key}.jpg`` + ``{key}.txt``, streamed
  shard by shard (shard ``i`` goes to rank ``i % world``: :func:`rank_shards`), read with the standard ``tarfile``
  module; :func:`count_samples` is the size index of streamed training (:mod:`clip_family.stream`).

Bad rows never crash a reader: a missing image, an empty caption, an unreadable image (decoded once with
:func:`foundations.images.decode_image` when ``verify`` is on) and a duplicate id are skipped, counted by reason in
:class:`ReadReport` and logged with the first examples.
"""

from __future__ import annotations

import csv
import logging
import tarfile
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clip_family.inputs import IMAGE_SUFFIXES
from foundations.errors import UserError
from foundations.images import BadImage, decode_image
from foundations.jsonl import decoding

logger = logging.getLogger(__name__)

FORMATS = ("auto", "folder", "parquet", "csv", "tsv", "webdataset")


@dataclass(frozen=True)
class Item:
    """One image and all of its captions; ``image`` is a file path or the encoded bytes."""

    key: str
    image: Path | bytes
    captions: tuple[str, ...]


@dataclass
class ReadReport:
    source: str
    read: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> count
    examples: list[str] = field(default_factory=list)  # the first few "reason: where"

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < 10:
            self.examples.append(f"{reason}: {where}")

    def log(self) -> None:
        total = sum(self.skipped.values())
        logger.info("%s: %d images read, %d rows skipped %s", self.source, self.read, total, dict(self.skipped))
        for example in self.examples[:5]:
            logger.warning("skipped %s", example)


@dataclass
class CaptionDataset:
    items: list[Item]
    report: ReadReport

    def __len__(self) -> int:
        return len(self.items)


def _caption(text: str | None) -> str:
    return " ".join(str(text).split()) if text is not None else ""


def _verified(report: ReadReport, key: str, image: Path | bytes, verify: bool) -> bool:
    if not verify:
        return True
    try:
        decode_image(image)
        return True
    except BadImage as exc:
        report.skip(f"unreadable image ({exc.category})", f"{key} ({image if isinstance(image, Path) else 'bytes'})")
        return False


def _finish(report: ReadReport, groups: dict[str, tuple[Path | bytes, list[str]]], verify: bool) -> CaptionDataset:
    items = []
    for key, (image, captions) in groups.items():
        if not captions:
            report.skip("no caption", key)
            continue
        if _verified(report, key, image, verify):
            items.append(Item(key, image, tuple(captions)))
    report.read = len(items)
    report.log()
    return CaptionDataset(items, report)


# -- stem-paired folder -------------------------------------------------------------------------------------------
def read_folder(root: str | Path, verify: bool = True) -> CaptionDataset:
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: not a folder")
    report = ReadReport(str(root))
    images: dict[str, Path] = {}
    texts: dict[str, Path] = {}
    for path in sorted(root.rglob("*"), key=lambda p: p.relative_to(root).as_posix()):
        if not path.is_file():
            continue
        table = images if path.suffix.lower() in IMAGE_SUFFIXES else texts if path.suffix == ".txt" else None
        if table is None:
            continue
        if path.stem in table:
            report.skip("duplicate id", f"{path} (also {table[path.stem]})")
            continue
        table[path.stem] = path
    groups: dict[str, tuple[Path | bytes, list[str]]] = {}
    for stem, image in images.items():
        if stem not in texts:
            report.skip("missing caption file", str(image))
            continue
        lines = [_caption(line) for line in texts[stem].read_text(encoding="utf-8", errors="replace").splitlines()]
        lines = [line for line in lines if line]
        if not lines:
            report.skip("empty caption", str(texts[stem]))
            continue
        groups[stem] = (image, lines)
    for stem, text in texts.items():
        if stem not in images:
            report.skip("missing image", str(text))
    return _finish(report, groups, verify)


# -- parquet ----------------------------------------------------------------------------------------------------------
def read_parquet(path: str | Path, image_root: str | Path | None = None, verify: bool = True) -> CaptionDataset:
    import pyarrow.parquet as pq

    path = Path(path)
    root = Path(image_root) if image_root else path.parent / "image"
    try:
        table = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises its own error types for a bad file
        raise UserError(f"{path}: cannot read parquet ({type(exc).__name__}: {exc})") from None
    missing = {"image_id", "image", "caption"} - set(table[0] if table else {})
    if table and missing:
        raise UserError(f"{path}: missing column(s) {sorted(missing)}; expected image_id, image, text_id, caption")
    report = ReadReport(str(path))
    groups: dict[str, tuple[Path | bytes, list[str]]] = {}
    text_ids: set[str] = set()
    bad_images: set[str] = set()
    for n, row in enumerate(table):
        where = f"row {n} (image_id {row['image_id']})"
        text_id = row.get("text_id")
        if text_id is not None and str(text_id) in text_ids:
            report.skip("duplicate id", f"{where}: text_id {text_id}")
            continue
        caption = _caption(row["caption"])
        if not caption:
            report.skip("empty caption", where)
            continue
        key = str(row["image_id"])
        if key in bad_images:
            report.skip("missing image", where)
            continue
        if key not in groups:
            image = row["image"]
            if isinstance(image, dict):
                image = image.get("bytes") or image.get("path")
            if isinstance(image, str):
                image = Path(image) if Path(image).is_absolute() else root / image
                if not image.is_file():
                    bad_images.add(key)
                    report.skip("missing image", f"{where}: {image}")
                    continue
            elif not isinstance(image, (bytes, bytearray)) or not image:
                bad_images.add(key)
                report.skip("missing image", where)
                continue
            groups[key] = (image if isinstance(image, Path) else bytes(image), [])
        if text_id is not None:
            text_ids.add(str(text_id))
        groups[key][1].append(caption)
    return _finish(report, groups, verify)


# -- CSV / TSV ----------------------------------------------------------------------------------------------------
def read_table(path: str | Path, image_column: str = "filepath", caption_column: str = "title",
               separator: str | None = None, image_root: str | Path | None = None,
               verify: bool = True) -> CaptionDataset:
    path = Path(path)
    sep = separator or ("\t" if path.suffix.lower() in (".tsv", ".tab") else ",")
    root = Path(image_root) if image_root else path.parent
    report = ReadReport(str(path))
    groups: dict[str, tuple[Path | bytes, list[str]]] = {}
    seen: set[tuple[str, str]] = set()
    with decoding(path, UserError), path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter=sep)
        columns = reader.fieldnames or []
        if image_column not in columns or caption_column not in columns:
            raise UserError(f"{path}: needs columns {image_column!r} and {caption_column!r} (--image-column / "
                            f"--caption-column); it has {columns}")
        for n, row in enumerate(reader, start=2):
            where = f"line {n}"
            name, caption = (row.get(image_column) or "").strip(), _caption(row.get(caption_column))
            if not name:
                report.skip("missing image", where)
                continue
            if not caption:
                report.skip("empty caption", f"{where} ({name})")
                continue
            if (name, caption) in seen:
                report.skip("duplicate id", f"{where} ({name})")
                continue
            seen.add((name, caption))
            if name not in groups:
                image = Path(name) if Path(name).is_absolute() else root / name
                if not image.is_file():
                    report.skip("missing image", f"{where}: {image}")
                    seen.discard((name, caption))
                    continue
                groups[name] = (image, [])
            groups[name][1].append(caption)
    return _finish(report, groups, verify)


# -- webdataset shards ------------------------------------------------------------------------------------------
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp")


def _shard_samples(shard: Path, report: ReadReport, read_images: bool = True
                   ) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample, grouping consecutive members by key (the webdataset convention);
    without ``read_images`` an image member is only noted (``b""``), its bytes are not read."""
    current: str | None = None
    parts: dict[str, bytes] = {}
    try:
        with tarfile.open(shard) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = Path(member.name)
                key, ext = (str(name.parent / name.name.split(".", 1)[0]),
                            name.name.split(".", 1)[1].lower() if "." in name.name else "")
                if key != current:
                    if current is not None:
                        yield current, parts
                    current, parts = key, {}
                skip = not read_images and ext in IMAGE_EXTS
                parts[ext] = b"" if skip else tar.extractfile(member).read()  # type: ignore[union-attr]
    except (tarfile.TarError, OSError) as exc:
        report.skip("unreadable shard", f"{shard}: {exc}")
    if current is not None:
        yield current, parts


def iter_webdataset(shards: Sequence[str | Path], rank: int = 0, world: int = 1, verify: bool = True,
                    report: ReadReport | None = None) -> Iterator[Item]:
    """Stream the items of this rank's shards (shard ``i`` for rank ``i % world``), skipping bad samples."""
    report = report or ReadReport(",".join(map(str, shards)))
    seen: set[str] = set()
    for i in rank_shards(len(shards), rank, world):
        for key, image, captions in _usable_samples(Path(shards[i]), report, seen):
            if _verified(report, key, image, verify):
                report.read += 1
                yield Item(key, image, captions)


def rank_shards(n_shards: int, rank: int, world: int) -> list[int]:
    """The shards of ``rank``: shard ``i`` goes to rank ``i % world`` (every shard to exactly one rank)."""
    return list(range(rank, n_shards, world))


def _usable_samples(shard: Path, report: ReadReport, seen: set[str], read_images: bool = True
                    ) -> Iterator[tuple[str, bytes, tuple[str, ...]]]:
    """(key, image bytes, captions) of the samples of ``shard`` with an image, a caption and a key not in ``seen``
    (added to it); the others are skipped and counted. The image is not decoded here."""
    for key, parts in _shard_samples(shard, report, read_images):
        image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
        caption_lines = [_caption(x) for x in parts.get("txt", b"").decode("utf-8", "replace").splitlines()]
        captions = tuple(c for c in caption_lines if c)
        if key in seen:
            report.skip("duplicate id", f"{shard}: {key}")
        elif image is None:
            report.skip("missing image", f"{shard}: {key}")
        elif not captions:
            report.skip("empty caption", f"{shard}: {key}")
        else:
            seen.add(key)
            yield key, image, captions


def count_samples(shard: str | Path, report: ReadReport | None = None) -> int:
    """Samples of one shard with an image member, a non-empty caption and a key new in the shard (the index pass of
    streamed training: tar headers and captions are read, image bytes are skipped and not decoded)."""
    report = report or ReadReport(str(shard))
    return sum(1 for _ in _usable_samples(Path(shard), report, set(), read_images=False))


def list_shards(source: str) -> list[Path]:
    """The ``.tar`` shards of ``source``: a folder of them (sorted) or comma-separated paths."""
    path = Path(source)
    return sorted(path.glob("*.tar")) if path.is_dir() else [Path(s) for s in source.split(",")]


def read_webdataset(shards: Sequence[str | Path], verify: bool = True) -> CaptionDataset:
    """Every item of the shards in memory (small data; large runs stream with :func:`iter_webdataset`)."""
    report = ReadReport(",".join(map(str, shards)))
    items = list(iter_webdataset(shards, verify=verify, report=report))
    report.log()
    return CaptionDataset(items, report)


# -- one entry point ---------------------------------------------------------------------------------------------
def detect_format(source: str) -> str:
    path = Path(source.split(",")[0])
    if not path.exists():
        raise UserError(f"{source}: no such file or folder")
    if path.is_dir():
        return "webdataset" if any(path.glob("*.tar")) and not any(path.rglob("*.txt")) else "folder"
    suffix = path.suffix.lower()
    formats = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".tar": "webdataset"}
    if suffix not in formats:
        raise UserError(f"{source}: cannot tell the data format (a folder, .parquet, .csv, .tsv or .tar shards); "
                        "pass --format")
    return formats[suffix]


def open_dataset(source: str, fmt: str = "auto", image_column: str = "filepath", caption_column: str = "title",
                 image_root: str | None = None, verify: bool = True) -> CaptionDataset:
    """Read ``source`` (a folder, a .parquet, a .csv/.tsv, or comma-separated / a folder of .tar shards)."""
    fmt = detect_format(source) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise UserError(f"unknown data format {fmt!r}; one of {FORMATS}")
    if fmt != "webdataset" and not Path(source).exists():
        raise UserError(f"{source}: no such file or folder")
    if fmt == "folder":
        data = read_folder(source, verify)
    elif fmt == "parquet":
        data = read_parquet(source, image_root, verify)
    elif fmt in ("csv", "tsv"):
        data = read_table(source, image_column, caption_column, "\t" if fmt == "tsv" else ",", image_root, verify)
    else:
        data = read_webdataset(list_shards(source), verify)
    if not data.items:
        raise UserError(f"{source}: no usable image–caption pairs ({dict(data.report.skipped)} skipped)")
    return data
