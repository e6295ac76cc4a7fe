"""evaluation/ reporters against hand-worked examples, and zero-shot metrics against CLIP_benchmark's own code."""

from __future__ import annotations

import builtins
import math

import numpy as np
import pytest
import torch

from evaluation import aro, crepe, sugar_crepe, svo, vl_checklist, winoground
from evaluation.classification import (
    class_weights,
    classification_metrics,
    mean_per_class_recall,
)
from evaluation.common import ImageRef, Item
from evaluation.retrieval import retrieval_metrics
from evaluation.scorer import ModelScorer, normalise


def item(meta: dict | None = None, n_images: int = 1, n_texts: int = 2) -> Item:
    return Item("x", [ImageRef(f"{i}.jpg") for i in range(n_images)], [f"t{k}" for k in range(n_texts)], meta or {})


def pair(true_wins: bool | None) -> np.ndarray:
    """ARO layout [false, true]; None = a tie."""
    return np.array([[0.3, 0.3]]) if true_wins is None else np.array([[0.2, 0.4]] if true_wins else [[0.4, 0.2]])


# -- ARO ----------------------------------------------------------------------------------------------------------
def test_aro_relation_macro_excludes_symmetric_relations() -> None:
    cases = [("on", True), ("on", False), ("holding", True), ("next to", False), ("on", None)]
    items = [item({"group": g}) for g, _ in cases]
    metrics, details = aro.report_relation(items, [pair(c) for _, c in cases])
    # on: 1 of 3 (the tie goes to the false option), holding 1/1; "next to" is in the published exclusion list
    assert details["per_relation"]["on"] == {"accuracy": pytest.approx(1 / 3), "count": 3, "excluded": False}
    assert details["per_relation"]["next to"]["excluded"]
    assert metrics["macro_accuracy"] == pytest.approx((1 / 3 + 1.0) / 2)
    assert metrics["accuracy"] == pytest.approx(2 / 5) and metrics["relations"] == 2


def test_aro_symmetric_list_is_the_published_one() -> None:
    sym = aro.symmetric_relations()
    assert len(sym) == 157 and {"next to", "wrapped in", "adjusting", "around", "with"} <= sym
    assert "on" not in sym and "holding" not in sym


def test_aro_attribution_keeps_pairs_with_at_least_25_items() -> None:
    items, sims = [], []
    for k in range(25):  # red_blue: exactly 25 items, 20 right -> kept
        items.append(item({"group": "red_blue"}))
        sims.append(pair(k < 20))
    for _ in range(24):  # big_small: 24 items, all right -> dropped by the filter
        items.append(item({"group": "big_small"}))
        sims.append(pair(True))
    metrics, details = aro.report_attribution(items, sims)
    assert metrics["macro_accuracy"] == pytest.approx(0.8) and metrics["attribute_pairs"] == 1
    assert metrics["accuracy"] == pytest.approx(44 / 49)
    assert details["per_pair"]["big_small"]["kept"] is False


def test_aro_order_precision_at_1() -> None:
    sims = [np.array([[0.9, 0.1, 0.2, 0.3, 0.4]]), np.array([[0.1, 0.9, 0.2, 0.3, 0.4]]),
            np.array([[0.5, 0.5, 0.1, 0.1, 0.1]])]  # a tie goes to index 0 (argmax), the original caption
    metrics, _ = aro.report_order([item(n_texts=5)] * 3, sims)
    assert metrics["precision@1"] == pytest.approx(2 / 3)


def test_pre_caption_normalises_like_the_reference() -> None:
    assert aro.pre_caption("A Man (riding) a horse.  On the beach!") == "a man riding a horse on the beach"
    assert len(aro.pre_caption(" ".join(["w"] * 40)).split()) == 30


