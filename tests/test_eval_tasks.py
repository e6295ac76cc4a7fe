"""Every evaluation task end to end with a tiny OpenAI-format CLIP, on small files written here in each
published format — each with one missing image and one malformed row (reported, counted, the run goes on)."""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from evaluation.common import ImageRef, RunLog
from evaluation.results import validate_record
from evaluation.scorer import FeatureScorer, load_scorer
from evaluation.tasks import TASKS, run_task

COLORS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (30, 200, 200), (120, 60, 200)]


def images(folder: Path, names: list[str], suffix: str = ".jpg") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(names):
        arr = np.zeros((40, 48, 3), np.uint8) + np.array(COLORS[k % len(COLORS)], np.uint8)
        arr[: 10 + 4 * k, : 12 + 3 * k] = 255 - arr[0, 0]
        (folder / f"{name}{suffix}").parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(folder / f"{name}{suffix}")


def dump(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


# each writer: tmp -> (data, images, options, expected scored items)
def retrieval_data(tmp: Path):
    images(tmp / "img" / "val2014", ["a", "b", "c"])
    rows = [{"image": f"val2014/{n}.jpg", "caption": [f"a photo {n}", f"picture of {n}"]} for n in "abc"]
    rows += [{"image": "val2014/gone.jpg", "caption": ["lost"]}, {"image": "val2014/a.jpg"}]
    return dump(tmp / "coco_karpathy_test.json", rows), tmp / "img", {}, 3


def classification_data(tmp: Path):
    for cls in ("cat", "dog", "fish"):
        images(tmp / "cls" / cls, [f"{cls}{k}" for k in range(2)])
    (tmp / "cls" / "dog" / "broken.jpg").write_bytes(b"not an image")
    rows = [{"filepath": f"cls/{c}/{c}0.jpg", "label": c} for c in ("cat", "dog", "fish")]
    rows += [{"filepath": "cls/cat/none.jpg", "label": "cat"}, {"filepath": "cls/cat/cat1.jpg", "label": "zebra"}]
    write_csv(tmp / "labels.csv", rows)
    return tmp / "cls", None, {"templates_name": "default"}, 6


def classification_csv_data(tmp: Path):
    classification_data(tmp)
    return tmp / "labels.csv", None, {}, 3


def vg_rows(kind: str) -> list[dict]:
    box = {"bbox_x": 4, "bbox_y": 2, "bbox_w": 30, "bbox_h": 20}
    extra = ({"relation_name": "on"} if kind == "relation" else {"attributes": ["red", "blue"]})
    rows = [{"image_path": f"{n}.jpg", "true_caption": f"the {n} is on the table",
             "false_caption": f"the table is on the {n}", **box, **extra} for n in ("a", "b")]
    rows.append({"image_path": "gone.jpg", "true_caption": "x", "false_caption": "y", **box, **extra})
    rows.append({"image_path": "a.jpg", "false_caption": "no true caption", **box, **extra})
    return rows


def aro_relation_data(tmp: Path):
    images(tmp / "images", ["a", "b"])
    return dump(tmp / "visual_genome_relation.json", vg_rows("relation")), None, {}, 2


def aro_attribution_data(tmp: Path):
    images(tmp / "images", ["a", "b"])
    return dump(tmp / "visual_genome_attribution.json", vg_rows("attribution")), None, {}, 2


def fake_tagger(text: str) -> list[tuple[str, str]]:
    tags = {"dog": "NN", "cat": "NN", "ball": "NN", "red": "JJ", "big": "JJ", "small": "JJ"}
    return [(w, tags.get(w.lower(), "DT" if w.lower() in ("a", "the") else "VB")) for w in text.split()]


def aro_order_data(tmp: Path):
    images(tmp / "flickr", ["a", "b"])
    rows = [{"image": "flickr/a.jpg", "caption": ["a big dog chases a red ball", "the small cat sleeps"]},
            {"image": "flickr/b.jpg", "caption_options": ["a cat", "cat a", "a a", "cat cat", "x"]},
            {"image": "flickr/gone.jpg", "caption": ["a dog"]}, {"caption": ["no image"]}]
    return dump(tmp / "flickr30k_test.json", rows), tmp, {"tagger": fake_tagger, "seed": 3}, 3


def sugar_crepe_data(tmp: Path):
    images(tmp / "val2017", ["000000000139", "000000000285"])
    dump(tmp / "data" / "replace_obj.json", {
        "7": {"filename": "000000000139.jpg", "caption": "a dog on a sofa", "negative_caption": "a cat on a sofa"},
        "12": {"filename": "000000000285.jpg", "caption": "a bear", "negative_caption": "a horse"},
        "40": {"filename": "gone.jpg", "caption": "x", "negative_caption": "y"}})
    dump(tmp / "data" / "swap_att.json", {
        "3": {"filename": "000000000139.jpg", "caption": "a red car and a blue bus", "negative_caption": "a blue car"},
        "9": {"filename": "000000000285.jpg", "caption": "no negative"}})
    return tmp / "data", tmp / "val2017", {}, 3


def crepe_data(tmp: Path):
    images(tmp / "vg", ["11"])
    images(tmp / "vg" / "VG_100K_2", ["12"])  # Visual Genome ships two image folders
    base = {"x": 2, "y": 2, "width": 30, "height": 30}
    rows = [{"image_id": "11", **base, "caption": "a man riding a horse",
             "hard_negs": str(["a horse riding a man", "a man riding a dog", "a man near a horse"])},
            {"image_id": "12", "x": "", "y": "", "width": "", "height": "", "caption": "two cups on a table",
             "hard_negs": json.dumps(["a table on two cups", "three cups"])},
            {"image_id": "99", **base, "caption": "gone", "hard_negs": str(["x"])},
            {"image_id": "11", **base, "caption": "bad negatives", "hard_negs": "not a list ["}]
    return write_csv(tmp / "prod_vg_hard_negs_swap_complexity_4.csv", rows), tmp / "vg", {}, 2


def svo_data(tmp: Path):
    images(tmp / "images", ["p1", "n1", "p2", "n2"], suffix=".png")
    row = {"sentence": "a girl rides a horse", "pos_image_id": "p1", "neg_image_id": "n1", "subj_neg": "False",
           "verb_neg": "True", "obj_neg": "False"}
    rows = [row, {**row, "pos_image_id": "p2", "neg_image_id": "n2", "verb_neg": "False", "subj_neg": "True"},
            {**row, "neg_image_id": "missing"}, {**row, "obj_neg": "maybe"}]
    return write_csv(tmp / "svo_probes.csv", rows), None, {}, 2


def winoground_data(tmp: Path):
    # the release's layout: data/examples.jsonl + data/images/<name>.png (the default --images)
    images(tmp / "data" / "images", ["ex_0_img_0", "ex_0_img_1", "ex_1_img_0", "ex_1_img_1"], suffix=".png")
    rows = [{"id": k, "image_0": f"ex_{k}_img_0", "image_1": f"ex_{k}_img_1", "caption_0": "a mug in some grass",
             "caption_1": "some grass in a mug", "tag": "Object"} for k in (0, 1)]
    rows.append({"id": 2, "image_0": "ex_2_img_0", "image_1": "ex_0_img_1", "caption_0": "a", "caption_1": "b"})
    path = tmp / "data" / "examples.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    return path, None, {}, 2


def vl_checklist_data(tmp: Path):
    images(tmp / "vg", ["1", "2"])
    dump(tmp / "data" / "Attribute" / "vg" / "color.json", [
        ["1.jpg", {"POS": ["a red bus"], "NEG": ["a green bus"]}],
        ["gone.jpg", {"POS": ["x"], "NEG": ["y"]}],
        ["2.jpg", {"POS": ["only positives"]}]])
    dump(tmp / "data" / "Object" / "vg" / "size.json", [["2.jpg", {"POS": ["a big dog", "a dog"],
                                                                   "NEG": ["a small dog", "a cat"]}]])
    return tmp / "data", tmp / "vg", {}, 3


MISSING = {"gone.jpg", "broken.jpg", "missing.jpg", "ex_2_img_0.png", "99.jpg"}
WRITERS: dict[str, Callable] = {
    "retrieval": retrieval_data, "classification": classification_data, "aro_vg_relation": aro_relation_data,
    "aro_vg_attribution": aro_attribution_data, "aro_flickr30k_order": aro_order_data,
    "sugar_crepe": sugar_crepe_data, "crepe": crepe_data, "svo_probes": svo_data, "winoground": winoground_data,
    "vl_checklist": vl_checklist_data,
}


@pytest.fixture(scope="module")
def scorer(tiny_vit_pt: Path):
    return load_scorer(str(tiny_vit_pt))


@pytest.mark.parametrize("task", list(WRITERS))
def test_task_end_to_end(task: str, scorer, tmp_path: Path) -> None:
    data, image_dir, options, scored = WRITERS[task](tmp_path)
    record = run_task(task, scorer, data, image_dir, **options)
    assert validate_record(json.loads(json.dumps(record, default=str))) == []
    counts = record["counts"]
    assert counts["scored"] == scored
    assert counts["missing_images"] == 1, counts["missing_examples"]
    assert Path(counts["missing_examples"][0].split(":")[0]).name in MISSING  # reported with its path
    # a folder per class has no rows that could be malformed; every other format has one bad row
    assert counts["malformed_rows"] == (task != "classification"), counts["malformed_examples"]
    assert counts["rows"] > counts["scored"]
    values = [v for v in record["metrics"].values() if not np.isnan(v)]
    assert values and all(0 <= v <= 1 or k in ("relations", "attribute_pairs")
                          for k, v in record["metrics"].items() if not np.isnan(v))
    assert record["precision"] == "fp32" and record["model"].endswith(".pt")


def test_every_registered_task_has_an_end_to_end_test() -> None:
    covered = set(WRITERS) | {"aro_coco_order"}  # COCO-Order is Flickr30k-Order's reader on another split
    assert covered == set(TASKS)


def test_classification_csv(scorer, tmp_path: Path) -> None:
    data, *_ = classification_csv_data(tmp_path)
    (tmp_path / "classes.txt").write_text("cat\ndog\nfish\n")  # without a list, "zebra" would be a fourth class
    record = run_task("classification", scorer, data, None, classnames_name=str(tmp_path / "classes.txt"))
    c = record["counts"]
    assert (c["scored"], c["missing_images"], c["malformed_rows"]) == (3, 1, 1)
    assert np.isnan(record["metrics"]["acc5"])  # fewer than 5 classes, as CLIP_benchmark


def test_crop_box_is_applied(scorer, tmp_path: Path) -> None:
    images(tmp_path, ["a"])
    log = RunLog()
    emb, ok = scorer.embed_images([ImageRef(str(tmp_path / "a.jpg")), ImageRef(str(tmp_path / "a.jpg"), (0, 0, 8, 8))],
                                  log)
    assert ok.all() and not np.allclose(emb[0], emb[1])
    assert np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)


