"""Parallel sentences ``(english, foreign, lang)`` for distillation, from JSONL, CSV / TSV, parquet or a
``datasets`` dataset (saved with ``save_to_disk``, or local files read by ``load_dataset``).

* :func:`open_parallel` — one entry point over several sources (``LANG=path`` sets the language of a source whose
  rows carry none; a ``lang`` column wins); each source is read by its format (:func:`detect_format`).
* Bad rows never crash a run: a line that is not JSON, a missing or non-text field, an empty sentence after
  whitespace normalisation and a repeated ``(english, foreign, lang)`` are skipped and counted per reason in the
  CLIP-family readers' :class:`clip_family.data.ReadReport` (the first examples logged).
* :func:`english_key` — the id of an English sentence (a content hash): the key of its teacher embedding in a
  feature file made by ``vlt5r extract --texts`` over :func:`write_english_texts`'s JSONL, so one English sentence
  translated into several languages is embedded once.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clip_family.data import ReadReport
from foundations.errors import UserError
from foundations.io import atomic_write_text
from foundations.jsonl import JSONLError, decoding, scan_jsonl

logger = logging.getLogger(__name__)

FORMATS = ("auto", "jsonl", "csv", "tsv", "parquet", "datasets")
UNDETERMINED = "und"  # BCP 47's "undetermined language"
_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".gz": "jsonl", ".csv": "csv", ".tsv": "tsv", ".tab": "tsv",
             ".parquet": "parquet", ".arrow": "datasets"}


@dataclass(frozen=True)
class Columns:
    """Which fields hold the English sentence, its translation and (optionally) the language code."""

    english: str = "english"
    foreign: str = "foreign"
    lang: str = "lang"


@dataclass(frozen=True)
class Pair:
    english: str
    foreign: str
    lang: str

    @property
    def key(self) -> str:
        return english_key(self.english)


@dataclass
class ParallelDataset:
    pairs: list[Pair]
    reports: list[ReadReport] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def languages(self) -> list[str]:
        return sorted({p.lang for p in self.pairs})

    def english(self) -> dict[str, str]:
        """{key: English sentence} of every distinct English sentence, in first-seen order."""
        return {p.key: p.english for p in self.pairs}


def english_key(text: str) -> str:
    """The id of an English sentence: the first 16 hex digits of the sha1 of its UTF-8 text."""
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:16]


def _sentence(value: Any) -> str | None:
    """Whitespace-normalised text, or None for a value that is not text."""
    return " ".join(value.split()) if isinstance(value, str) else None


def rows_to_pairs(rows: Iterable[tuple[str, Any]], columns: Columns, lang: str, report: ReadReport,
                  seen: set[Pair]) -> Iterator[Pair]:
    """``(where, row)`` -> pairs, skipping (and counting) what cannot be a pair; ``seen`` spans every source."""
    for where, row in rows:
        if isinstance(row, JSONLError):
            report.skip("invalid JSON", where)
            continue
        if not isinstance(row, dict):
            report.skip("not an object", where)
            continue
        if columns.english not in row or columns.foreign not in row or row[columns.english] is None \
                or row[columns.foreign] is None:
            report.skip("missing field", f"{where}: needs {columns.english!r} and {columns.foreign!r}")
            continue
        english, foreign = _sentence(row[columns.english]), _sentence(row[columns.foreign])
        if english is None or foreign is None:
            report.skip("not text", where)
            continue
        if not english or not foreign:
            report.skip("empty sentence", where)
            continue
        row_lang = row.get(columns.lang)
        pair = Pair(english, foreign, str(row_lang).strip() if row_lang not in (None, "") else lang)
        if pair in seen:
            report.skip("duplicate pair", where)
            continue
        seen.add(pair)
        report.read += 1
        yield pair


# -- the formats (JSONL: foundations.jsonl.scan_jsonl) -------------------------------------------------------------
def _table_rows(path: Path, delimiter: str, columns: Columns) -> Iterator[tuple[str, Any]]:
    with decoding(path, UserError), path.open(newline="", encoding="utf-8") as fh:  # not UTF-8: one line naming it
        reader = csv.DictReader(fh, delimiter=delimiter)
        names = reader.fieldnames or []
        if columns.english not in names or columns.foreign not in names:
            raise UserError(f"{path}: needs columns {columns.english!r} and {columns.foreign!r} (--english-column / "
                            f"--foreign-column); it has {names}")
        for n, row in enumerate(reader, start=2):
            yield f"{path}:{n}", row


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises its own error types for a bad file
        raise UserError(f"{path}: cannot read parquet ({type(exc).__name__}: {exc})") from None
    for n, row in enumerate(table):
        yield f"{path} row {n}", row


def _datasets_rows(path: Path, split: str) -> Iterator[tuple[str, Any]]:
    """A ``datasets`` dataset: a ``save_to_disk`` folder (``load_from_disk``; a ``DatasetDict`` gives ``split``) or
    local files (``load_dataset(json|csv|parquet, data_files=...)``). Local only: no hub names."""
    try:
        import datasets
    except ImportError:
        raise UserError(f"{path}: reading a datasets dataset needs the `datasets` package (pip install datasets)") \
            from None
    try:
        if path.is_dir():
            data = datasets.load_from_disk(str(path))
            if isinstance(data, datasets.DatasetDict):
                if split not in data:
                    raise UserError(f"{path}: no split {split!r} (has {sorted(data)}); pass --split")
                data = data[split]
        else:
            builder = {"jsonl": "json", "csv": "csv", "tsv": "csv", "parquet": "parquet"}.get(
                _SUFFIXES.get(path.suffix.lower(), ""))
            if builder is None:
                raise UserError(f"{path}: load_dataset reads .jsonl, .csv, .tsv or .parquet files")
            extra = {"delimiter": "\t"} if path.suffix.lower() in (".tsv", ".tab") else {}
            data = datasets.load_dataset(builder, data_files=str(path), split="train", **extra)
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetGenerationError) as exc:
        raise UserError(f"{path}: cannot read as a datasets dataset ({type(exc).__name__}: {exc})") from None
    for n, row in enumerate(data):
        yield f"{path} row {n}", row


def detect_format(path: Path) -> str:
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    if path.is_dir():
        if any((path / name).is_file() for name in ("dataset_info.json", "state.json", "dataset_dict.json")):
            return "datasets"
        raise UserError(f"{path}: a folder that is not a saved datasets dataset (no dataset_info.json)")
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise UserError(f"{path}: cannot tell the format (.jsonl, .csv, .tsv, .parquet, or a datasets folder); "
                        "pass --data-format")
    return _SUFFIXES[suffix]


def split_source(source: str) -> tuple[str, Path]:
    """``LANG=path`` -> (LANG, path); a plain path -> (``und``, path)."""
    lang, sep, rest = source.partition("=")
    if sep and lang and "/" not in lang and not Path(source).exists():
        return lang.strip(), Path(rest)
    return UNDETERMINED, Path(source)


def read_source(source: str, columns: Columns, fmt: str = "auto", split: str = "train",
                seen: set[Pair] | None = None) -> tuple[list[Pair], ReadReport]:
    lang, path = split_source(source)
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt not in FORMATS:
        raise UserError(f"unknown data format {fmt!r}; one of {FORMATS}")
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    rows: Iterable[tuple[str, Any]]
    if fmt == "jsonl":
        rows = scan_jsonl(path)
    elif fmt in ("csv", "tsv"):
        rows = _table_rows(path, "\t" if fmt == "tsv" else ",", columns)
    elif fmt == "parquet":
        rows = _parquet_rows(path)
    else:
        rows = _datasets_rows(path, split)
    report = ReadReport(str(path))
    pairs = list(rows_to_pairs(rows, columns, lang, report, seen if seen is not None else set()))
    report.log()
    return pairs, report


def open_parallel(sources: Sequence[str], columns: Columns = Columns(), fmt: str = "auto",
                  split: str = "train") -> ParallelDataset:
    """Every usable pair of ``sources`` (each ``path`` or ``LANG=path``), duplicates across sources skipped too."""
    if not sources:
        raise UserError("no parallel data given")
    seen: set[Pair] = set()
    dataset = ParallelDataset([])
    for source in sources:
        pairs, report = read_source(source, columns, fmt, split, seen)
        dataset.pairs += pairs
        dataset.reports.append(report)
    if not dataset.pairs:
        skipped = {r.source: dict(r.skipped) for r in dataset.reports}
        raise UserError(f"{', '.join(sources)}: no usable (english, foreign) pairs (skipped: {skipped})")
    logger.info("%d parallel pairs in %s", len(dataset), ", ".join(dataset.languages))
    return dataset


def write_english_texts(english: dict[str, str], path: str | Path) -> Path:
    """``{"id": english_key, "text": english}`` per distinct English sentence (``ParallelDataset.english()``): the
    ``--texts`` input of ``vlt5r extract`` for the teacher's embeddings (written atomically)."""
    lines = [json.dumps({"id": key, "text": text}, ensure_ascii=False) for key, text in english.items()]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return Path(path)