# -- SugarCREPE ---------------------------------------------------------------------------------------------------
def test_sugar_crepe_micro_and_per_category() -> None:
    cases = [("replace_obj", True), ("replace_obj", True), ("replace_obj", False), ("swap_att", False)]
    items = [item({"category": c}) for c, _ in cases]
    sims = [np.array([[0.4, 0.2]]) if ok else np.array([[0.2, 0.4]]) for _, ok in cases]
    metrics, details = sugar_crepe.report(items, sims)
    assert metrics["replace_obj"] == pytest.approx(2 / 3) and metrics["swap_att"] == 0.0
    assert metrics["micro_average"] == pytest.approx(2 / 4)  # every item counts once
    assert metrics["macro_average"] == pytest.approx(1 / 3)
    assert details["items_per_category"] == {"replace_obj": 3, "swap_att": 1}


def test_sugar_crepe_tie_is_wrong() -> None:
    metrics, _ = sugar_crepe.report([item({"category": "add_obj"})], [np.array([[0.3, 0.3]])])
    assert metrics["add_obj"] == 0.0


# -- Winoground ---------------------------------------------------------------------------------------------------
def test_winoground_three_scores() -> None:
    # s[i, c] = similarity of image i and caption c
    both = np.array([[0.9, 0.1], [0.2, 0.8]])
    text_only = np.array([[0.5, 0.4], [0.6, 0.7]])  # c0 prefers... image 1 beats image 0 for c0 -> image fails
    image_only = np.array([[0.5, 0.6], [0.4, 0.7]])  # image 0 prefers c1 -> text fails
    neither = np.array([[0.3, 0.5], [0.1, 0.2]])
    assert winoground.scores(both) == (True, True)
    assert winoground.scores(text_only) == (True, False)
    assert winoground.scores(image_only) == (False, True)
    assert winoground.scores(neither) == (False, False)
    metrics, _ = winoground.report([item(n_images=2)] * 4, [both, text_only, image_only, neither])
    assert metrics == {"text": 0.5, "image": 0.5, "group": 0.25}


# -- CREPE --------------------------------------------------------------------------------------------------------
def test_crepe_true_caption_is_index_0() -> None:
    sims = [np.array([[0.5, 0.6, 0.4, 0.7]]),  # two negatives above the truth: rank 2
            np.array([[0.9, 0.1, 0.2, 0.3]]),  # rank 0
            np.array([[0.5, 0.5, 0.2]]),  # a tie keeps the true caption first: rank 0
            np.array([[0.0] + [0.1 * k for k in range(1, 11)]])]  # ten negatives above it: rank 10
    metrics, _ = crepe.report([item(n_texts=s.shape[1]) for s in sims], sims)
    assert metrics == {"recall@1": 0.5, "recall@3": 0.75, "recall@5": 0.75, "recall@10": 0.75}


# -- SVO-Probes, VL-CheckList -------------------------------------------------------------------------------------
def test_svo_pairwise_accuracy_per_negative_type() -> None:
    cases = [(["subject"], True), (["verb"], False), (["verb"], True), (["object"], True), (["object"], False)]
    items = [item({"neg": neg}, n_images=2, n_texts=1) for neg, _ in cases]
    sims = [np.array([[0.6], [0.2]]) if ok else np.array([[0.2], [0.6]]) for _, ok in cases]
    metrics, details = svo.report(items, sims)
    assert metrics == {"accuracy": 0.6, "subject": 1.0, "verb": 0.5, "object": 0.5}
    assert details["items_per_negative"] == {"subject": 1, "verb": 2, "object": 2}


def test_vl_checklist_category_is_mean_of_subtypes() -> None:
    cases = [("Attribute", "Attribute/vg/color", True), ("Attribute", "Attribute/vg/color", False),
             ("Attribute", "Attribute/vaw/material", True), ("Object", "Object/vg/size", False)]
    items = [item({"category": c, "subtype": s}) for c, s, _ in cases]
    sims = [np.array([[0.4, 0.2]]) if ok else np.array([[0.2, 0.4]]) for *_, ok in cases]
    metrics, details = vl_checklist.report(items, sims)
    assert details["per_subtype"] == {"Attribute/vaw/material": 1.0, "Attribute/vg/color": 0.5, "Object/vg/size": 0.0}
    assert metrics == {"Object": 0.0, "Attribute": 0.75, "overall": 0.375}


