"""Zero-shot evaluation by hand: recall@k with several captions per image, class matching, accuracy."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from clip_family.data import Item
from clip_family.training import read_classes
from clip_family.zeroshot import class_of, evaluate_items, recall_at_k


def test_recall_with_several_captions_per_image() -> None:
    image = torch.eye(3)  # images 0, 1, 2 on the axes
    # captions: image 0 owns 0 and 1, image 1 owns 2, image 2 owns 3; caption 2 points at image 2 (a miss)
    text = torch.tensor([[1.0, 0, 0], [0.8, 0.6, 0], [0, 0, 1], [0, 0.1, 0.99]])
    text = torch.nn.functional.normalize(text, dim=-1)
    owner = torch.tensor([0, 0, 1, 2])
    r = recall_at_k(image, text, owner, ks=(1, 2))
    # i2t@1: image 0 -> caption 0 (hit), image 1 -> caption 1 (owner 0, miss), image 2 -> caption 2 (owner 1, miss)
    assert r["i2t_r@1"] == pytest.approx(1 / 3)
    # t2i@1: caption 0 -> image 0 hit, 1 -> image 0 hit, 2 -> image 2 miss, 3 -> image 2 hit
    assert r["t2i_r@1"] == pytest.approx(3 / 4)
    assert r["mean_recall"] == pytest.approx(sum(v for k, v in r.items() if k != "mean_recall") / 4)


def test_class_matching_and_accuracy(tmp_path: Path) -> None:
    classes = ["seven", "seventy seven", "one"]
    assert class_of("A handwritten seven.", classes) == 0
    assert class_of("the number seventy seven", classes) == 1
    assert class_of("someone", classes) is None
    items = [Item("a", Path("a.png"), ("a photo of one",)), Item("b", Path("b.png"), ("seven!",)),
             Item("c", Path("c.png"), ("nothing",))]
    images = torch.tensor([[0.0, 0, 1], [1.0, 0, 0], [0, 1.0, 0]])

    def encode_text(texts: list[str]) -> torch.Tensor:
        table = {"seven": [1.0, 0, 0], "seventy seven": [0, 1.0, 0], "one": [0, 0, 1.0]}
        return torch.tensor([next((v for k, v in sorted(table.items(), key=lambda kv: -len(kv[0])) if k in t),
                                  [1.0, 1, 1]) for t in texts])

    m = evaluate_items(lambda its: images[: len(its)], encode_text, items, classes, ("{}",))
    assert m["zeroshot_accuracy"] == 1.0 and m["zeroshot_n"] == 2.0
    (tmp_path / "classes.txt").write_text("zero\n\none\n")
    assert read_classes((str(tmp_path / "classes.txt"),)) == ["zero", "one"]
    assert read_classes(("zero", "one")) == ["zero", "one"]
