"""NegCLIP mining: span swaps by hand for each span kind with supplied tags, seeded sampling, image negatives equal
a brute-force numpy ranking and never the image itself, and the whole mining of a small captions file into a TSV
that the trainer reads (library and ``vlt5r mine-negclip``)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from clip_family.mining import (SPAN_TYPES, MineConfig, all_swaps, find_spans, mine_negclip, nearest_images,
                                text_negatives)
from clip_family.negclip import parse_negclip_tsv, read_negclip_tsv
from foundations.errors import UserError

TAGS = {"a": "DT", "the": "DT", "two": "CD", "three": "CD", "young": "JJ", "red": "JJ", "small": "JJ",
        "brown": "JJ", "blue": "JJ", "green": "JJ", "man": "NN", "hat": "NN", "dog": "NN", "horse": "NN",
        "cup": "NN", "woman": "NN", "square": "NN", "circle": "NN", "cat": "NN", "dogs": "NNS", "cats": "NNS",
        "trees": "NNS", "with": "IN", "near": "IN", "of": "IN", "and": "CC", "holds": "VBZ", "chase": "VBP",
        "runs": "VBZ", "walks": "VBZ", "is": "VBZ", "riding": "VBG", "picks": "VBZ", "up": "RP", "quickly": "RB",
        "slowly": "RB", "left": "RB", "'s": "POS", ",": ",", ".": "."}


def tagger(text: str) -> list[tuple[str, str]]:
    """A dictionary tagger with Penn tags (what spaCy's ``tag_`` gives for these words)."""
    import re

    return [(t, TAGS[t]) for t in re.findall(r"'s|\w+|[^\w\s]", text)]


def test_noun_chunks_of_more_than_two_tokens() -> None:
    text = "a young man with a red hat holds a small brown dog"
    spans = find_spans(tagger(text))
    assert spans["noun_chunk"] == [(0, 3), (4, 7), (8, 12)]
    assert all_swaps(text, tagger(text), "noun_chunk") == [
        "a red hat with a young man holds a small brown dog",
        "a small brown dog with a red hat holds a young man",
        "a young man with a small brown dog holds a red hat"]
    assert find_spans(tagger("two dogs chase three cats"))["noun_chunk"] == []  # chunks of two tokens do not count
    possessive = "the man 's red hat and a small dog"
    assert find_spans(tagger(possessive))["noun_chunk"] == [(0, 5), (6, 9)]


def test_words_nouns_adjectives() -> None:
    text = "a young man with a red hat holds a small brown dog"
    assert all_swaps(text, tagger(text), "noun") == ["a young hat with a red man holds a small brown dog",
                                                     "a young dog with a red hat holds a small brown man",
                                                     "a young man with a red dog holds a small brown hat"]
    adjectives = all_swaps(text, tagger(text), "adjective")
    assert len(adjectives) == 6 and adjectives[0] == "a red man with a young hat holds a small brown dog"
    assert adjectives[-1] == "a young man with a red hat holds a brown small dog"


def test_plural_nouns_keep_singular_ones_apart() -> None:
    text = "two dogs chase three cats near the trees and a cat"
    assert find_spans(tagger(text))["plural_noun"] == [(1, 2), (4, 5), (7, 8)]
    assert all_swaps(text, tagger(text), "plural_noun")[0] == "two cats chase three dogs near the trees and a cat"
    assert all_swaps(text, tagger(text), "noun") == []  # one singular noun: nothing to swap it with


def test_adverbs_and_verb_phrases() -> None:
    text = "a dog runs quickly and a cat walks slowly."
    assert all_swaps(text, tagger(text), "adverb") == ["a dog runs slowly and a cat walks quickly."]
    assert all_swaps(text, tagger(text), "verb_phrase") == ["a dog walks quickly and a cat runs slowly."]
    text = "a man is riding a horse, and a woman picks up a cup"
    assert find_spans(tagger(text))["verb_phrase"] == [(2, 4), (10, 12)]
    assert all_swaps(text, tagger(text), "verb_phrase") == ["a man picks up a horse, and a woman is riding a cup"]


def test_swaps_keep_the_caption_characters() -> None:
    """Spacing and punctuation stay as they were (tokens aligned to the text, not re-joined)."""
    text = "the man's red hat,  and a small dog."
    assert all_swaps(text, tagger(text), "noun_chunk") == ["a small dog,  and the man's red hat."]


def test_seeded_sampling_changed_texts_only() -> None:
    text = "a young man with a red hat holds a small brown dog"
    every = {s for kind in SPAN_TYPES for s in all_swaps(text, tagger(text), kind)}
    first, kinds = text_negatives(text, tagger(text), 5, np.random.default_rng([0, 3]))
    again, _ = text_negatives(text, tagger(text), 5, np.random.default_rng([0, 3]))
    assert first == again and len(first) == 5 == sum(kinds.values())
    assert set(first) <= every and text not in first and len(set(first)) == 5
    assert text_negatives(text, tagger(text), 50, np.random.default_rng(1))[0] != []
    assert len(text_negatives(text, tagger(text), 50, np.random.default_rng(1), tries=100)[0]) == len(every)
    same = "a dog near a dog"  # the only swap gives the same text: no negative
    assert text_negatives(same, tagger(same), 3, np.random.default_rng(0))[0] == []
    only_adj, kinds = text_negatives(text, tagger(text), 3, np.random.default_rng(0), types=("adjective",))
    assert set(kinds) == {"adjective"} and set(only_adj) <= set(all_swaps(text, tagger(text), "adjective"))


def brute_force(features: np.ndarray, k: int) -> np.ndarray:
    x = features / np.linalg.norm(features, axis=1, keepdims=True)
    sims = x @ x.T
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=1, kind="stable")[:, :k]


