"""NegCLIP's hard-negative mining (Yuksekgonul et al., ICLR 2023, §5 and App. D), which its published code does not
ship: for every caption, captions with two spans of one kind swapped; for every image, its nearest images in CLIP
space; written as NegCLIP's TSV (:mod:`clip_family.negclip`).

* **Spans** (:func:`find_spans`) — from Penn Treebank tags given by a part-of-speech tagger, the interface of the
  evaluation suite (:data:`evaluation.perturb.Tagger`: ``text -> [(token, tag)]``; spaCy's ``en_core_web_sm`` by
  default, tests pass tags). Six kinds (:data:`SPAN_TYPES`): ``noun_chunk`` — a maximal run matching
  ``(DT|PDT|PRP$|WP$)* (JJ*|CD|NN*|POS)* NN*`` of more than two tokens ("a red square"); ``verb_phrase`` — a
  maximal run of verbs and modals (``MD|VB*``) with an optional particle (``RP``) ("is sitting", "picks up");
  ``noun`` (NN, NNP), ``plural_noun`` (NNS, NNPS), ``adverb`` (RB*), ``adjective`` (JJ*), one token each.
* **Text negatives** (:func:`text_negatives`) — each negative swaps one random pair of spans of one random kind
  (a kind is drawn among those with two spans or more, then a pair of it), in the caption's own characters (the
  tokens are aligned to the text, so spacing and punctuation stay); kept only if the text changed and is new;
  up to ``n`` per caption; seeded per caption (``(seed, row)``), so a caption's negatives do not depend on the rest.
* **Image negatives** (:func:`nearest_images`) — the ``k`` nearest *other* images by cosine similarity of their CLIP
  image features (``k = 3`` as in the paper), searched with faiss through :func:`retrieval.indexing.build_index`
  (exact ``Flat`` by default; any faiss factory for large sets).
* :func:`mine_negclip` — a captions file (any format of :func:`clip_family.data.open_dataset`) + the image
  features (HDF5 of ``vlt5r extract``) -> NegCLIP's TSV: one row per (image, caption) with at least one text
  negative; ``neg_image`` lists every row of the ``k`` nearest images (nearest first), so a training draw picks a
  neighbour and one of its captions.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clip_family.data import FORMATS
from clip_family.negclip import NegClipRow, write_negclip_tsv
from foundations.errors import ConfigError, UserError

logger = logging.getLogger(__name__)

Tagged = Sequence[tuple[str, str]]
Span = tuple[int, int]  # token positions [start, stop)
SPAN_TYPES = ("noun_chunk", "verb_phrase", "noun", "plural_noun", "adverb", "adjective")
_CLASSES = {"DT": "D", "PDT": "D", "PRP$": "D", "WP$": "D", "CD": "C", "JJ": "J", "JJR": "J", "JJS": "J",
            "NN": "N", "NNP": "N", "NNS": "N", "NNPS": "N", "POS": "P", "MD": "V", "VB": "V", "VBD": "V",
            "VBG": "V", "VBN": "V", "VBP": "V", "VBZ": "V", "RP": "T", "RB": "R", "RBR": "R", "RBS": "R"}
_PHRASES = {"noun_chunk": re.compile(r"D*[JCNP]*N"), "verb_phrase": re.compile(r"V+T?")}
_WORDS = {"noun": {"NN", "NNP"}, "plural_noun": {"NNS", "NNPS"}, "adverb": {"RB", "RBR", "RBS"},
          "adjective": {"JJ", "JJR", "JJS"}}


# -- spans and swaps -------------------------------------------------------------------------------------------------
def find_spans(tagged: Tagged, types: Sequence[str] = SPAN_TYPES) -> dict[str, list[Span]]:
    """Every span of each kind (token positions, left to right); see the module docstring for the grammar."""
    classes = "".join(_CLASSES.get(tag, "x") for _, tag in tagged)
    out: dict[str, list[Span]] = {}
    for kind in types:
        if kind in _PHRASES:
            spans = [m.span() for m in _PHRASES[kind].finditer(classes)]
            out[kind] = [s for s in spans if kind != "noun_chunk" or s[1] - s[0] > 2]
        elif kind in _WORDS:
            out[kind] = [(i, i + 1) for i, (_, tag) in enumerate(tagged) if tag in _WORDS[kind]]
        else:
            raise ConfigError(f"unknown span type {kind!r}; one of {', '.join(SPAN_TYPES)}")
    return out


def align(text: str, tokens: Sequence[str]) -> list[tuple[int, int]] | None:
    """Character offsets of each token in ``text`` (in order), or None when a token is not found as it is."""
    offsets, pos = [], 0
    for token in tokens:
        start = text.find(token, pos)
        if start < 0 or text[pos:start].strip():
            return None
        offsets.append((start, start + len(token)))
        pos = start + len(token)
    return offsets


def swap(text: str, offsets: Sequence[tuple[int, int]], a: Span, b: Span) -> str:
    """``text`` with token spans ``a`` and ``b`` (``a`` before ``b``, not overlapping) exchanged."""
    (a0, a1), (b0, b1) = (offsets[a[0]][0], offsets[a[1] - 1][1]), (offsets[b[0]][0], offsets[b[1] - 1][1])
    return text[:a0] + text[b0:b1] + text[a1:b0] + text[a0:a1] + text[b1:]


def _prepared(text: str, tagged: Tagged) -> tuple[str, list[tuple[int, int]]]:
    tokens = [t for t, _ in tagged]
    offsets = align(text, tokens)
    if offsets is None:  # the tagger changed the tokens: work on them, space-separated
        text = " ".join(tokens)
        offsets = align(text, tokens)
    return text, offsets  # type: ignore[return-value]


def all_swaps(text: str, tagged: Tagged, kind: str) -> list[str]:
    """Every distinct changed text made by swapping two spans of ``kind`` (pairs in left-to-right order)."""
    text2, offsets = _prepared(text, tagged)
    out: list[str] = []
    for a, b in itertools.combinations(find_spans(tagged, (kind,))[kind], 2):
        neg = swap(text2, offsets, a, b)
        if neg != text and neg not in out:
            out.append(neg)
    return out


def text_negatives(text: str, tagged: Tagged, n: int, rng: np.random.Generator,
                   types: Sequence[str] = SPAN_TYPES, tries: int = 4) -> tuple[list[str], Counter]:
    """Up to ``n`` negatives of ``text``, each one random same-kind pair swapped (kind drawn first, among kinds with
    a pair); a swap that leaves the text unchanged or repeats an earlier negative is drawn again, at most
    ``tries * n`` draws. Returns (negatives, how many of each kind)."""
    text2, offsets = _prepared(text, tagged)
    pairs = {kind: list(itertools.combinations(spans, 2)) for kind, spans in find_spans(tagged, types).items()
             if len(spans) >= 2}
    kinds = [k for k in types if k in pairs]
    out: list[str] = []
    made: Counter = Counter()
    for _ in range(tries * n):
        if len(out) >= n or not kinds:
            break
        kind = kinds[int(rng.integers(len(kinds)))]
        a, b = pairs[kind][int(rng.integers(len(pairs[kind])))]
        neg = swap(text2, offsets, a, b)
        if neg != text and neg not in out:
            out.append(neg)
            made[kind] += 1
    return out, made


# -- image neighbours ------------------------------------------------------------------------------------------------
def nearest_images(features: np.ndarray, k: int = 3, factory: str = "Flat") -> np.ndarray:
    """(N, k) row numbers of each row's ``k`` nearest other rows by cosine similarity, nearest first (faiss through
    the retrieval room's index builder; exact with ``Flat``). A row never lists itself."""
    from retrieval.indexing import IndexConfig, build_index

    features = np.asarray(features, dtype=np.float32)
    n = len(features)
    if k < 1:
        raise ConfigError(f"image negatives per image must be >= 1, got {k}")
    if n <= k:
        raise UserError(f"{n} images: need more than {k} to find {k} other nearest images each")
    index = build_index(features, [str(i) for i in range(n)], IndexConfig(factory=factory, normalize=True,
                                                                          use_gpu=False))
    position = index.ids.astype(np.int64)  # index row -> input row (an index may store rows in its own order)
    out = np.empty((n, k), np.int64)
    for start in range(0, n, 4096):
        _, rows = index.search_rows(features[start:start + 4096], k + 1)  # (q, k+1)
        for q, found in enumerate(rows):
            others = [int(position[r]) for r in found if r >= 0 and position[r] != start + q]
            if len(others) < k:  # an approximate index found too few: fall back to the exact ranking
                sims = features[start + q] @ features.T
                sims[start + q] = -np.inf
                others = list(np.argsort(-sims, kind="stable")[:k])
            out[start + q] = others[:k]
    return out


