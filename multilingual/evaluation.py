"""XTD-style multilingual retrieval (Aggarwal & Kale 2020, XTD10: the same images captioned in several languages):
text→image and image→text R@1/5/10 per language with the mCLIP, the teacher's English score beside them.

* images: an image folder (ids = relative paths without suffix, as ``vlt5r extract`` names them) encoded by the
  model's image tower, or a feature file of those embeddings (:func:`feature_extraction.readers.open_features`);
* captions: JSONL ``{"image", "lang", "text"}`` (several captions per image and language count, each caption
  finding its own image, :func:`clip_family.zeroshot.recall_at_k`); a caption of an unknown image, an empty text
  or a bad line is skipped and counted;
* every language is scored against the same image pool: text→image over every image (those without a caption in
  that language are distractors), image→text from the images that have one; the teacher's text tower on the ``en``
  captions gives the ``teacher`` row.

:func:`evaluate_xtd` returns ``{"languages": {lang: metrics}, "teacher": {lang: metrics}, "images": N, "captions":
{lang: n}, "skipped": {...}}``; :func:`xtd_table` renders it as a markdown table and :func:`write_xtd` writes both
(``xtd.json``, ``xtd.md``) atomically.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from clip_family.data import ReadReport
from clip_family.inputs import IMAGE_SUFFIXES
from clip_family.zeroshot import recall_at_k
from foundations.errors import UserError
from foundations.io import atomic_write_text
from foundations.jsonl import JSONLError, scan_jsonl

logger = logging.getLogger(__name__)

TEACHER_LANG = "en"
COLUMNS = ("t2i_r@1", "t2i_r@5", "t2i_r@10", "i2t_r@1", "i2t_r@5", "i2t_r@10")


@dataclass(frozen=True)
class Caption:
    image: str
    lang: str
    text: str


def read_captions(path: str | Path, image_ids: set[str]) -> tuple[list[Caption], ReadReport]:
    """The usable captions of ``path`` (see the module docstring), with the skip accounting."""
    report = ReadReport(str(path))
    out: list[Caption] = []
    for where, row in scan_jsonl(path):
        if isinstance(row, JSONLError):
            report.skip("invalid JSON", where)
        elif not isinstance(row, dict) or not all(isinstance(row.get(k), str) for k in ("image", "lang", "text")):
            report.skip("missing field", f'{where}: needs string "image", "lang" and "text"')
        elif row["image"] not in image_ids:
            report.skip("unknown image", f"{where}: {row['image']}")
        elif not " ".join(row["text"].split()):
            report.skip("empty sentence", where)
        else:
            out.append(Caption(row["image"], row["lang"].strip(), " ".join(row["text"].split())))
            report.read += 1
    report.log()
    if not out:
        raise UserError(f"{path}: no usable captions ({dict(report.skipped)} skipped)")
    return out, report


def image_pool(source: str | Path, encode_images: Callable[[list[Path]], Tensor], batch_size: int = 256
               ) -> tuple[list[str], Tensor]:
    """(ids, (N, E) embeddings) of a folder (encoded) or a feature file (read)."""
    path = Path(source)
    if path.is_dir():
        files = sorted((p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES),
                       key=lambda p: p.relative_to(path).as_posix())
        if not files:
            raise UserError(f"{path}: no images")
        ids = [p.relative_to(path).with_suffix("").as_posix() for p in files]
        return ids, torch.cat([encode_images(files[i: i + batch_size]) for i in range(0, len(files), batch_size)])
    from feature_extraction.readers import open_features

    with open_features(path) as store:
        return list(store.ids), torch.from_numpy(store.get_many(store.ids).fc).float()


def evaluate_xtd(image_ids: Sequence[str], images: Tensor, captions: Sequence[Caption],
                 encode_text: Callable[[list[str]], Tensor],
                 teacher_encode_text: Callable[[list[str]], Tensor] | None = None,
                 teacher_lang: str = TEACHER_LANG) -> dict[str, Any]:
    """Recall both ways per language (see the module docstring)."""
    row = {image_id: i for i, image_id in enumerate(image_ids)}
    image = F.normalize(images.float(), dim=-1)  # (N, E)
    result: dict[str, Any] = {"images": len(image_ids), "languages": {}, "teacher": {}, "captions": {}}
    for lang in sorted({c.lang for c in captions}):
        chosen = [c for c in captions if c.lang == lang]
        owner = torch.tensor([row[c.image] for c in chosen])  # (M,)
        texts = [c.text for c in chosen]
        result["captions"][lang] = len(chosen)
        result["languages"][lang] = both_ways(image, F.normalize(encode_text(texts).float(), dim=-1), owner)
        if lang == teacher_lang and teacher_encode_text is not None:
            teacher = F.normalize(teacher_encode_text(texts).float(), dim=-1)  # (M, E)
            result["teacher"][lang] = both_ways(image, teacher, owner)
    return result


def both_ways(image: Tensor, text: Tensor, owner: Tensor) -> dict[str, float]:
    """text→image recall against every image of the pool; image→text recall of the images that have a caption in
    this language (the others are distractors only: they have nothing to find)."""
    t2i = recall_at_k(image, text, owner)
    captioned, remapped = torch.unique(owner, return_inverse=True)  # (K,), (M,)
    i2t = recall_at_k(image[captioned], text, remapped)
    out = {k: v for k, v in t2i.items() if k.startswith("t2i")} | {k: v for k, v in i2t.items() if k.startswith("i2t")}
    out["mean_recall"] = sum(out.values()) / len(out)
    return out


def flat_metrics(result: dict[str, Any], prefix: str = "xtd") -> dict[str, float]:
    """``xtd_<lang>_<metric>``, ``xtd_teacher_<lang>_<metric>`` and ``xtd_mean_<metric>`` over the languages."""
    out: dict[str, float] = {}
    for lang, metrics in result["languages"].items():
        out.update({f"{prefix}_{lang}_{k}": v for k, v in metrics.items()})
    for lang, metrics in result["teacher"].items():
        out.update({f"{prefix}_teacher_{lang}_{k}": v for k, v in metrics.items()})
    langs = list(result["languages"].values())
    for key in COLUMNS + ("mean_recall",):
        out[f"{prefix}_mean_{key}"] = sum(m[key] for m in langs) / len(langs)
    return out


def xtd_table(result: dict[str, Any]) -> str:
    """A markdown table: one row per language, the teacher's rows last."""
    head = "| model | lang | captions | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for who, block in (("mCLIP", result["languages"]), ("teacher", result["teacher"])):
        for lang, metrics in block.items():
            values = " | ".join(f"{100 * metrics[k]:.1f}" for k in COLUMNS)
            lines.append(f"| {who} | {lang} | {result['captions'][lang]} | {values} |")
    return "\n".join(lines) + f"\n\n{result['images']} images; recall in %.\n"


def write_xtd(result: dict[str, Any], directory: str | Path) -> tuple[Path, Path]:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write_text(directory / "xtd.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(directory / "xtd.md", xtd_table(result))
    return directory / "xtd.json", directory / "xtd.md"
