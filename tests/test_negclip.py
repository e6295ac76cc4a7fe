"""NegCLIP's loss and data: the loss by hand on a B = 2 batch (4 images x 8 texts, text->image over the 4 real
captions only), 2 gloo processes = one process on the same global batch (loss and gradients), the TSV round trip
(also through pandas with the original code's converters), the trainer's reader and the per-epoch draws."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_clip_losses import features, run_gloo

from clip_family.negclip import (NegClipRow, batch_texts, draw_negatives, format_negclip_tsv, hard_negative_accuracy,
                                 negclip_loss, parse_negclip_tsv, read_negclip_tsv, write_negclip_tsv)
from foundations.errors import UserError


def test_loss_by_hand_b2() -> None:
    """B = 2: images [i0, i1, n0, n1] = e0..e3; texts [captions of the 4 images = e0..e3, hard captions h0..h3]
    with h_r = c_r e_r + sqrt(1 - c_r²) e_{4+r}. Image r's logits: s on its caption, s·c_r on its hard caption,
    0 on the 6 others; caption r's logits over the 4 images: s on image r, 0 on the 3 others."""
    s, c = 2.0, [0.5, 0.2, 0.8, -0.1]
    eye = torch.eye(8, dtype=torch.float64)
    image = eye[:4]
    hard = torch.stack([c[r] * eye[r] + math.sqrt(1 - c[r] ** 2) * eye[4 + r] for r in range(4)])
    text = torch.cat([eye[:4], hard])  # (8, 8)
    i2t = [-math.log(math.exp(s) / (math.exp(s) + math.exp(s * c[r]) + 6)) for r in range(4)]
    t2i = -math.log(math.exp(s) / (math.exp(s) + 3))
    expected = (sum(i2t) / 4 + t2i) / 2
    assert float(negclip_loss(image, text, s)) == pytest.approx(expected, abs=1e-12)
    # the same with a full 8 x 4 text->image matrix whose hard-caption rows are masked out
    logits = s * image @ text.T  # (4, 8)
    masked_t2i = F.cross_entropy((s * text @ image.T)[:4], torch.arange(4))
    assert float(negclip_loss(image, text, s)) == pytest.approx(
        float((F.cross_entropy(logits, torch.arange(4)) + masked_t2i) / 2), abs=1e-12)
    # a text->image term over all 8 texts (hard captions as rows) would differ: the mask matters
    assert abs(float(F.cross_entropy(s * text @ image.T, torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]))) - t2i) > 1e-3
    assert float(hard_negative_accuracy(image, text)) == 1.0
    with pytest.raises(ValueError, match="2 texts per image"):
        negclip_loss(image, text[:6], s)