def test_image_negatives_equal_brute_force_and_exclude_self() -> None:
    features = np.random.default_rng(0).standard_normal((60, 12)).astype(np.float32)
    for k in (1, 3, 7):
        found = nearest_images(features, k)
        assert np.array_equal(found, brute_force(features, k)), k
        assert not (found == np.arange(60)[:, None]).any()
    twins = features.copy()
    twins[1] = twins[0]  # an exact duplicate: each twin's nearest is the other, never itself
    found = nearest_images(twins, 3)
    assert found[0, 0] == 1 and found[1, 0] == 0 and not (found == np.arange(60)[:, None]).any()
    hnsw = nearest_images(features, 3, factory="HNSW16")  # an approximate factory still never lists itself
    assert not (hnsw == np.arange(60)[:, None]).any() and (hnsw == brute_force(features, 3)).mean() > 0.9
    with pytest.raises(UserError, match="need more than 3"):
        nearest_images(features[:3], 3)


CAPTIONS = ["a red square left of a blue circle", "a green circle left of a red square",
            "a blue square left of a green circle", "a red circle left of a green square",
            "two dogs chase three cats", "a dog near a dog"]


def small_world(root: Path) -> tuple[Path, Path, np.ndarray]:
    """6 images with one caption each (two captions for the first) in a CSV, and their features in an HDF5 file
    written by the extraction room's writer (ids = relative path without suffix, as `vlt5r extract` names them)."""
    from PIL import Image

    from feature_extraction.writer import Block, write_feature_file

    (root / "img").mkdir(parents=True)
    with (root / "captions.csv").open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["filepath", "title"])
        for i, caption in enumerate(CAPTIONS):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / "img" / f"{i}.jpg")
            out.writerow([f"img/{i}.jpg", caption])
        out.writerow(["img/0.jpg", "a small red square left of a blue circle"])
    fc = np.random.default_rng(1).standard_normal((6, 8)).astype(np.float32)
    ids = [f"img/{i}" for i in range(6)][::-1]  # file order differs from the captions' order
    attrs = {"format_name": "vlt5-retrieval/features", "format_version": 1, "modality": "image",
             "backbone": "test", "fc_dim": 8, "dtype": "float32", "num_shards": 1, "shard_id": 0, "has_grid": False}
    write_feature_file(root / "feats.h5", attrs, 6, 8, None, "float32", [Block(ids, fc[::-1].copy(), None)], [])
    return root / "captions.csv", root / "feats.h5", fc


