"""NegCLIP (Yuksekgonul et al., "When and why vision-language models behave like bags-of-words, and what to do about
it", ICLR 2023): the batch, the loss and the data file of fine-tuning with hard negatives.

* **The batch** — ``b`` pairs of this rank add, for each pair, one of its image's nearest images (a hard-negative
  image, with one of that image's captions), and for all ``2b`` images one of their hard-negative captions (a caption
  with two spans of one kind swapped, :mod:`clip_family.mining`): ``2b`` images and ``4b`` texts, laid out as
  NegCLIP's ``train.py`` concatenates them::

      images = [images (b); hard-negative images (b)]                                             (2b, E)
      texts  = [captions (b); captions of the negative images (b); hard captions of both (2b)]    (4b, E)

  Text row ``r < 2b`` is the caption of image row ``r``; rows ``2b..4b`` are negatives only.
* **The loss** (:func:`negclip_loss`) — the symmetric InfoNCE with image→text over all ``4b`` texts and
  text→image over the ``2b`` real captions only (a hard-negative caption has no image to find). Across ranks the
  features are gathered with :func:`clip_family.losses.gather_features` (each rank's block kept together:
  ``local_loss`` scores this rank's rows against every rank's, and with ``gather_with_grad`` DDP's gradient
  average equals the gradient of the single-process loss of the global batch, tested on 2 gloo processes).
* **The draws** (:func:`draw_negatives`) — which hard-negative caption and image each row uses is drawn again every
  epoch, a pure function of (seed, epoch), so a resumed run sees the same batches.
* **The data file** — NegCLIP's TSV (:func:`write_negclip_tsv` / :func:`read_negclip_tsv`): columns ``filepath``,
  ``title``, ``neg_caption`` (a Python list literal of strings) and ``neg_image`` (a Python list literal of row
  indices, 0 = the first data row), as the original code reads it (``pd.read_csv(sep="\\t",
  converters={"neg_caption": ast.literal_eval, "neg_image": ast.literal_eval})``).
"""

from __future__ import annotations

import ast
import csv
import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clip_family.data import CaptionDataset, ReadReport, _caption, _verified
from clip_family.losses import _world, gather_features
from foundations.errors import UserError
from foundations.io import atomic_write_text

logger = logging.getLogger(__name__)

COLUMNS = ("filepath", "title", "neg_caption", "neg_image")


# -- the loss --------------------------------------------------------------------------------------------------------
def negclip_loss(image: Tensor, text: Tensor, logit_scale: Tensor | float, *, local_loss: bool = False,
                 gather_with_grad: bool = False) -> Tensor:
    """NegCLIP's loss of this rank's (2b, E) image and (4b, E) text features (normalised, laid out as in the module
    docstring): cross-entropy of each image over all 4b texts (its caption is text row r) and of each of the 2b real
    captions over the 2b images, averaged. Under torchrun every rank's features are gathered (rank blocks kept
    together); ``local_loss`` / ``gather_with_grad`` as in :func:`clip_family.losses.clip_loss`."""
    n = image.shape[0]  # 2b
    if text.shape[0] != 2 * n:
        raise ValueError(f"NegCLIP needs 2 texts per image (captions, then hard negatives): got {n} images and "
                         f"{text.shape[0]} texts")
    rank, world = _world()
    if world == 1:
        per_image = logit_scale * image @ text.T  # (2b, 4b)
        per_text = logit_scale * text[:n] @ image.T  # (2b, 2b)
        labels = torch.arange(n, device=image.device)
        return (F.cross_entropy(per_image, labels) + F.cross_entropy(per_text, labels)) / 2
    all_image, all_text = gather_features(image, text, local_loss=local_loss, gather_with_grad=gather_with_grad)
    rows = torch.arange(n, device=image.device)
    if local_loss:
        per_image = logit_scale * image @ all_text.T  # (2b, W·4b)
        per_text = logit_scale * text[:n] @ all_image.T  # (2b, W·2b)
        image_labels, text_labels = rank * 2 * n + rows, rank * n + rows
    else:
        real = all_text.view(world, 2, n, -1)[:, 0].reshape(world * n, -1)  # (W·2b, E) each rank's real captions
        per_image = logit_scale * all_image @ all_text.T  # (W·2b, W·4b)
        per_text = logit_scale * real @ all_image.T  # (W·2b, W·2b)
        blocks = torch.arange(world, device=image.device).repeat_interleave(n)  # (W·2b,) the rank of each image row
        image_labels, text_labels = blocks * 2 * n + rows.repeat(world), torch.arange(world * n, device=image.device)
    return (F.cross_entropy(per_image, image_labels) + F.cross_entropy(per_text, text_labels)) / 2