def test_feature_file_scorer_matches_the_model(scorer, tiny_vit_pt: Path, tmp_path: Path) -> None:
    from vlt5r.main import main

    data, image_dir, _, _ = retrieval_data(tmp_path)
    feats = tmp_path / "feats.h5"
    assert main(["extract", "--images", str(image_dir), "--out", str(feats), "--backbone", str(tiny_vit_pt),
                 "--no-grid", "--no-progress", "--quiet", "--num-workers", "0"]) == 0
    by_model = run_task("retrieval", scorer, data, image_dir)
    by_file = run_task("retrieval", FeatureScorer(feats, image_dir, scorer), data, image_dir)
    assert by_file["scorer"]["image_features"] == str(feats)
    assert by_file["counts"]["scored"] == 3 and by_file["counts"]["missing_images"] == 1
    for k, v in by_model["metrics"].items():
        assert by_file["metrics"][k] == pytest.approx(v)


def test_hf_clip_dir_scores_through_the_same_task(tiny_hf_clip_dir: Path, tmp_path: Path) -> None:
    data, image_dir, _, scored = sugar_crepe_data(tmp_path)
    record = run_task("sugar_crepe", load_scorer(f"hf:{tiny_hf_clip_dir}"), data, image_dir)
    assert record["counts"]["scored"] == scored and record["model"].startswith("hf:")