# -- the whole mining --------------------------------------------------------------------------------------------------
@dataclass
class MineConfig:
    """What ``vlt5r mine-negclip`` mines (every field is a flag of the driver)."""

    captions: str = field(default="", metadata={"help": "captions: a folder, .parquet, .csv/.tsv (image paths)"})
    image_features: str = field(default="", metadata={"help": "CLIP image features of its images (HDF5 of vlt5r "
                                                               "extract; ids = image paths, any of: the caption "
                                                               "file's image entry, without suffix, relative to "
                                                               "--image-root, the stem)"})
    out: str = field(default="", metadata={"help": "NegCLIP TSV to write"})
    data_format: str = field(default="auto", metadata={"help": "override the detected captions format",
                                                        "choices": FORMATS})
    image_column: str = field(default="filepath", metadata={"help": "CSV/TSV image column"})
    caption_column: str = field(default="title", metadata={"help": "CSV/TSV caption column"})
    image_root: str | None = field(default=None, metadata={"help": "folder of relative image paths"})
    text_negatives: int = field(default=3, metadata={"help": "hard-negative captions per caption (at most)"})
    image_negatives: int = field(default=3, metadata={"help": "nearest other images per image (K; the paper: 3)"})
    span_types: tuple[str, ...] = field(default=SPAN_TYPES, metadata={"help": "kinds of spans to swap"})
    index_factory: str = field(default="Flat", metadata={"help": "faiss factory of the image search (Flat: exact)"})
    spacy_pipeline: str = field(default="en_core_web_sm", metadata={"help": "spaCy pipeline of the tagger"})
    seed: int = field(default=0, metadata={"help": "seed of the swaps"})
    verify_images: bool = field(default=False, metadata={"help": "decode every image once while reading"})

    def __post_init__(self) -> None:
        if self.text_negatives < 1 or self.image_negatives < 1:
            raise ConfigError(f"text_negatives and image_negatives must be >= 1 (got {self.text_negatives}, "
                              f"{self.image_negatives})")
        self.span_types = tuple(self.span_types)
        unknown = [t for t in self.span_types if t not in SPAN_TYPES]
        if unknown or not self.span_types:
            raise ConfigError(f"span_types: {unknown or 'none given'}; choose from {', '.join(SPAN_TYPES)}")