# -- parity with CLIP_benchmark -----------------------------------------------------------------------------------
class LookupModel:
    """encode_image / encode_text are table look-ups: 'pixels' are embedding rows, tokens index a text table."""

    def __init__(self, texts: dict[str, torch.Tensor]) -> None:
        self.texts = texts

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return pixels

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return torch.stack([self.texts[t] for t in texts])


def test_retrieval_equals_clip_benchmark() -> None:
    zr = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")
    g = torch.Generator().manual_seed(0)
    n_images, dim = 23, 9
    images = torch.randn(n_images, dim, generator=g)
    captions = [[f"img{i} cap{k}" for k in range(3 + i % 3)] for i in range(n_images)]  # 3-5 captions each
    table = {c: images[i] * 0.3 + torch.randn(dim, generator=g) for i, caps in enumerate(captions) for c in caps}
    model = LookupModel(table)
    loader = [(images[s:s + 5], captions[s:s + 5]) for s in range(0, n_images, 5)]
    theirs = zr.evaluate(model, loader, model.tokenize, "cpu", amp=False, recall_k_list=[1, 5, 10])

    scorer = ModelScorer(model, preprocess=lambda x: x, tokenize=model.tokenize, batch_size=7)
    flat = [c for caps in captions for c in caps]
    ours = retrieval_metrics(scorer.embed_texts(flat), normalise(images),
                             [i for i, caps in enumerate(captions) for _ in caps])
    assert ours == theirs  # exactly, every key
    assert 0 < ours["image_retrieval_recall@1"] < ours["image_retrieval_recall@10"] <= 1


class Loader(list):
    def __init__(self, batches: list, classes: list[str]) -> None:
        super().__init__(batches)
        self.dataset = type("D", (), {"classes": classes})()


@pytest.mark.parametrize("n_classes", [7, 3])
def test_classification_equals_clip_benchmark(n_classes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    zc = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
    # clip_benchmark 1.6.2's accuracy() calls float() on a shape-(1,) array, which NumPy >= 2.3 refuses; give its
    # module a float() that accepts it (its arithmetic is unchanged)
    monkeypatch.setattr(zc, "float", lambda x: builtins.float(np.asarray(x).reshape(())), raising=False)
    g = torch.Generator().manual_seed(n_classes)
    dim, n = 11, 40
    names = [f"class{c}" for c in range(n_classes)]
    templates = ["a photo of a {c}.", "a {c}.", "art of the {c}"]
    centers = torch.randn(n_classes, dim, generator=g)
    table = {t.format(c=name): centers[c] + 0.5 * torch.randn(dim, generator=g)
             for c, name in enumerate(names) for t in templates}
    target = torch.randint(0, n_classes, (n,), generator=g)
    images = centers[target] + 1.5 * torch.randn(n, dim, generator=g)
    model = LookupModel(table)
    loader = Loader([(images[s:s + 8], target[s:s + 8]) for s in range(0, n, 8)], names)
    theirs = zc.evaluate(model, loader, model.tokenize, names, templates, "cpu", amp=False)

    scorer = ModelScorer(model, preprocess=lambda x: x, tokenize=model.tokenize)
    weights = torch.from_numpy(class_weights(scorer, names, templates))
    logits = (100.0 * torch.from_numpy(normalise(images)) @ weights).numpy()
    ours = classification_metrics(logits, target.tolist())
    assert ours.keys() == theirs.keys()
    for key in ours:
        assert (math.isnan(ours[key]) and math.isnan(theirs[key])) or ours[key] == theirs[key], key
    assert 0 < ours["acc1"] < 1


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_mean_per_class_recall_equals_sklearn() -> None:
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 6, 50), rng.integers(0, 7, 50)  # a predicted class absent from the targets
    assert mean_per_class_recall(t, p) == balanced_accuracy_score(t, p)
