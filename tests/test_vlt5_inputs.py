"""The VL-T5 vocabulary (DESIGN.md §4.2: loading and training one) and visual inputs from feature files
(§4.5, §4.9), including VL_adapter's grid pooling on grids smaller than the target."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from vlt5_fixtures import FC_DIM, load_parity_encoder

from feature_extraction.readers import open_features
from foundations.errors import UserError
from retrieval.querying.features import QueryCollator
from vlt5.inputs import VisualInputConfig, grid_cell_boxes, visual_inputs
from vlt5.modeling import pool_square_grid
from vlt5.tiny import TINY_SP_PIECES, TINY_VOCAB, tiny_sentences
from vlt5.tokenization import TokenizerError, check_layout, load_tokenizer, sentencepiece_size, train_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- tokenizer ---------------------------------------------------------------------------------------------------
def test_vlt5_vocabulary_layout(tiny_tok_dir: Path) -> None:
    tok = load_tokenizer(tiny_tok_dir)
    n = TINY_SP_PIECES
    assert len(tok) == TINY_VOCAB == n + 200
    assert tok.convert_tokens_to_ids(["<pad>", "</s>"]) == [0, 1]
    for k in (0, 7, 99):
        assert tok.convert_tokens_to_ids(f"<extra_id_{k}>") == n + 99 - k  # 32099 - k for t5-base
        assert tok.convert_tokens_to_ids(f"<vis_extra_id_{k}>") == n + 199 - k  # 32199 - k
    ids = tok("vqa: who designed the tower?").input_ids
    assert ids[-1] == 1 and 0 not in ids and ids[0] != 1  # </s> appended, no BOS
    plain = tok("vqa:").input_ids[:-1] + tok("who designed the tower?").input_ids
    assert ids == plain  # the task prefix is plain text


def test_saved_tokenizer_reloads_without_adding_twice(tiny_tok_dir: Path, tmp_path: Path) -> None:
    tok = load_tokenizer(tiny_tok_dir)
    tok.save_pretrained(tmp_path)
    again = load_tokenizer(tmp_path)
    assert len(again) == len(tok)
    assert again("what is here?").input_ids == tok("what is here?").input_ids


def test_wrong_layout_is_refused(tiny_tok_dir: Path) -> None:
    tok = load_tokenizer(tiny_tok_dir)
    tok.add_tokens(["<surplus>"])
    with pytest.raises(TokenizerError, match="layout"):
        check_layout(tok)
    with pytest.raises(TokenizerError, match="no such"):
        load_tokenizer(tiny_tok_dir / "nope")


def test_train_tokenizer_gives_the_vlt5_layout(tiny_tok_dir: Path, tmp_path: Path) -> None:
    texts = [f"who painted the {c} {t}?" for c in ("red", "blue", "green", "old") for t in ("bus", "tower", "kite")]
    out = train_tokenizer(texts, tmp_path / "tok", vocab_size=40)
    assert {"spiece.model", "tokenizer_config.json"} <= {p.name for p in out.iterdir()}
    tok = load_tokenizer(out)
    n = sentencepiece_size(tok)
    assert 3 < n <= 40 and len(tok) == n + 100 + 100  # pieces + <extra_id_*> + <vis_extra_id_*>
    assert tok.convert_tokens_to_ids(["<pad>", "</s>", "<unk>"]) == [0, 1, 2]
    assert tok.convert_tokens_to_ids(["<extra_id_0>", "<vis_extra_id_0>"]) == [n + 99, n + 199]
    ids = tok("who painted the red kite?").input_ids
    assert ids[-1] == 1 and 2 not in ids  # </s> appended, every piece known
    # vlt5.tiny's tokenizer is this function on the tiny sentences (the same model, byte for byte)
    again = train_tokenizer(tiny_sentences(), tmp_path / "tiny", TINY_SP_PIECES, exact_vocab_size=True)
    assert (again / "spiece.model").read_bytes() == (tiny_tok_dir / "spiece.model").read_bytes()
    with pytest.raises(UserError, match="no text"):
        train_tokenizer(["", "  "], tmp_path / "empty", vocab_size=40)


# -- boxes, pooling -----------------------------------------------------------------------------------------------
def test_grid_cell_boxes_row_major() -> None:
    boxes = grid_cell_boxes(2, 4)
    assert boxes.shape == (8, 4)
    assert boxes[0].tolist() == [0.0, 0.0, 0.25, 0.5]
    assert boxes[5].tolist() == [0.25, 0.5, 0.5, 1.0]  # row 1, column 1


def naive_adaptive_max_pool(x: torch.Tensor, out: int) -> torch.Tensor:
    """(s, s, C) -> (out, out, C) with PyTorch's adaptive windows [floor(i*s/out), ceil((i+1)*s/out))."""
    s = x.shape[0]
    rows = []
    for i in range(out):
        r0, r1 = (i * s) // out, -((-(i + 1) * s) // out)
        rows.append(torch.stack([x[r0:r1, (j * s) // out:-((-(j + 1) * s) // out)].amax(dim=(0, 1))
                                 for j in range(out)]))
    return torch.stack(rows)


def test_pool_7x7_to_6x6_like_vl_adapter() -> None:
    feats = torch.randn(2, 49, 5)
    boxes = grid_cell_boxes(7, 7).expand(2, 49, 4)
    mask = torch.ones(2, 49)
    mask[1, :7] = 0  # first row of image 1 padded
    pf, pb, pm = pool_square_grid(feats, boxes, mask, 6)
    assert pf.shape == (2, 36, 5) and pb.shape == (2, 36, 4) and pm.shape == (2, 36)
    for b in range(2):
        assert torch.equal(pf[b].reshape(6, 6, 5), naive_adaptive_max_pool(feats[b].reshape(7, 7, 5), 6))
    # the pooled box of cell (i, j) is the union of its window's cells
    assert pb[0, 0].tolist() == pytest.approx([0.0, 0.0, 2 / 7, 2 / 7])
    assert pb[0, 35].tolist() == pytest.approx([5 / 7, 5 / 7, 1.0, 1.0])
    assert pm[1, :6].tolist() == [1.0] * 6  # window rows 0-1 include the real row 1
    _, zero, _ = pool_square_grid(feats, torch.zeros(2, 49, 4), mask, 6)
    assert torch.equal(zero, torch.zeros(2, 36, 4))  # VL_adapter's all-zero boxes stay zero


@pytest.mark.parametrize("side", [4, 5])
def test_pool_a_grid_smaller_than_the_target_like_adaptive_max_pool(side: int) -> None:
    """VL_adapter applies AdaptiveMaxPool2d((6, 6)) whatever the grid: a 4x4 grid becomes 36 tokens (cells
    repeated), not 16 left as they were."""
    T = side * side
    feats = torch.randn(2, T, 5)
    boxes = grid_cell_boxes(side, side).expand(2, T, 4)
    mask = torch.ones(2, T)
    mask[1, :side] = 0  # first row of image 1 padded
    pf, pb, pm = pool_square_grid(feats, boxes, mask, 6)
    assert pf.shape == (2, 36, 5) and pb.shape == (2, 36, 4) and pm.shape == (2, 36)
    reference = nn.AdaptiveMaxPool2d((6, 6))(feats.transpose(1, 2).reshape(2, 5, side, side)).flatten(2).transpose(1, 2)
    assert torch.equal(pf, reference)
    for b in range(2):
        assert torch.equal(pf[b].reshape(6, 6, 5), naive_adaptive_max_pool(feats[b].reshape(side, side, 5), 6))
    assert pb[0, 0].tolist() == pytest.approx([0.0, 0.0, 1 / side, 1 / side])  # a repeated cell keeps its box
    assert pb[0, 35].tolist() == pytest.approx([(side - 1) / side, (side - 1) / side, 1.0, 1.0])
    assert pm[1, :6].tolist() == [0.0] * 6 and pm[1, 6:].eq(1).all()  # window row 0 = input row 0 only


def test_encoder_pools_a_small_grid_up_to_the_target() -> None:
    enc = load_parity_encoder(visual={"pool_grid_to": 6})
    ids = torch.tensor([[5, 9, 13, 1]])
    with torch.no_grad():
        out = enc(ids, vis_feats=torch.randn(1, 16, 16))  # a 4x4 grid (a tiny ViT's)
    assert out.last_hidden_state.shape == (1, 4 + 36, 32)  # 6*6 visual tokens, as model.py's count assumes


def test_encoder_pools_inside_like_prepooled_input() -> None:
    pooled_enc = load_parity_encoder(visual={"pool_grid_to": 2})
    plain = load_parity_encoder()
    ids = torch.tensor([[5, 9, 13, 1]])
    grid = torch.randn(1, 9, 16)  # 3x3 grid
    pre = nn.AdaptiveMaxPool2d(2)(grid.transpose(1, 2).reshape(1, 16, 3, 3)).flatten(2).transpose(1, 2)
    with torch.no_grad():
        a = pooled_enc(ids, vis_feats=grid).last_hidden_state
        b = plain(ids, vis_feats=pre, vis_boxes=torch.zeros(1, 4, 4)).last_hidden_state
    assert a.shape == (1, 4 + 4, 32) and torch.equal(a, b)


def test_fc_token_shares_the_projection_when_dims_match() -> None:
    enc = load_parity_encoder(visual={"fc_dim": 16})
    assert enc.encoder.visual_embedding.fc_embedding is None
    ids = torch.tensor([[5, 9, 13, 1], [7, 1, 0, 0]])
    grid, fc = torch.randn(2, 5, 16), torch.randn(2, 16)
    box = torch.rand(2, 4)
    with torch.no_grad():
        a = enc(ids, vis_feats=grid, fc_feats=fc, fc_boxes=box).last_hidden_state
        b = enc(ids, vis_feats=torch.cat([grid, fc[:, None]], 1),
                vis_boxes=torch.cat([torch.zeros(2, 5, 4), box[:, None]], 1)).last_hidden_state
    assert a.shape == (2, 4 + 6, 32) and torch.allclose(a, b, atol=1e-6)  # one GEMM vs two


def test_fc_token_with_its_own_projection() -> None:
    enc = load_parity_encoder(visual={"fc_dim": FC_DIM})
    ids = torch.tensor([[5, 9, 13, 1]])
    with torch.no_grad():
        out = enc(ids, vis_feats=torch.randn(1, 5, 16), fc_feats=torch.randn(1, FC_DIM))
        alone = enc(ids, fc_feats=torch.randn(1, FC_DIM))  # fc token only
    assert out.last_hidden_state.shape == (1, 10, 32) and alone.last_hidden_state.shape == (1, 5, 32)
    with pytest.raises(ValueError, match="obj_order_ids"):
        enc(ids, vis_feats=torch.randn(1, 5, 16), fc_feats=torch.randn(1, FC_DIM),
            obj_order_ids=torch.arange(5)[None])


# -- collate -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("boxes", ["zero", "grid_cells"])
def test_collate_questions_and_feature_ids(tiny_tok_dir: Path, tiny_feature_file: Path, boxes: str) -> None:
    tok = load_tokenizer(tiny_tok_dir)
    cfg = VisualInputConfig(fc_token=True, boxes=boxes, prefix="vqa: ", max_length=8)
    collate = QueryCollator(tok, tiny_feature_file, cfg)
    batch = collate(["who designed the tower in this photo during winter?", "what is here?"], ["img_c", "img_a"])
    assert batch["input_ids"].shape[1] == 8 and batch["input_ids"][0, -1] == 1  # truncated, </s> kept
    assert batch["input_ids"][0].tolist()[:3] == tok("vqa:").input_ids[:-1][:3]
    assert batch["attention_mask"][1].tolist() == (batch["input_ids"][1] != 0).long().tolist()
    store = open_features(tiny_feature_file)
    feats = store.get_many(["img_c", "img_a"])
    assert torch.equal(batch["vis_feats"], torch.from_numpy(feats.grid))
    assert torch.equal(batch["fc_feats"], torch.from_numpy(feats.fc))
    assert batch["vis_attention_mask"].shape == (2, 9)
    if boxes == "zero":
        assert not batch["vis_boxes"].any() and not batch["fc_boxes"].any()
    else:
        assert torch.equal(batch["vis_boxes"][1], grid_cell_boxes(3, 3))
        assert batch["fc_boxes"][0].tolist() == [0.0, 0.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="no image id"):
        collate(["q"], [None])  # type: ignore[list-item]


def test_visual_inputs_fc_only() -> None:
    fc = np.ones((3, FC_DIM), dtype=np.float32)
    out = visual_inputs(fc, None, VisualInputConfig(grid=False, fc_token=True), None)
    assert set(out) == {"fc_feats", "fc_boxes"} and out["fc_feats"].shape == (3, FC_DIM)