def hard_negative_accuracy(image: Tensor, text: Tensor) -> Tensor:
    """Share of this rank's 2b images whose caption scores above their own hard-negative caption."""
    n = image.shape[0]
    own = (image * text[:n]).sum(-1)  # (2b,)
    hard = (image * text[n:]).sum(-1)  # (2b,)
    return (own > hard).float().mean()


# -- the data file ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NegClipRow:
    """One row of a NegCLIP TSV: an image, one caption, its hard-negative captions and hard-negative image rows."""

    filepath: str
    title: str
    neg_caption: tuple[str, ...]
    neg_image: tuple[int, ...]


def format_negclip_tsv(rows: Sequence[NegClipRow]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter="\t", lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([row.filepath, row.title, repr(list(row.neg_caption)), repr([int(i) for i in row.neg_image])])
    return buffer.getvalue()


def write_negclip_tsv(path: str | Path, rows: Sequence[NegClipRow]) -> Path:
    """NegCLIP's TSV (atomically); ``neg_caption`` / ``neg_image`` as Python list literals."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, format_negclip_tsv(rows))
    return path


def _literal_list(text: str, kind: type, column: str) -> tuple:
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f"{column} is not a Python list literal: {text[:60]!r}") from None
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, kind) and not isinstance(v, bool)
                                                       for v in value):
        raise ValueError(f"{column} must be a list of {kind.__name__}, got {text[:60]!r}")
    return tuple(value)


def parse_negclip_tsv(path: str | Path, image_column: str = "filepath", caption_column: str = "title",
                      report: ReadReport | None = None) -> list[NegClipRow | None]:
    """Every data row of a NegCLIP TSV in file order (``None`` for a malformed row, counted in ``report``), so
    that ``neg_image`` indices keep pointing at the same rows."""
    path = Path(path)
    report = report or ReadReport(str(path))
    if not path.is_file():
        raise UserError(f"{path}: no such file (expected a NegCLIP TSV: {', '.join(COLUMNS)})")
    out: list[NegClipRow | None] = []
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        needed = (image_column, caption_column, "neg_caption", "neg_image")
        missing = [c for c in needed if c not in (reader.fieldnames or [])]
        if missing:
            raise UserError(f"{path}: missing column(s) {missing}; a NegCLIP TSV has {', '.join(needed)} "
                            f"(make one with `vlt5r mine-negclip`)")
        for n, row in enumerate(reader, start=2):
            try:
                out.append(NegClipRow((row[image_column] or "").strip(), _caption(row[caption_column]),
                                      tuple(_caption(c) for c in _literal_list(row["neg_caption"] or "", str,
                                                                               "neg_caption")),
                                      _literal_list(row["neg_image"] or "", int, "neg_image")))
            except ValueError as exc:
                report.skip("malformed negatives", f"line {n}: {exc}")
                out.append(None)
    return out


@dataclass(frozen=True)
class NegItem:
    """A usable row for training: ``image`` (path), its caption, its negative captions and the positions (in the
    usable rows) of its hard-negative images."""

    key: str
    image: Path
    caption: str
    neg_captions: tuple[str, ...]
    neg_rows: tuple[int, ...]

    @property
    def captions(self) -> tuple[str, ...]:  # as clip_family.data.Item, for code that reads captions
        return (self.caption,)


@dataclass
class NegClipData(CaptionDataset):
    """The usable rows of a NegCLIP TSV: a :class:`clip_family.data.CaptionDataset` of :class:`NegItem`."""

    items: list[NegItem]  # type: ignore[assignment]


def read_negclip_tsv(path: str | Path, image_column: str = "filepath", caption_column: str = "title",
                     image_root: str | Path | None = None, verify: bool = True) -> NegClipData:
    """The rows of a NegCLIP TSV that can make a NegCLIP batch. A row is usable when its image exists (and decodes,
    with ``verify``), its caption is not empty, it has a hard-negative caption and at least one of its
    ``neg_image`` rows is usable (the negative image's own hard caption is in the batch too); the rest are skipped,
    counted by reason. Relative image paths are under ``image_root`` (default: the TSV's folder)."""
    path = Path(path)
    report = ReadReport(str(path))
    rows = parse_negclip_tsv(path, image_column, caption_column, report)
    root = Path(image_root) if image_root else path.parent
    ok = np.zeros(len(rows), bool)
    images: dict[int, Path] = {}
    checked: dict[str, bool] = {}
    for n, row in enumerate(rows):
        if row is None:
            continue
        where = f"row {n} ({row.filepath})"
        if not row.filepath or not row.title:
            report.skip("missing image" if not row.filepath else "empty caption", where)
            continue
        if not row.neg_caption:
            report.skip("no negative caption", where)
            continue
        bad = [i for i in row.neg_image if not 0 <= i < len(rows)]
        if bad:
            report.skip("malformed negatives", f"{where}: neg_image {bad[:3]} outside rows 0..{len(rows) - 1}")
            continue
        image = Path(row.filepath) if Path(row.filepath).is_absolute() else root / row.filepath
        if row.filepath not in checked:  # each image is looked at (and decoded) once
            if not image.is_file():
                report.skip("missing image", f"{where}: {image}")
                checked[row.filepath] = False
            else:
                checked[row.filepath] = _verified(report, row.filepath, image, verify)
        elif not checked[row.filepath]:
            report.skip("unusable image (see above)", where)
        if checked[row.filepath]:
            ok[n], images[n] = True, image
    changed = True
    while changed:  # a row whose negative images are all unusable cannot make its half of the batch
        changed = False
        for n, row in enumerate(rows):
            if ok[n] and not any(ok[i] for i in row.neg_image):  # type: ignore[union-attr]
                ok[n], changed = False, True
                report.skip("no usable negative image", f"row {n} ({row.filepath})")  # type: ignore[union-attr]
    position = np.cumsum(ok) - 1  # original row -> usable position
    items = [NegItem(row.filepath, images[n], row.title, row.neg_caption,  # type: ignore[union-attr]
                     tuple(int(position[i]) for i in row.neg_image if ok[i]))  # type: ignore[union-attr]
             for n, row in enumerate(rows) if ok[n]]
    report.read = len(items)
    if not items:  # one error line (the examples of the skips are in it), no warnings before it
        raise UserError(f"{path}: no usable NegCLIP rows ({dict(report.skipped)} skipped; first: "
                        f"{report.examples[0] if report.examples else '-'})")
    report.log()
    return NegClipData(items, report)


# -- the draws of one epoch ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Draws:
    """Per usable row, for one epoch: its hard caption, its negative image (a row position) and that row's hard
    caption (indices into the rows' lists, or row positions)."""

    hard_caption: np.ndarray  # (N,) index into items[i].neg_captions
    neg_row: np.ndarray  # (N,) row position of the hard-negative image
    neg_hard_caption: np.ndarray  # (N,) index into items[neg_row[i]].neg_captions


def draw_negatives(items: Sequence[NegItem], seed: int, epoch: int) -> Draws:
    """Uniform choices for every row, a pure function of (seed, epoch) (NegCLIP's ``random.choice`` per row)."""
    rng = np.random.default_rng([seed, epoch, 1])  # a stream of its own, beside the epoch's permutation
    u = rng.random((len(items), 3))  # (N, 3)
    n_caps = np.array([len(it.neg_captions) for it in items])
    n_imgs = np.array([len(it.neg_rows) for it in items])
    hard = (u[:, 0] * n_caps).astype(np.int64)
    neg = np.array([items[i].neg_rows[k] for i, k in enumerate((u[:, 1] * n_imgs).astype(np.int64))], np.int64)
    neg_hard = (u[:, 2] * n_caps[neg]).astype(np.int64) if len(items) else np.zeros(0, np.int64)
    return Draws(hard, neg, neg_hard)


def batch_texts(items: Sequence[NegItem], rows: np.ndarray, draws: Draws) -> list[str]:
    """The 4b texts of the rows' batch, in the order of the module docstring."""
    neg = draws.neg_row[rows]
    return ([items[i].caption for i in rows] + [items[j].caption for j in neg]
            + [items[i].neg_captions[draws.hard_caption[i]] for i in rows]
            + [items[j].neg_captions[draws.neg_hard_caption[i]] for i, j in zip(rows, neg)])