class HighLevelModel:
    """The CLIP-family calling convention: encode_image(PIL images), encode_text(strings)."""

    def encode_image(self, images: list) -> torch.Tensor:
        return torch.tensor([[float(np.asarray(im)[..., c].mean()) for c in range(3)] + [1.0] for im in images])

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        return torch.tensor([[float("red" in t), float("green" in t), float("blue" in t), 0.1] for t in texts])


def test_encoder_scorer_plugs_in_a_high_level_model(tmp_path: Path) -> None:
    from evaluation.scorer import EncoderScorer

    images(tmp_path / "val2017", ["r", "g"])  # COLORS[0] is red, COLORS[1] green
    dump(tmp_path / "data" / "replace_att.json", {
        "5": {"filename": "r.jpg", "caption": "a red square", "negative_caption": "a blue square"},
        "8": {"filename": "g.jpg", "caption": "a green square", "negative_caption": "a red square"},
        "9": {"filename": "gone.jpg", "caption": "a green square", "negative_caption": "a red square"}})
    record = run_task("sugar_crepe", EncoderScorer(HighLevelModel(), name="toy"), tmp_path / "data",
                      tmp_path / "val2017")
    assert record["metrics"]["replace_att"] == 1.0 and record["counts"]["missing_images"] == 1
    assert record["scorer"] == {"model": "toy", "precision": "fp32", "scorer": "EncoderScorer"}