def global_batch(b: int = 4, d: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    """(2B, D) images [images; negative images] and (4B, D) texts [captions; captions of the negatives; hard
    captions of both], normalised, float64."""
    image, text = features(n=2 * b, d=d, seed=7)
    _, hard = features(n=2 * b, d=d, seed=8)
    return image, torch.cat([text, hard])


def rank_rows(rank: int, b_local: int, b: int) -> tuple[list[int], list[int]]:
    """The global image rows and text rows that rank ``rank`` holds (its pairs, their negatives, in local order)."""
    pairs = list(range(rank * b_local, (rank + 1) * b_local))
    images = pairs + [b + p for p in pairs]
    texts = [k * b + p for k in range(4) for p in pairs]
    return images, texts


def _negclip_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    image, text = global_batch()
    rows_i, rows_t = rank_rows(rank, 4 // world, 4)
    scale = torch.tensor(1 / 0.07, dtype=torch.float64)
    results = {}
    for local, with_grad in ((False, False), (True, True), (False, True)):
        img = image[rows_i].clone().requires_grad_(True)
        txt = text[rows_t].clone().requires_grad_(True)
        loss = negclip_loss(img, txt, scale, local_loss=local, gather_with_grad=with_grad)
        loss.backward()
        results[(local, with_grad)] = (float(loss), img.grad.clone(), txt.grad.clone())
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_gloo_equals_one_process(tmp_path: Path) -> None:
    """Each rank holds 2 pairs of a global batch of 4: the mean of the ranks' losses is the single-process loss of
    the whole batch (every gather mode), and with local_loss + gather_with_grad the ranks' gradients averaged as
    DDP averages them are the single-process gradients of every image and text row."""
    ranks = run_gloo(_negclip_worker, 2, tmp_path)
    image, text = global_batch()
    full_image, full_text = image.clone().requires_grad_(True), text.clone().requires_grad_(True)
    single = negclip_loss(full_image, full_text, torch.tensor(1 / 0.07, dtype=torch.float64))
    single.backward()
    for key in ((False, False), (True, True), (False, True)):
        assert abs(sum(r[key][0] for r in ranks) / 2 - float(single.detach())) <= 1e-9, key
    image_grad, text_grad = torch.zeros_like(image), torch.zeros_like(text)
    for rank, result in enumerate(ranks):
        rows_i, rows_t = rank_rows(rank, 2, 4)
        image_grad[rows_i] += result[(True, True)][1] / 2
        text_grad[rows_t] += result[(True, True)][2] / 2
    assert float(full_text.grad.abs().min()) > 1e-6  # every text row (hard captions included) has a gradient
    assert torch.allclose(image_grad, full_image.grad, atol=1e-9)
    assert torch.allclose(text_grad, full_text.grad, atol=1e-9)


ROWS = [NegClipRow("img/a.jpg", 'a dog\'s "red" ball, left', ("a ball's \"red\" dog, left", "tab\u00e9 ok"), (1, 2)),
        NegClipRow("img/b.jpg", "two cats", ("two hats",), (0,)),
        NegClipRow("img/c.jpg", "a man riding a horse", ("a horse riding a man",), (0, 1))]


def test_tsv_round_trip_and_the_original_reader(tmp_path: Path) -> None:
    path = write_negclip_tsv(tmp_path / "mined.tsv", ROWS)
    assert path.read_text().splitlines()[0] == "filepath\ttitle\tneg_caption\tneg_image"
    assert parse_negclip_tsv(path) == ROWS
    pd = pytest.importorskip("pandas")
    import ast

    df = pd.read_csv(path, sep="\t", converters={"neg_caption": ast.literal_eval, "neg_image": ast.literal_eval})
    assert df["filepath"].tolist() == [r.filepath for r in ROWS] and df["title"].tolist() == [r.title for r in ROWS]
    assert df["neg_caption"].tolist() == [list(r.neg_caption) for r in ROWS]
    assert df["neg_image"].tolist() == [list(r.neg_image) for r in ROWS]


def _images(root: Path, names: list[str]) -> None:
    from PIL import Image

    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (30 * i, 10, 10)).save(root / name)


def test_reader_skips_rows_that_cannot_make_a_batch(tmp_path: Path) -> None:
    _images(tmp_path, ["img/a.jpg", "img/b.jpg", "img/c.jpg", "img/d.jpg"])
    rows = [*ROWS,
            NegClipRow("img/d.jpg", "no negatives here", (), (0,)),  # no hard caption
            NegClipRow("img/missing.jpg", "a lost image", ("an image lost",), (0,)),  # no file
            NegClipRow("img/d.jpg", "points at bad rows", ("rows at bad points",), (3, 4)),  # neighbours unusable
            NegClipRow("img/d.jpg", "out of range", ("range of out",), (99,))]
    text = format_negclip_tsv(rows) + "img/a.jpg\tbroken\t[1, 2\t[0]\n"
    (tmp_path / "m.tsv").write_text(text)
    data = read_negclip_tsv(tmp_path / "m.tsv")
    assert [it.caption for it in data.items] == [r.title for r in ROWS]
    assert [it.neg_rows for it in data.items] == [(1, 2), (0,), (0, 1)]  # positions among the usable rows
    assert data.report.skipped == {"no negative caption": 1, "missing image": 1, "no usable negative image": 1,
                                   "malformed negatives": 2}
    (tmp_path / "bad.tsv").write_text("filepath\ttitle\n")
    with pytest.raises(UserError, match="missing column"):
        read_negclip_tsv(tmp_path / "bad.tsv")


def test_draws_are_pure_in_seed_and_epoch_and_build_the_batch(tmp_path: Path) -> None:
    _images(tmp_path, ["img/a.jpg", "img/b.jpg", "img/c.jpg"])
    items = read_negclip_tsv(write_negclip_tsv(tmp_path / "m.tsv", ROWS)).items
    first, again, other = draw_negatives(items, 0, 0), draw_negatives(items, 0, 0), draw_negatives(items, 0, 5)
    assert all(np.array_equal(getattr(first, f), getattr(again, f)) for f in ("hard_caption", "neg_row",
                                                                               "neg_hard_caption"))
    epochs = [draw_negatives(items, 0, e) for e in range(8)]
    assert len({tuple(d.neg_row) + tuple(d.hard_caption) for d in epochs}) > 1  # re-drawn every epoch
    for draws in [first, other, *epochs]:
        for i, item in enumerate(items):
            assert draws.neg_row[i] in item.neg_rows
            assert 0 <= draws.hard_caption[i] < len(item.neg_captions)
            assert 0 <= draws.neg_hard_caption[i] < len(items[draws.neg_row[i]].neg_captions)
    rows = np.array([2, 0])
    texts = batch_texts(items, rows, first)
    j = first.neg_row[rows]
    assert texts[:2] == [items[2].caption, items[0].caption]
    assert texts[2:4] == [items[j[0]].caption, items[j[1]].caption]
    assert texts[4:6] == [items[2].neg_captions[first.hard_caption[2]], items[0].neg_captions[first.hard_caption[0]]]
    assert texts[6:] == [items[j[0]].neg_captions[first.neg_hard_caption[2]],
                         items[j[1]].neg_captions[first.neg_hard_caption[0]]]


@pytest.mark.slow
def test_ddp_two_process_negclip_step_equals_single_process(tmp_path: Path) -> None:
    """``clip-train --negclip`` under torchrun (2 gloo ranks, 4 pairs each: 8 images x 16 texts per rank, features
    gathered) makes the same first step as one process on the global batch of 8 pairs (weights <= 1e-6)."""
    from test_clip_train import weights
    from train_helpers import run_train

    names = [f"img/{i}.png" for i in range(16)]
    _images(tmp_path, names)
    rows = [NegClipRow(name, f"a red square left of a blue circle {i}", (f"a blue square left of a red circle {i}",
                                                                         f"a blue circle left of a red square {i}"),
                       ((i + 1) % 16, (i + 5) % 16)) for i, name in enumerate(names)]
    tsv = write_negclip_tsv(tmp_path / "mined.tsv", rows)
    flags = ["--negclip", "--model-name", "tiny", "--train-data", str(tsv), "--batch-size", "8", "--max-steps", "1",
             "--no-progress", "--no-tensorboard", "--no-curves", "--threads", "1", "--lr", "1e-3", "--device", "cpu",
             "--eps", "1e-4"]  # eps: see test_clip_train's DDP test (a zero-gradient bias and AdamW's first step)
    single = run_train([*flags, "--out", str(tmp_path / "one")], command="clip-train")
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = run_train([*flags, "--out", str(tmp_path / "two")], env={"GLOO_SOCKET_IFNAME": "lo"}, torchrun=2,
                    command="clip-train")
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    a, b, start = weights(tmp_path / "one/last"), weights(tmp_path / "two/last"), weights(tmp_path / "one/init")
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-4  # the step moved the weights
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, worst


def test_eval_task_specs_and_the_tradeoff_plot(tmp_path: Path) -> None:
    from clip_family.suite import EvalTaskSpec, draw_tradeoff, headline_keys, parse_eval_tasks
    from foundations.errors import ConfigError

    (tmp_path / "sc").mkdir()
    assert parse_eval_tasks([f"sugar_crepe={tmp_path / 'sc'}@{tmp_path}"]) == [
        EvalTaskSpec("sugar_crepe", tmp_path / "sc", tmp_path)]
    with pytest.raises(ConfigError, match="expected NAME=DATA"):
        parse_eval_tasks(["sugar_crepe"])
    with pytest.raises(ConfigError, match="unknown task 'sugar'"):
        parse_eval_tasks(["sugar=x"], check_paths=False)
    with pytest.raises(UserError, match="nope: no such file"):
        parse_eval_tasks([f"sugar_crepe={tmp_path / 'nope'}"])
    keys = ["mean_recall", "sugar_crepe/swap_obj", "sugar_crepe/micro_average", "crepe/recall@1", "crepe/recall@3"]
    assert headline_keys(keys) == ["sugar_crepe/micro_average", "crepe/recall@1"]  # the headline, else the first
    records = [{"kind": "train", "step": 5, "loss": 1.0},
               {"kind": "dev", "step": 10, "mean_recall": 0.6, "sugar_crepe/micro_average": 0.5},
               {"kind": "dev", "step": 20, "mean_recall": 0.62, "sugar_crepe/micro_average": 0.8}]
    assert draw_tradeoff(records, tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"
    assert draw_tradeoff(records[:1], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