@dataclass
class MineReport:
    out: str
    images: int
    captions: int
    rows: int
    captions_without_negative: int
    negatives_by_type: dict[str, int]
    skipped: dict[str, int]

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in self.negatives_by_type.items() if v)
        return (f"wrote {self.out}: {self.rows} rows ({self.images} images, {self.captions} captions; "
                f"{self.captions_without_negative} captions without a swap left out); text negatives by kind: "
                f"{kinds or 'none'}")


def feature_rows(paths: Sequence[Path], keys: Sequence[str], ids: Sequence[str], roots: Sequence[Path],
                 source: str) -> np.ndarray:
    """Row of each image in a feature file whose ids are ``ids``: the first candidate id found among the caption
    file's entry, it without suffix, the path relative to each root without suffix, the stem and the name."""
    index = {i: n for n, i in enumerate(ids)}
    rows, missing = [], []
    for path, key in zip(paths, keys):
        candidates = [key, str(Path(key).with_suffix("").as_posix())]
        for root in roots:
            try:
                candidates.append(path.resolve().relative_to(root.resolve()).with_suffix("").as_posix())
            except ValueError:
                pass
        candidates += [path.stem, path.name]
        found = next((index[c] for c in candidates if c in index), None)
        if found is None:
            missing.append(key)
        rows.append(-1 if found is None else found)
    if missing:
        shown = ", ".join(repr(m) for m in missing[:3])
        raise UserError(f"{source}: no feature row for {len(missing)} image(s) ({shown}); its ids look like "
                        f"{', '.join(repr(i) for i in list(ids)[:2])} (extract the same images with vlt5r extract)")
    rows_arr = np.asarray(rows, np.int64)
    if len(set(rows_arr.tolist())) < len(rows_arr):
        dup = Counter(rows_arr.tolist()).most_common(1)[0][0]
        raise UserError(f"{source}: several images map to the feature id {ids[dup]!r}; give ids by relative path")
    return rows_arr


