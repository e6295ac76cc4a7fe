"""The learning proof's data: the demo task's captions ("a blue ring", :mod:`retrieval.demo.task`, 64 shapes ×
colours) and their images, with an invented "foreign" language that a bag of English tokens cannot undo: every
word is replaced by an invented word (a fixed substitution, built from syllables) and the word order changes (the
adjective follows the noun, as in Vietnamese or French: "a blue ring" -> "ku tomo vela").

:func:`write_proof_data` writes, under a folder: ``train.jsonl`` / ``val.jsonl`` parallel pairs (the captions of
the training colour–shape combinations / of the held-out ones), ``xtd/images/`` (fresh renders of every entity,
the retrieval pool) and ``xtd/captions.jsonl`` (the English and foreign captions of the held-out combinations'
images only), so the student is scored on sentences and images it never saw.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from foundations.io import atomic_write_text

SYLLABLES = ("ka", "lo", "mi", "re", "su", "to", "va", "ne", "di", "pa", "ro", "le", "zu", "fe", "ki", "mo", "ba",
             "si", "tu", "ve")
FOREIGN = "xx"  # the invented language's code


def invented_word(word: str, taken: set[str] | None = None) -> str:
    """A deterministic 2–3 syllable word for ``word`` (sha1-seeded), distinct from those in ``taken``."""
    digest = hashlib.sha1(word.encode("utf-8")).digest()
    for start in range(0, len(digest) - 3):
        n = 2 + digest[start] % 2
        candidate = "".join(SYLLABLES[b % len(SYLLABLES)] for b in digest[start + 1: start + 1 + n])
        if taken is None or candidate not in taken:
            return candidate
    raise ValueError(f"no free invented word for {word!r}")


def lexicon(words: list[str]) -> dict[str, str]:
    """English word -> invented word, one-to-one."""
    out: dict[str, str] = {}
    for word in sorted(set(words)):
        out[word] = invented_word(word, set(out.values()))
    return out


def translate(caption: str, words: dict[str, str]) -> str:
    """``a <colour> <shape>`` -> ``<a'> <shape'> <colour'>`` (word substitution + the adjective after the noun)."""
    article, color, shape = caption.split()
    return " ".join(words[w] for w in (article, shape, color))


def held_out_entities(entities: list, n: int = 16, seed: int = 0) -> set[str]:
    """``n`` entity ids whose colour–shape combinations never appear in training (every colour and shape still
    does: at most two held-out combinations per colour and per shape)."""
    rng = np.random.default_rng(seed)
    chosen: list = []
    per_color: dict[str, int] = {}
    per_shape: dict[str, int] = {}
    for i in rng.permutation(len(entities)):
        e = entities[int(i)]
        if per_color.get(e.color, 0) < 2 and per_shape.get(e.shape, 0) < 2:
            chosen.append(e.id)
            per_color[e.color] = per_color.get(e.color, 0) + 1
            per_shape[e.shape] = per_shape.get(e.shape, 0) + 1
        if len(chosen) == n:
            break
    return set(chosen)


def write_proof_data(root: str | Path, renders: int = 4, size: int = 64, seed: int = 0) -> dict[str, Path]:
    """Write the proof's files under ``root`` (see the module docstring) and return their paths."""
    from retrieval.demo.task import entities, single_object_image

    root = Path(root)
    ents = entities()
    words = lexicon([w for e in ents for w in e.caption.split()])
    held = held_out_entities(ents, seed=seed)
    pairs = {"train": [], "val": []}
    for e in ents:
        pairs["val" if e.id in held else "train"].append(
            json.dumps({"english": e.caption, "foreign": translate(e.caption, words), "lang": FOREIGN}))
    paths = {}
    for split, lines in pairs.items():
        paths[split] = root / f"{split}.jsonl"
        root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(paths[split], "\n".join(lines) + "\n")
    images = root / "xtd" / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 7])  # a stream the demo CLIP's training renders never used
    captions = []
    for e in ents:
        for k in range(renders):
            single_object_image(e, size, rng).save(images / f"{e.id}_{k}.png")
            if e.id in held:
                for lang, text in (("en", e.caption), (FOREIGN, translate(e.caption, words))):
                    captions.append(json.dumps({"image": f"{e.id}_{k}", "lang": lang, "text": text}))
    paths["images"] = images
    paths["captions"] = root / "xtd" / "captions.jsonl"
    atomic_write_text(paths["captions"], "\n".join(captions) + "\n")
    return paths
