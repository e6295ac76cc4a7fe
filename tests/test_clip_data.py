"""CLIP-family data readers: small files written here, broken rows included, skipped and counted."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clip_family.data import open_dataset, read_folder, read_parquet, read_table, read_webdataset
from foundations.errors import UserError


def png(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_stem_paired_folder(tmp_path: Path) -> None:
    (tmp_path / "a/b").mkdir(parents=True)
    (tmp_path / "x").mkdir()
    (tmp_path / "a/b/img1.jpg").write_bytes(png(1))  # a PNG named .jpg: any suffix, content decides
    (tmp_path / "x/img1.txt").write_text("a red ring\n\na blue ring\n")
    (tmp_path / "a/img2.png").write_bytes(png(2))
    (tmp_path / "x/img2.txt").write_text("one caption")
    (tmp_path / "x/lonely.txt").write_text("caption without image")  # missing image
    (tmp_path / "a/empty.png").write_bytes(png(3))
    (tmp_path / "x/empty.txt").write_text("  \n")  # empty caption
    (tmp_path / "a/broken.png").write_bytes(b"not a png")  # unreadable
    (tmp_path / "x/broken.txt").write_text("broken")
    (tmp_path / "x/img2.png").write_bytes(png(4))  # duplicate stem
    data = read_folder(tmp_path)
    assert [(i.key, i.captions) for i in data.items] == [("img1", ("a red ring", "a blue ring")),
                                                         ("img2", ("one caption",))]
    skipped = data.report.skipped
    assert skipped["missing image"] == 1 and skipped["empty caption"] == 1 and skipped["duplicate id"] == 1
    assert skipped["unreadable image (not an image)"] == 1
    assert open_dataset(str(tmp_path)).report.read == 2


def test_parquet_paths_bytes_and_bad_rows(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "image").mkdir()
    (tmp_path / "image/p1.png").write_bytes(png(1))
    rows = [("p1", "p1.png", "t1", "first caption"), ("p1", "p1.png", "t2", "second caption"),
            ("p2", png(2), "t3", "bytes image"), ("p3", "gone.png", "t4", "missing image"),
            ("p4", png(4), "t5", ""), ("p2", png(2), "t3", "duplicate text id"), ("p5", b"garbage", "t6", "bad")]
    # the Hugging Face image struct: {"bytes": ..., "path": ...}
    images = [r[1] if isinstance(r[1], bytes) else None for r in rows]
    path_rows = [r[1] if isinstance(r[1], str) else None for r in rows]
    mixed = pa.table({"image_id": [r[0] for r in rows], "image": pa.array(
        [{"bytes": b, "path": p} for b, p in zip(images, path_rows)]),
        "text_id": [r[2] for r in rows], "caption": [r[3] for r in rows]})
    pq.write_table(mixed, tmp_path / "train.parquet")
    data = read_parquet(tmp_path / "train.parquet")
    assert [(i.key, i.captions) for i in data.items] == [("p1", ("first caption", "second caption")),
                                                         ("p2", ("bytes image",))]
    assert isinstance(data.items[0].image, Path) and isinstance(data.items[1].image, bytes)
    skipped = data.report.skipped
    assert skipped["missing image"] == 1 and skipped["empty caption"] == 1 and skipped["duplicate id"] == 1
    assert skipped["unreadable image (not an image)"] == 1


def test_csv_and_tsv_columns(tmp_path: Path) -> None:
    (tmp_path / "imgs").mkdir()
    for i in range(3):
        (tmp_path / f"imgs/{i}.png").write_bytes(png(i))
    (tmp_path / "imgs/bad.png").write_bytes(b"")
    (tmp_path / "train.csv").write_text(
        "filepath,title\nimgs/0.png,a zero\nimgs/1.png,\"a one, quoted\"\nimgs/1.png,another one\n"
        "imgs/1.png,another one\nimgs/missing.png,gone\nimgs/2.png,\nimgs/bad.png,empty file\n")
    data = read_table(tmp_path / "train.csv")
    assert [(i.key, i.captions) for i in data.items] == [("imgs/0.png", ("a zero",)),
                                                         ("imgs/1.png", ("a one, quoted", "another one"))]
    s = data.report.skipped
    assert (s["duplicate id"], s["missing image"], s["empty caption"], s["unreadable image (empty file)"]) == \
        (1, 1, 1, 1)
    (tmp_path / "train.tsv").write_text("path\tcaption\timgs/0.png\n".replace("\timgs/0.png", "") +
                                        "imgs/0.png\tzero\nimgs/2.png\ttwo\n")
    tsv = open_dataset(str(tmp_path / "train.tsv"), image_column="path", caption_column="caption")
    assert [i.captions for i in tsv.items] == [("zero",), ("two",)]
    with pytest.raises(UserError, match="needs columns"):
        read_table(tmp_path / "train.tsv")


def test_webdataset_shards(tmp_path: Path) -> None:
    def add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(tmp_path / "shard-000.tar", "w") as tar:
        add(tar, "s0.jpg", png(0)), add(tar, "s0.txt", b"zero")
        add(tar, "s1.txt", b"no image")
        add(tar, "s2.png", png(2)), add(tar, "s2.txt", b" ")
    with tarfile.open(tmp_path / "shard-001.tar", "w") as tar:
        add(tar, "s3.jpg", png(3)), add(tar, "s3.txt", b"three\nTHREE")
        add(tar, "s0.jpg", png(0)), add(tar, "s0.txt", b"zero again")
        add(tar, "s4.jpg", b"junk"), add(tar, "s4.txt", b"junk")
    data = read_webdataset(sorted(tmp_path.glob("*.tar")))
    assert [(i.key, i.captions) for i in data.items] == [("s0", ("zero",)), ("s3", ("three", "THREE"))]
    s = data.report.skipped
    assert (s["missing image"], s["empty caption"], s["duplicate id"], s["unreadable image (not an image)"]) == \
        (1, 1, 1, 1)
    assert [i.key for i in open_dataset(str(tmp_path)).items] == ["s0", "s3"]
