"""Zero-shot classification: a classifier from class names × prompt templates, top-1 / top-5 accuracy and mean
per-class recall — CLIP_benchmark's ``zeroshot_classification`` on the same embeddings (tested): each class
vector is the mean of its L2-normalised template embeddings, re-normalised; logits = 100 · image · class; top-5
only with ≥ 5 classes (NaN otherwise); mean per-class recall = scikit-learn's ``balanced_accuracy_score`` (computed here the same way).

Data: a folder per class (``DATA/<class>/<image>``; classes in sorted folder order, the folder name is the class
name unless ``--classnames`` names a list) or a CSV with ``filepath`` and ``label`` columns (label = class name,
or index into ``--classnames``). Templates: a name from the shipped ``evaluation/data/templates.json`` (OpenAI /
CLIP_benchmark lists; ``default`` = "a photo of a {c}.") a JSON file holding a list of ``{c}`` templates, or one template inline (``"a handwritten {}"``; ``{}`` and
``{c}`` both stand for the class name).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluation.common import EvalDataError, ImageRef, RunLog
from evaluation.scorer import Scorer
from foundations.config import load_json

DATA_DIR = Path(__file__).parent / "data"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def templates(name_or_path: str) -> list[str]:
    shipped = load_json(DATA_DIR / "templates.json")
    if name_or_path in shipped:
        return list(shipped[name_or_path])
    if "{c}" in name_or_path or "{}" in name_or_path:  # one template given inline: "a handwritten {}"
        return [name_or_path]
    path = Path(name_or_path)
    if not path.is_file():
        raise EvalDataError(f"--templates {name_or_path!r}: not a shipped list ({', '.join(shipped)}) nor a file")
    data = load_json(path)
    if not isinstance(data, list) or not all(isinstance(t, str) and ("{c}" in t or "{}" in t) for t in data):
        raise EvalDataError(f"{path}: expected a JSON list of templates containing {{c}} (or {{}})")
    return data


def classnames(name_or_path: str | Sequence[str]) -> list[str]:
    """A shipped list (``imagenet1k``, ``cifar10``), a file (one name per line), or the names."""
    if not isinstance(name_or_path, str):
        if len(name_or_path) > 1:
            return list(name_or_path)
        name_or_path = name_or_path[0]
    shipped = load_json(DATA_DIR / "classnames.json")
    if name_or_path in shipped:
        return list(shipped[name_or_path])
    path = Path(name_or_path)
    if not path.is_file():
        raise EvalDataError(f"--classnames {name_or_path!r}: not a shipped list ({', '.join(shipped)}) nor a file")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_dataset(data: Path, log: RunLog, names: list[str] | None) -> tuple[list[ImageRef], list[int], list[str]]:
    """(images, labels, class names) from a folder per class or a ``filepath,label`` CSV."""
    refs: list[ImageRef] = []
    labels: list[int] = []
    if data.is_dir():
        folders = sorted(p for p in data.iterdir() if p.is_dir())
        if not folders:
            raise EvalDataError(f"{data}: expected one sub-folder per class")
        names = names or [f.name for f in folders]
        if len(names) != len(folders):
            raise EvalDataError(f"{data}: {len(folders)} class folders but {len(names)} class names")
        for label, folder in enumerate(folders):
            for f in sorted(folder.rglob("*")):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    log.rows += 1
                    refs.append(ImageRef(str(f)))
                    labels.append(label)
        return refs, labels, names
    if not data.is_file():
        raise EvalDataError(f"{data}: no such folder or CSV file")
    with data.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"filepath", "label"} <= set(rows[0]):
        raise EvalDataError(f"{data}: expected the columns filepath,label (got {', '.join(rows[0])})")
    names = names or sorted({r["label"] for r in rows if r.get("label")})
    index = {n: i for i, n in enumerate(names)}
    for n, row in enumerate(rows, start=2):
        log.rows += 1
        label, path = (row.get("label") or "").strip(), (row.get("filepath") or "").strip()
        target = index.get(label, int(label) if label.isdigit() and int(label) < len(names) else None)
        if not path or target is None:
            log.bad_row(f"{data}:{n}", f"expected a filepath and a known label (got {path!r}, {label!r})")
            continue
        refs.append(ImageRef(str(data.parent / path)))
        labels.append(target)
    return refs, labels, names


def class_weights(scorer: Scorer, names: Sequence[str], prompts: Sequence[str]) -> np.ndarray:
    """(D, C): per class, the mean of its normalised prompt embeddings, re-normalised."""
    cols = []
    for name in names:
        emb = torch.from_numpy(scorer.embed_texts([t.format(name, c=name) for t in prompts])).mean(0)  # (D,)
        cols.append(emb / emb.norm())
    return torch.stack(cols, dim=1).numpy()


def classification_metrics(logits: np.ndarray, target: Sequence[int]) -> dict[str, float]:
    """top-1, top-5 (NaN with < 5 classes) and mean per-class recall from (N, C) logits."""
    t = torch.as_tensor(list(target))
    lg = torch.from_numpy(np.asarray(logits, np.float32))
    ks = (1, 5) if lg.shape[1] >= 5 else (1,)
    pred = lg.topk(max(ks), 1, True, True).indices.T  # (k, N)
    correct = pred.eq(t.view(1, -1).expand_as(pred))
    acc = [float(correct[:k].reshape(-1).float().sum()) / len(t) for k in ks]
    return {"acc1": acc[0], "acc5": acc[1] if len(acc) > 1 else float("nan"),
            "mean_per_class_recall": mean_per_class_recall(t.numpy(), lg.argmax(1).numpy())}


def mean_per_class_recall(target: np.ndarray, pred: np.ndarray) -> float:
    """Recall per class present in ``target`` (labels from target ∪ pred, as a confusion matrix), averaged."""
    labels = np.union1d(target, pred)
    t, p = np.searchsorted(labels, target), np.searchsorted(labels, pred)
    confusion = np.zeros((len(labels), len(labels)), np.int64)
    np.add.at(confusion, (t, p), 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.diag(confusion) / confusion.sum(axis=1)
    return float(np.mean(recall[~np.isnan(recall)]))


def run(scorer: Scorer, data: Path, templates_name: str = "default", classnames_name: str | Sequence[str] | None = None,
        **_: Any) -> dict[str, Any]:
    log = RunLog()
    refs, labels, names = read_dataset(data, log, classnames(classnames_name) if classnames_name else None)
    image_emb, ok = scorer.embed_images(refs, log)
    keep = np.flatnonzero(ok)
    if not len(keep):
        raise EvalDataError(f"{data}: no image could be used")
    weights = class_weights(scorer, names, templates(templates_name))
    logits = (100.0 * torch.from_numpy(image_emb[keep]) @ torch.from_numpy(weights)).numpy()  # (N, C)
    log.scored = len(keep)
    metrics = classification_metrics(logits, [labels[i] for i in keep])
    return {"metrics": metrics, "counts": {**log.counts(), "classes": len(names)},
            "details": {"classes": names, "templates": templates_name}}
