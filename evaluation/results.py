"""Results files: one JSON record per (model, task), CLIP_benchmark-like, validated against :data:`RESULT_SCHEMA`
(a JSON Schema, documented in ``docs/evaluation.md``), and Markdown / terminal tables over several of them.

A results file written by ``vlt5r eval`` is ``{"format_version": 1, "results": [record, ...]}``; each record::

    {"format_version": 1, "task": "sugar_crepe", "model": "ViT-B/32", "precision": "fp32",
     "dataset": "data/sugar_crepe", "images": "coco/val2017", "scorer": {...},
     "metrics": {"replace_obj": 0.909, ..., "micro_average": 0.8}, "counts": {"rows", "scored",
     "malformed_rows", "missing_images", ...}, "details": {...}, "seconds": 12.3}

Metric values are fractions in [0, 1] (tables print them ×100). The retrieval trainer's ``comparison.json``
(``{run name: {metric: value}}``) is read into the same records (task ``comparison``), so one report command
renders both.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from evaluation.common import EvalDataError
from foundations.config import load_json

RESULT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "vlt5r eval result record",
    "type": "object",
    "required": ["format_version", "task", "model", "precision", "dataset", "metrics", "counts"],
    "properties": {
        "format_version": {"type": "integer", "const": 1},
        "task": {"type": "string"},
        "model": {"type": "string"},
        "precision": {"type": "string", "enum": ["fp32", "fp16", "bf16", "unknown"]},
        "dataset": {"type": "string"},
        "images": {"type": ["string", "null"]},
        "scorer": {"type": "object"},
        "metrics": {"type": "object", "additionalProperties": {"type": "number"}},
        "counts": {"type": "object", "required": ["rows", "scored", "malformed_rows", "missing_images"],
                   "properties": {k: {"type": "integer", "minimum": 0}
                                  for k in ("rows", "scored", "malformed_rows", "missing_images")}},
        "details": {"type": "object"},
        "seconds": {"type": "number"},
    },
}
_TYPES = {"object": dict, "string": str, "integer": int, "number": (int, float), "null": type(None), "array": list}


def _check(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    errors: list[str] = []
    kinds = schema.get("type")
    if kinds is not None:
        kinds = [kinds] if isinstance(kinds, str) else kinds
        ok = any(isinstance(value, _TYPES[k]) and not (k in ("integer", "number") and isinstance(value, bool))
                 for k in kinds)
        if not ok:
            return [f"{where}: expected {' or '.join(kinds)}, got {type(value).__name__}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: expected {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: expected one of {schema['enum']}")
    if "minimum" in schema and value < schema["minimum"]:
        errors.append(f"{where}: below {schema['minimum']}")
    if isinstance(value, dict):
        errors += [f"{where}.{k}: missing" for k in schema.get("required", []) if k not in value]
        for k, v in value.items():
            sub = schema.get("properties", {}).get(k, schema.get("additionalProperties"))
            if isinstance(sub, dict):
                errors += _check(v, sub, f"{where}.{k}")
    return errors


def validate_record(record: Any) -> list[str]:
    """The schema violations of one record (empty when valid); mirrors :data:`RESULT_SCHEMA`."""
    return _check(record, RESULT_SCHEMA, "record")


def results_file(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"format_version": 1, "results": list(records)}


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """Records of a ``vlt5r eval`` results file, or of a retrieval trainer's ``comparison.json``."""
    path = Path(path)
    data = load_json(path)
    if isinstance(data, dict) and isinstance(data.get("results"), list):
        records = data["results"]
        for n, record in enumerate(records):
            errors = validate_record(record)
            if errors:
                raise EvalDataError(f"{path}: results[{n}] does not match the results schema: {errors[0]}")
        return records
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        return [{"format_version": 1, "task": f"comparison ({path.stem})", "model": name, "precision": "unknown",
                 "dataset": str(path), "metrics": {k: float(v) for k, v in metrics.items()
                                                   if isinstance(v, (int, float))},
                 "counts": {"rows": 0, "scored": 0, "malformed_rows": 0, "missing_images": 0}}
                for name, metrics in data.items()]
    raise EvalDataError(f"{path}: neither a vlt5r eval results file ({{\"results\": [...]}}) nor a comparison.json")


OPENAI_NAME = re.compile(r"^(RN\d+(x\d+)?|ViT-[BLH]/\d+(@\d+px)?)$")


def display_name(model: str) -> str:
    """A short model name for tables and legends: OpenAI names as they are, paths by their last two parts."""
    if OPENAI_NAME.match(model):
        return model
    parts = Path(model.removeprefix("hf:")).parts
    return "/".join(parts[-2:]) if parts else model


def _fmt(value: float) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}"


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    """One table per task: a row per model, a column per metric (×100), then the scored / skipped counts."""
    out: list[str] = []
    tasks = list(dict.fromkeys(r["task"] for r in records))
    for task in tasks:
        rows = [r for r in records if r["task"] == task]
        metrics = list(dict.fromkeys(m for r in rows for m in r["metrics"]))
        out.append(f"### {task}\n")
        out.append("| model | precision | " + " | ".join(metrics) + " | scored | skipped |")
        out.append("|---|---|" + "---:|" * (len(metrics) + 2))
        for r in rows:
            c = r["counts"]
            skipped = c.get("malformed_rows", 0) + c.get("missing_images", 0)
            out.append(f"| {display_name(r['model'])} | {r['precision']} | " + " | ".join(_fmt(r["metrics"].get(m)) for m in metrics)
                       + f" | {c.get('scored', 0)} | {skipped} |")
        out.append("")
    return "\n".join(out)
