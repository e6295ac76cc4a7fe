"""Reader stage alone: listing order and ids, JSONL problems with line numbers, mode conversion, bad-file
classification, and shard blocks cut on whole batches."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers_extract import make_bad_files, make_convertible_files
from PIL import Image

from feature_extraction.config import ShardSpec, UsageError, resolve_shard
from foundations.images import BadImage, decode_image, to_rgb
from feature_extraction.inputs import list_image_dir, list_image_file, list_texts
from feature_extraction.tiny import make_image_folder


def test_image_dir_ids_are_sorted_relative_paths_without_suffix(tmp_path):
    make_image_folder(tmp_path / "imgs", 5, size=(40, 30), subdirs=2)
    (tmp_path / "imgs" / "notes.txt").write_text("not listed")
    (tmp_path / "imgs" / "d1" / "img_00001.png").write_bytes(b"")  # same id as d1/img_00001.jpg
    listing = list_image_dir(tmp_path / "imgs")
    assert listing.ids == ["d0/img_00000", "d0/img_00002", "d0/img_00004", "d1/img_00001", "d1/img_00003"]
    assert listing.sources[0].endswith("imgs/d0/img_00000.jpg")
    [dup] = listing.skipped
    assert (dup.item_id, dup.category, dup.source) == ("d1/img_00001", "duplicate id", "d1/img_00001.png")


def test_image_list_accepts_path_or_id_tab_path_relative_to_the_list(tmp_path):
    make_image_folder(tmp_path / "imgs", 3, size=(40, 30))
    (tmp_path / "list.txt").write_text("imgs/img_00002.jpg\nsecond\timgs/img_00000.jpg\n\nsecond\timgs/img_00001.jpg\n")
    listing = list_image_file(tmp_path / "list.txt")
    assert listing.ids == ["imgs/img_00002", "second"]
    assert listing.sources[1] == str(tmp_path / "imgs" / "img_00000.jpg")
    assert [(s.item_id, s.category, s.source) for s in listing.skipped] == [("second", "duplicate id", "list.txt:4")]


def test_text_jsonl_problems_are_skipped_with_their_line_number(tmp_path):
    lines = [json.dumps({"id": "a", "text": "first"}), "{not json", json.dumps(["a", "list"]),
             json.dumps({"text": "no id"}), json.dumps({"id": "b"}), json.dumps({"id": 7, "text": "int id"}),
             json.dumps({"id": "a", "text": "again"}), "", json.dumps({"id": "c", "text": "  "})]
    (tmp_path / "kb.jsonl").write_text("\n".join(lines) + "\n")
    listing = list_texts(tmp_path / "kb.jsonl")
    assert listing.ids == ["a", "7"]
    got = [(s.category, s.source) for s in listing.skipped]
    assert got == [("malformed json", "kb.jsonl:2"), ("malformed json", "kb.jsonl:3"), ("missing id", "kb.jsonl:4"),
                   ("missing text", "kb.jsonl:5"), ("duplicate id", "kb.jsonl:7"), ("missing text", "kb.jsonl:9")]


def test_convertible_modes_become_the_expected_rgb(tmp_path):
    expected = make_convertible_files(tmp_path)
    for path in sorted(tmp_path.iterdir()):
        got = decode_image(str(path), max_pixels=10**8)
        assert got.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(got), np.asarray(expected[path.stem]), err_msg=path.name)


def pixels(image: Image.Image) -> list[list[int]]:
    return np.asarray(image).reshape(-1, 3).tolist()


def test_alpha_goes_on_white_and_sixteen_bit_is_scaled_not_clipped():
    rgba = Image.new("RGBA", (2, 1))
    rgba.putdata([(10, 20, 30, 0), (10, 20, 30, 255)])
    assert pixels(to_rgb(rgba)) == [[255, 255, 255], [10, 20, 30]]
    sixteen = Image.fromarray(np.array([[0, 257, 65535, 32896]], dtype=np.uint16))
    assert sixteen.mode.startswith("I;16")
    assert [p[0] for p in pixels(to_rgb(sixteen))] == [0, 1, 255, 128]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    palette.putdata([0, 1])
    palette.info["transparency"] = 0
    assert pixels(to_rgb(palette)) == [[255, 255, 255], [200, 100, 50]]
    wide = Image.fromarray(np.array([[-5, 5]], dtype=np.int32), mode="I")  # outside 0..65535: min-max
    assert [p[0] for p in pixels(to_rgb(wide))] == [0, 255]


def test_every_bad_file_gets_its_category(tmp_path):
    expected = make_bad_files(tmp_path, max_pixels=300 * 300)
    for path in sorted(tmp_path.iterdir()):
        with pytest.raises(BadImage) as info:
            decode_image(str(path), max_pixels=300 * 300)
        assert info.value.category == expected[path.stem], (path.name, info.value)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # no process-wide PIL setting is changed


def test_shards_are_contiguous_blocks_on_whole_batches(tmp_path):
    make_image_folder(tmp_path, 23, size=(16, 16))
    listing = list_image_dir(tmp_path)
    parts = [listing.shard(ShardSpec(4, i), batch_size=4) for i in range(4)]
    assert sum((p.ids for p in parts), []) == listing.ids
    assert all(len(p.ids) % 4 == 0 for p in parts[:-1])
    assert ShardSpec(4, 1).output_path(tmp_path / "f.h5").name == "f-00001-of-00004.h5"


def test_torchrun_environment_picks_the_shard():
    assert resolve_shard(None, None, {"RANK": "2", "WORLD_SIZE": "3"}) == ShardSpec(3, 2)
    assert resolve_shard(4, 0, {"RANK": "2", "WORLD_SIZE": "3"}) == ShardSpec(4, 0)
    assert resolve_shard(None, None, {}) == ShardSpec(1, 0)
    with pytest.raises(UsageError):
        resolve_shard(4, None, {})
    with pytest.raises(UsageError):
        ShardSpec(2, 2)