def test_mine_a_captions_file_into_the_trainers_tsv(tmp_path: Path) -> None:
    captions, feats, fc = small_world(tmp_path / "data")
    out = tmp_path / "out" / "mined.tsv"
    report = mine_negclip(MineConfig(captions=str(captions), image_features=str(feats), out=str(out),
                                     text_negatives=2, image_negatives=2), tagger=tagger)
    rows = parse_negclip_tsv(out)
    # image 5's only caption has no changing swap: left out; image 0 has two rows
    assert [r.title for r in rows] == [CAPTIONS[0], "a small red square left of a blue circle", *CAPTIONS[1:5]]
    assert report.rows == 6 and report.images == 5 and report.captions == 7 and report.captions_without_negative == 1
    assert all(r.filepath.startswith("../data/img/") for r in rows)  # relative to the TSV's folder
    for row in rows:
        assert 1 <= len(row.neg_caption) <= 2
        assert set(row.neg_caption) <= {s for kind in SPAN_TYPES for s in all_swaps(row.title, tagger(row.title),
                                                                                          kind)}
    image_of_row = [0, 0, 1, 2, 3, 4]
    expected = brute_force(fc[:5], 2)  # the images with rows: 0..4, nearest first
    for r, row in enumerate(rows):
        rows_of = [[q for q, img in enumerate(image_of_row) if img == j] for j in expected[image_of_row[r]]]
        assert list(row.neg_image) == [q for group in rows_of for q in group]
        assert image_of_row[r] not in {image_of_row[q] for q in row.neg_image}
    data = read_negclip_tsv(out)  # the trainer's reader: every row usable
    assert len(data) == 6 and data.items[0].image == (tmp_path / "out" / "../data/img/0.jpg")


def test_mine_refuses_features_without_the_images(tmp_path: Path) -> None:
    captions, _, _ = small_world(tmp_path / "data")
    from feature_extraction.writer import Block, write_feature_file

    attrs = {"format_name": "vlt5-retrieval/features", "format_version": 1, "modality": "image", "backbone": "t",
             "fc_dim": 4, "dtype": "float32", "num_shards": 1, "shard_id": 0, "has_grid": False}
    write_feature_file(tmp_path / "other.h5", attrs, 2, 4, None, "float32",
                       [Block(["x/1", "x/2"], np.ones((2, 4), np.float32), None)], [])
    with pytest.raises(UserError, match=r"other.h5: no feature row for 6 image\(s\)"):
        mine_negclip(MineConfig(captions=str(captions), image_features=str(tmp_path / "other.h5"),
                                out=str(tmp_path / "m.tsv")), tagger=tagger)


def test_cli_mines_with_the_evaluation_suites_tagger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """``vlt5r mine-negclip`` tags through ``evaluation.perturb.SpacyTagger`` (replaced here by the dictionary
    tagger: no spaCy pipeline is installed on this machine)."""
    from evaluation import perturb
    from vlt5r.main import main

    monkeypatch.setattr(perturb.SpacyTagger, "__call__", lambda self, text: tagger(text))
    captions, feats, _ = small_world(tmp_path / "data")
    argv = ["mine-negclip", "--captions", str(captions), "--image-features", str(feats), "--out",
            str(tmp_path / "m.tsv"), "--image-negatives", "1", "--seed", "3", "--quiet"]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out and len(parse_negclip_tsv(tmp_path / "m.tsv")) == 6
    assert main(argv) == 2  # exists: refused without --overwrite
    assert "already exists" in capsys.readouterr().err