def test_precision_is_checked(tiny_vit_pt: Path) -> None:
    from foundations.errors import UsageError

    with pytest.raises(UsageError, match="needs a CUDA device"):
        load_scorer(str(tiny_vit_pt), device="cpu", precision="fp16")


def make_tiny_siglip(clip_dir: Path, out: Path) -> Path:
    """A tiny transformers SigLIP dir (the tiny CLIP's BPE tokenizer, 16 text positions, 32 px)."""
    from transformers import (
        AutoTokenizer,
        SiglipConfig,
        SiglipImageProcessor,
        SiglipModel,
    )

    tok = AutoTokenizer.from_pretrained(clip_dir)
    n = len(tok)
    text = {"vocab_size": n, "hidden_size": 40, "intermediate_size": 74, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 16, "projection_size": 40, "pad_token_id": n - 1,
            "bos_token_id": n - 2, "eos_token_id": n - 1}
    vision = {"hidden_size": 40, "intermediate_size": 74, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 32, "patch_size": 8}
    torch.manual_seed(0)
    SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).save_pretrained(out)
    tok.save_pretrained(out)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def test_siglip_dir_pads_texts_to_max_length(tiny_hf_clip_dir: Path, tmp_path: Path) -> None:
    import torch.nn.functional as F
    from transformers import AutoTokenizer, SiglipModel

    sig = make_tiny_siglip(tiny_hf_clip_dir, tmp_path / "siglip")
    scorer = load_scorer(f"hf:{sig}")
    ours = scorer.embed_texts(["a dog", "a cat sits on the mat"])
    model, tok = SiglipModel.from_pretrained(sig).eval(), AutoTokenizer.from_pretrained(sig)
    with torch.no_grad():
        tokens = tok(["a dog", "a cat sits on the mat"], padding="max_length", max_length=16, truncation=True,
                     return_tensors="pt")
        out = model.get_text_features(**tokens)
        ref = F.normalize(out if isinstance(out, torch.Tensor) else out.pooler_output, dim=-1).numpy()
    assert np.allclose(ours, ref, atol=1e-6)
    data, image_dir, _, scored = winoground_data(tmp_path / "wg")
    assert run_task("winoground", scorer, data, image_dir)["counts"]["scored"] == scored


def test_karpathy_dataset_json_layout_reads_the_test_split(tmp_path: Path) -> None:
    from evaluation.retrieval import read_karpathy

    data = dump(tmp_path / "dataset_coco.json", {"images": [
        {"filepath": "val2014", "filename": "a.jpg", "split": "test", "sentences": [{"raw": "A dog."}, {"raw": "x"}]},
        {"filepath": "train2014", "filename": "b.jpg", "split": "train", "sentences": [{"raw": "not test"}]},
        {"filename": "c.jpg", "split": "test", "sentences": [{"tokens": ["no", "raw"]}]}]})
    log = RunLog()
    entries = read_karpathy(data, tmp_path, log)
    assert entries == [(str(tmp_path / "val2014" / "a.jpg"), ["A dog.", "x"])]
    assert (log.rows, log.malformed) == (2, 1)  # the train image is another split, not a bad row


def test_shipped_templates_and_classnames() -> None:
    from evaluation.classification import classnames, templates

    assert len(templates("imagenet1k")) == 80 and templates("default") == ["a photo of a {c}."]
    assert templates("a handwritten {}") == ["a handwritten {}"]
    assert len(classnames("imagenet1k")) == 1000 and classnames("cifar10")[0] == "airplane"
    assert classnames(["cat", "dog"]) == ["cat", "dog"]