def mine_negclip(cfg: MineConfig, tagger: Any = None) -> MineReport:
    """Read the captions and features, mine both kinds of negatives, write NegCLIP's TSV (see the module docstring).
    ``tagger``: any ``text -> [(token, Penn tag)]`` (default: spaCy's ``cfg.spacy_pipeline``)."""
    from clip_family.data import open_dataset
    from evaluation.perturb import SpacyTagger
    from feature_extraction.readers import open_features

    data = open_dataset(cfg.captions, cfg.data_format, cfg.image_column, cfg.caption_column, cfg.image_root,
                        cfg.verify_images)
    items = data.items
    bytes_images = [it.key for it in items if not isinstance(it.image, Path)]
    if bytes_images:
        raise UserError(f"{cfg.captions}: {len(bytes_images)} image(s) held as bytes (e.g. {bytes_images[0]!r}); "
                        "NegCLIP's TSV holds image paths: use a folder, CSV/TSV or parquet with paths")
    paths = [Path(it.image) for it in items]  # type: ignore[arg-type]
    with open_features(cfg.image_features) as store:  # every image's features first: a mismatch fails fast
        roots = [Path(r) for r in (cfg.image_root, Path(cfg.captions).parent if Path(cfg.captions).is_file()
                                   else cfg.captions) if r]
        rows = feature_rows(paths, [it.key for it in items], store.ids, roots, cfg.image_features)
        fc_all = store.get_many([store.ids[r] for r in rows]).fc  # (N, D)
        if fc_all is None:
            raise UserError(f"{cfg.image_features}: no 'fc' vectors")
    tagger = tagger or SpacyTagger(cfg.spacy_pipeline)
    by_type: Counter = Counter()
    kept: list[list[tuple[str, list[str]]]] = []  # per image: (caption, negatives) of captions with a negative
    without = row = 0
    for item in items:
        mine: list[tuple[str, list[str]]] = []
        for caption in item.captions:
            negs, made = text_negatives(caption, tagger(caption), cfg.text_negatives,
                                        np.random.default_rng([cfg.seed, row]), cfg.span_types)
            row += 1
            by_type.update(made)
            if negs:
                mine.append((caption, negs))
            else:
                without += 1
        kept.append(mine)
    use = [i for i, m in enumerate(kept) if m]
    if len(use) <= cfg.image_negatives:
        raise UserError(f"{cfg.captions}: {len(use)} image(s) have a caption with a swappable pair of spans; need "
                        f"more than {cfg.image_negatives} (check the tagger: {cfg.spacy_pipeline})")
    out = Path(cfg.out)
    fc = fc_all[use]  # (I, D) the images that have a row
    paths = [paths[i] for i in use]
    neighbours = nearest_images(fc, cfg.image_negatives, cfg.index_factory)  # (I, K) positions in `use`
    first_row = np.cumsum([0] + [len(kept[i]) for i in use])  # TSV rows of image position p: first_row[p] ...
    table: list[NegClipRow] = []
    for p, i in enumerate(use):
        neg_rows = tuple(r for q in neighbours[p] for r in range(first_row[q], first_row[q + 1]))
        filepath = _relative_to(paths[p], out.parent)
        table += [NegClipRow(filepath, caption, tuple(negs), neg_rows) for caption, negs in kept[i]]
    write_negclip_tsv(out, table)
    report = MineReport(str(out), len(use), row, len(table), without, {k: by_type[k] for k in cfg.span_types},
                        dict(data.report.skipped))
    logger.info(report.summary())
    return report


def _relative_to(path: Path, folder: Path) -> str:
    """``path`` relative to ``folder`` (the TSV's: the trainer's default image root), else absolute."""
    try:
        return Path(os.path.relpath(path.resolve(), folder.resolve())).as_posix()
    except ValueError:  # another drive
        return str(path.resolve())
