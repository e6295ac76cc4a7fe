"""The permanent bad-input suite (issue 15, items 1-3): every row is a ``vlt5r`` command on a bad input made in
``tmp_path``; it must end with the expected exit code, one ``error:`` line naming the file or id, outputs that
existed before byte-identical, and nothing half-written. Harness and builders: ``tests/bad_inputs.py``; what each
kind of bad input gets: ``docs/bad_inputs.md``. Below the table, the same rules through the library and a killed
rebuild."""

from __future__ import annotations

import errno
import os
import signal
import sys
from pathlib import Path

import faiss
import h5py
import numpy as np
import pytest
from bad_inputs import (DPR_RECORD, NON_UTF8_NAME, Case, combine, dpr_json, feature_file, index_dir, names,
                        non_utf8_names, qrels_file, queries_jsonl, run_case, set_attrs, snapshot, symlink_loops,
                        text_file, trec_run, vectors)
from helpers_search import make_world_fixture
from test_cli import run as run_subprocess
from train_helpers import make_data, read_ids, train_args, write_features

from foundations.errors import UserError
from retrieval.indexing import Index, IndexConfig, build_index

world = make_world_fixture()


# -- builders of this table (the generic ones live in bad_inputs.py) ---------------------------------------------
def good_features(root: Path) -> dict[str, Path]:
    return {"feats": feature_file(root / "kb.h5", vectors(12, 8))}


def old_index(root: Path) -> dict[str, Path]:
    return {"ix": index_dir(root / "ix", n=5, dim=8, seed=1)}


def nan_and_zero_features(root: Path) -> dict[str, Path]:
    x = vectors(12, 8)
    x[3] = np.nan
    x[7] = 0.0
    x[9, 2] = np.inf
    return {"feats": feature_file(root / "bad.h5", x)}


def all_nan_features(root: Path) -> dict[str, Path]:
    return {"feats": feature_file(root / "nan.h5", np.full((4, 8), np.nan, dtype=np.float32))}


def contradicting_fc_dim(root: Path) -> dict[str, Path]:
    return {"feats": set_attrs(feature_file(root / "kb.h5", vectors(6, 8)), fc_dim=16)}


def contradicting_grid(root: Path) -> dict[str, Path]:
    grid = vectors(6 * 9, 5).reshape(6, 9, 5)  # 3x3 tokens of width 5
    return {"feats": set_attrs(feature_file(root / "kb.h5", vectors(6, 8), grid=grid), grid_hw=[4, 4])}


def missing_grid(root: Path) -> dict[str, Path]:
    return {"feats": set_attrs(feature_file(root / "kb.h5", vectors(6, 8)), has_grid=True)}


def not_an_index_folder(root: Path) -> dict[str, Path]:
    folder = root / "mydata"
    text_file(folder / "thesis.tex", "\\documentclass{article}\n")
    return {"ix": folder}


def shards(root: Path) -> dict[str, Path]:
    x = vectors(8, 8)
    return {f"s{i}": feature_file(root / f"s{i}.h5", x[4 * i: 4 * i + 4], [f"kb{4 * i + j}" for j in range(4)],
                                  num_shards=2, shard_id=i) for i in range(2)}


def runs_and_qrels(root: Path) -> dict[str, Path]:
    return {"a": trec_run(root / "a.trec"), "b": trec_run(root / "b.trec", {"q1": {"d2": 0.7, "d1": 0.6},
                                                                           "q2": {"d3": 0.9}}),
            "qrels": qrels_file(root / "qrels.txt")}


def empty_run(root: Path) -> dict[str, Path]:
    return {**runs_and_qrels(root), "empty": trec_run(root / "empty.trec", {})}


def train_data(query_dim: int = 12, sha: tuple[str, str] | None = None):  # noqa: ANN201 - a builder
    """Tiny training data (train_helpers.make_data) whose query features have ``query_dim`` and, when given, KB
    and query features record these backbone sha256s."""
    def build(root: Path) -> dict[str, Path]:
        from train_helpers import GRID_DIM, GRID_TOKENS

        paths = make_data(root / "data", train=4, dev=2, test=2)
        scenes = sorted(p.stem for p in (root / "data" / "images" / "scenes").glob("*.png"))
        if query_dim != 12:
            paths["query_features"] = write_features(root / "scenes_other.h5", scenes, fc_dim=query_dim,
                                                     grid=(GRID_TOKENS, GRID_DIM), seed=2)
        if sha is not None:
            set_attrs(paths["kb_features"], backbone_sha256=sha[0])
            set_attrs(paths["query_features"], backbone_sha256=sha[1])
        assert read_ids(paths["train"])
        return {**paths, "out": root / "run"}
    return build


def captions_csv(root: Path) -> dict[str, Path]:
    """A CSV of 4 image–caption pairs (real PNGs) and an extraction-layout feature file of those 4 images."""
    from PIL import Image

    lines = ["filepath,title"]
    for i in range(4):
        (root / "img").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(root / "img" / f"{i}.png")
        lines.append(f"img/{i}.png,a red square left of a blue circle {i}")
    return {"csv": text_file(root / "captions.csv", "\n".join(lines) + "\n"),
            "feats": feature_file(root / "feats.h5", vectors(4, 8), [f"img/{i}" for i in range(4)])}


def other_features(root: Path) -> dict[str, Path]:
    """The captions of :func:`captions_csv` with a feature file of other images."""
    return {**captions_csv(root), "feats": feature_file(root / "other.h5", vectors(4, 8), ["x/a", "x/b", "x/c",
                                                                                            "x/d"])}


def negclip_tsv(header: str, rows: list[str]):  # noqa: ANN201 - a builder
    """A TSV next to 4 images (``img/0.png`` ...) with this header and these rows, and a run folder name."""
    def build(root: Path) -> dict[str, Path]:
        paths = captions_csv(root)
        return {"tsv": text_file(root / "mined.tsv", "\n".join([header, *rows]) + "\n"), "img": paths["csv"],
                "out": root / "run"}
    return build


TRAIN_ARGV = train_args({k: Path(f"{{{k}}}") for k in ("kb", "kb_features", "train", "dev", "query_features",
                                                     "tokenizer")}, Path("{out}"))


def check_index(count: int, skipped: int | None = None):  # noqa: ANN201 - a check
    def check(paths: dict[str, Path]) -> None:
        index = Index.load(paths["out"])
        assert len(index) == count and index.meta.count == count
        if skipped is not None:
            assert index.meta.build["skipped_vectors"]["count"] == skipped
            assert index.meta.build["skipped_vectors"]["ids"] == ["kb3", "kb7", "kb9"]
            assert not {"kb3", "kb7", "kb9"} & set(index.ids.tolist())
    return check


def check_extracted(expected_ids: set[str], skipped: dict[str, str]):  # noqa: ANN201 - a check
    """The feature file holds ``expected_ids``; its ``.skipped.tsv`` sidecar lists ``{id: category}``."""
    def check(paths: dict[str, Path]) -> None:
        from feature_extraction.store import H5FeatureStore

        with H5FeatureStore(paths["out"]) as store:
            assert set(store.ids) == expected_ids
        sidecar = paths["out"].with_suffix(".skipped.tsv")
        rows = [line.split("\t") for line in sidecar.read_text().splitlines()[1:]] if sidecar.exists() else []
        assert {row[0]: row[1] for row in rows} == skipped
    return check


EXTRACT = ("extract", "--out", "{out}", "--backbone", "{tiny_vit_pt}", "--device", "cpu", "--num-workers", "0",
           "--threads", "1", "--batch-size", "4", "--dtype", "float32", "--no-progress", "--quiet")

# Item 1: never lose data. Item 2: never hang, never die on one bad file. Item 3: never a silent wrong result.
CASES = [
    # -- 1. never lose data: an output is replaced only with --overwrite, never when it is an input, atomically --
    Case("build-index: existing index without --overwrite", combine(good_features, old_index),
         ["build-index", "--features", "{feats}", "--out", "{ix}"], 2, r"--out {ix} already exists; pass --overwrite",
         keep=["ix"]),
    Case("build-index: --overwrite with bad vectors keeps the old index", combine(nan_and_zero_features, old_index),
         ["build-index", "--features", "{feats}", "--out", "{ix}", "--overwrite"], 1, r"{feats}: 3 of 12 vectors",
         keep=["ix"]),
    Case("build-index: --out a folder that is not an index", combine(good_features, not_an_index_folder),
         ["build-index", "--features", "{feats}", "--out", "{ix}", "--overwrite"], 1,
         r"{ix}: exists and is not an index directory .*thesis\.tex", keep=["ix"]),
    Case("build-index: --out is the feature file", good_features,
         ["build-index", "--features", "{feats}", "--out", "{feats}", "--overwrite"], 2,
         r"--out {feats} is also an input", keep=["feats"]),
    Case("build-index: --sizing --json exists", combine(good_features, lambda r: {"rep": text_file(r / "r.json")}),
         ["build-index", "--sizing", "--features", "{feats}", "--json", "{rep}"], 2, r"--json {rep} already exists",
         keep=["rep"]),
    Case("merge: --out exists", combine(shards, lambda r: {"out": text_file(r / "merged.h5")}),
         ["merge", "--out", "{out}", "{s0}", "{s1}"], 2, r"--out {out} already exists; pass --overwrite",
         keep=["out"]),
    Case("merge: --out is a shard, even with --overwrite", shards,
         ["merge", "--out", "{s1}", "--overwrite", "{s0}", "{s1}"], 2, r"--out {s1} is also an input",
         keep=["s0", "s1"]),
    Case("fuse apply: --out is an input run, even with --overwrite", runs_and_qrels,
         ["fuse", "apply", "--runs", "{a}", "{b}", "--weights", "0.5,0.5", "--out", "{b}", "--overwrite"], 2,
         r"--out {b} is also an input", keep=["a", "b"]),
    Case("fuse apply: --out exists", combine(runs_and_qrels, lambda r: {"out": text_file(r / "fused.trec")}),
         ["fuse", "apply", "--runs", "{a}", "{b}", "--weights", "0.5,0.5", "--out", "{out}"], 2,
         r"--out {out} already exists", keep=["out"]),
    Case("fuse fit: --out is the qrels", runs_and_qrels,
         ["fuse", "fit", "--qrels", "{qrels}", "--runs", "{a}", "{b}", "--out", "{qrels}", "--overwrite"], 2,
         r"--out {qrels} is also an input", keep=["qrels"]),
    Case("evaluate: --json is an input run", runs_and_qrels,
         ["evaluate", "--qrels", "{qrels}", "--runs", "{a}", "{b}", "--json", "{a}", "--overwrite"], 2,
         r"--json {a} is also an input", keep=["a", "b"]),
    Case("evaluate: --json exists", combine(runs_and_qrels, lambda r: {"out": text_file(r / "eval.json")}),
         ["evaluate", "--qrels", "{qrels}", "--runs", "{a}", "--json", "{out}"], 2, r"--json {out} already exists",
         keep=["out"]),
    Case("import dpr: --out is --input, even with --overwrite", lambda r: {"src": dpr_json(r / "d.json", [DPR_RECORD])},
         ["import", "dpr", "--input", "{src}", "--out", "{src}", "--overwrite"], 2, r"--out {src} is also an input",
         keep=["src"]),
    Case("import dpr: --overwrite, no valid record: the old --out stays",
         lambda r: {"src": dpr_json(r / "d.json", [{"answers": []}]), "out": text_file(r / "q.jsonl")},
         ["import", "dpr", "--input", "{src}", "--out", "{out}", "--overwrite"], 1, r"{src}: no valid records",
         keep=["out"]),
    Case("search: --out is the queries file", lambda r: {"q": queries_jsonl(r / "q.jsonl"), "ix": r / "no_index"},
         ["search", "--index", "{ix}", "--encoder", "clip-image", "--queries", "{q}", "--out", "{q}",
          "--overwrite"], 2, r"--out {q} is also an input", keep=["q"]),
    Case("search: --out exists", lambda r: {"q": queries_jsonl(r / "q.jsonl"), "out": text_file(r / "run.trec"),
                                            "ix": r / "no_index"},
         ["search", "--index", "{ix}", "--encoder", "clip-image", "--queries", "{q}", "--out", "{out}"], 2,
         r"--out {out} already exists", keep=["out"]),
    # -- 2. never hang, never die on one bad file; ids a format cannot hold are refused -------------------------
    Case("extract: symlink loops are listed once, skipped with a reason",
         combine(lambda r: {"dir": symlink_loops(r / "imgs")}, names(out="f.h5")),
         ["extract", "--images", "{dir}", *EXTRACT[1:]], 0, r"skipped 3: 1 repeated folder, 2 symlink loop",
         check=check_extracted({"img_00000", "img_00001", "sub/img_00000"},
                               {"self/": "symlink loop", "sub/up/": "symlink loop", "again/": "repeated folder"}),
         subprocess=True, fixtures=["tiny_vit_pt"], timeout=180),
    Case("extract: a file name that is not UTF-8 gets a reversible id",
         combine(lambda r: {"dir": non_utf8_names(r / "imgs")}, names(out="f.h5")),
         ["extract", "--images", "{dir}", *EXTRACT[1:]], 0, r"written 2 [^\n]*\nskipped 0:",
         check=check_extracted({"img_00000", "caf\\xe9-\\xff"}, {}), fixtures=["tiny_vit_pt"]),
    Case("search: a query id with a space (TREC cannot hold it)",
         lambda r: {"q": queries_jsonl(r / "q.jsonl", ["q1", "q 2"]), "ix": r / "no_index", "out": r / "run.trec"},
         ["search", "--index", "{ix}", "--encoder", "clip-image", "--queries", "{q}", "--out", "{out}"], 1,
         r"{q}: query id 'q 2' contains whitespace", absent=["out"]),
    Case("search: a query id with a TAB", lambda r: {"q": queries_jsonl(r / "q.jsonl", ["q1\t"]),
                                                     "ix": r / "no_index", "out": r / "run.trec"},
         ["search", "--index", "{ix}", "--encoder", "clip-image", "--queries", "{q}", "--out", "{out}"], 1,
         r"{q}: query id 'q1\\t' contains whitespace", absent=["out"]),
    Case("fuse apply: a run tag with a space", combine(runs_and_qrels, names(out="fused.trec")),
         ["fuse", "apply", "--runs", "{a}", "{b}", "--weights", "0.5,0.5", "--out", "{out}", "--tag", "my run"], 1,
         r"--tag: run tag 'my run' contains whitespace", absent=["out"]),
    # -- 3. never a silent wrong result ---------------------------------------------------------------------------
    Case("build-index: NaN, zero and inf vectors are refused with their ids",
         combine(nan_and_zero_features, names(out="ix")),
         ["build-index", "--features", "{feats}", "--out", "{out}"], 1,
         r"{feats}: 3 of 12 vectors are zero or not finite \(ids 'kb3', 'kb7', 'kb9'\).*--skip-bad-vectors",
         absent=["out"]),
    Case("build-index: --skip-bad-vectors leaves them out, counted", combine(nan_and_zero_features, names(out="ix")),
         ["build-index", "--features", "{feats}", "--out", "{out}", "--skip-bad-vectors"], 0, r"9 vectors",
         check=check_index(9, skipped=3)),
    Case("build-index: --skip-bad-vectors on a file of NaNs only", combine(all_nan_features, names(out="ix")),
         ["build-index", "--features", "{feats}", "--out", "{out}", "--skip-bad-vectors"], 1,
         r"{feats}: 4 of 4 vectors are zero or not finite", absent=["out"]),
    Case("build-index: IVF over NaN vectors", combine(nan_and_zero_features, names(out="ix")),
         ["build-index", "--features", "{feats}", "--out", "{out}", "--factory", "IVF2,Flat"], 1,
         r"{feats}: 3 of 12 vectors", absent=["out"]),
    Case("build-index: fc_dim attribute contradicts the data", combine(contradicting_fc_dim, names(out="ix")),
         ["build-index", "--features", "{feats}", "--out", "{out}"], 1,
         r"{feats}: its attributes contradict its data: fc_dim=16 but 'fc' holds vectors of dim 8", absent=["out"]),
    Case("build-index: grid_hw contradicts the grid", combine(contradicting_grid, names(out="ix")),
         ["build-index", "--features", "{feats}", "--out", "{out}"], 1,
         r"{feats}: .*grid_hw=\[4, 4\] \(16 tokens\) but 'grid' holds 9 tokens", absent=["out"]),
    Case("build-index: has_grid without a grid", combine(missing_grid, names(out="ix")),
         ["build-index", "--features", "{feats}", "--out", "{out}"], 1,
         r"{feats}: .*has_grid=True but the file has no 'grid' dataset", absent=["out"]),
    Case("train: query features of another dim than the KB's (no baselines)", train_data(query_dim=20),
         ["train", *TRAIN_ARGV], 1, r"--query-features {query_features} holds vectors of dim 20, --kb-features "
         r"{kb_features} of dim 12", absent=["out"]),
    Case("train: query features from another CLIP backbone (sha256)", train_data(sha=("a" * 64, "b" * 64)),
         ["train", *TRAIN_ARGV, "--baselines"], 1,
         r"--query-features {query_features} was extracted with backbone sha256 bbbbbbbbbbbb", absent=["out"]),
    Case("evaluate: an empty run", empty_run, ["evaluate", "--qrels", "{qrels}", "--runs", "{a}", "{empty}"], 1,
         r"{empty}: empty run"),
    Case("fuse apply: an empty run", combine(empty_run, names(out="fused.trec")),
         ["fuse", "apply", "--runs", "{a}", "{empty}", "--weights", "0.5,0.5", "--out", "{out}"], 1,
         r"{empty}: empty run", absent=["out"]),
    Case("fuse fit: an empty run", empty_run, ["fuse", "fit", "--qrels", "{qrels}", "--runs", "{empty}", "{a}"], 1,
         r"{empty}: empty run"),
    Case("import dpr: a top-level object instead of DPR's array",
         combine(lambda r: {"src": dpr_json(r / "d.json", {"data": [DPR_RECORD]})}, names(out="q.jsonl")),
         ["import", "dpr", "--input", "{src}", "--out", "{out}"], 1,
         r"{src}: the top level holds a JSON object; expected a JSON array", absent=["out"]),
    Case("import dpr: one record not in an array",
         combine(lambda r: {"src": dpr_json(r / "d.json", DPR_RECORD)}, names(out="q.jsonl")),
         ["import", "dpr", "--input", "{src}", "--out", "{out}"], 1, r"{src}: the top level holds a JSON object",
         absent=["out"]),
]


# NegCLIP mining and fine-tuning (issue 14): inputs kept, outputs not half-written, one line naming the file
NEGCLIP_TRAIN = ("clip-train", "--negclip", "--model-name", "tiny", "--train-data", "{tsv}", "--batch-size", "2",
                 "--epochs", "1", "--threads", "1", "--no-progress", "--out", "{out}")
CASES += [
    Case("mine-negclip: --out is the captions file, even with --overwrite", captions_csv,
         ["mine-negclip", "--captions", "{csv}", "--image-features", "{feats}", "--out", "{csv}", "--overwrite"], 2,
         r"--out {csv} is also an input", keep=["csv"]),
    Case("mine-negclip: --out exists", combine(captions_csv, lambda r: {"out": text_file(r / "mined.tsv")}),
         ["mine-negclip", "--captions", "{csv}", "--image-features", "{feats}", "--out", "{out}"], 2,
         r"--out {out} already exists", keep=["out"]),
    Case("mine-negclip: a feature file of other images", combine(other_features, names(out="mined.tsv")),
         ["mine-negclip", "--captions", "{csv}", "--image-features", "{feats}", "--out", "{out}"], 1,
         r"{feats}: no feature row for 4 image\(s\)", absent=["out"]),
    Case("clip-train --negclip: a TSV without NegCLIP's columns",
         negclip_tsv("filepath\ttitle", ["img/0.png\ta red square"]), NEGCLIP_TRAIN, 1,
         r"{tsv}: missing column\(s\) \['neg_caption', 'neg_image'\]", absent=["out"]),
    Case("clip-train --negclip: every neg_image row out of range",
         negclip_tsv("filepath\ttitle\tneg_caption\tneg_image",
                     [f"img/{i}.png\ta red square\t['a square red']\t[{7 + i}]" for i in range(4)]), NEGCLIP_TRAIN, 1,
         r"{tsv}: no usable NegCLIP rows .*malformed negatives", absent=["out"]),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                   request: pytest.FixtureRequest) -> None:
    run_case(case, tmp_path, capsys, request)


def test_the_table_covers_items_1_to_3() -> None:
    assert len(CASES) >= 25 and len({c.id for c in CASES}) == len(CASES)


# -- the same rules through the library ----------------------------------------------------------------------------
def test_a_failed_save_leaves_the_old_index_loadable_and_unchanged(tmp_path: Path, monkeypatch) -> None:
    old = index_dir(tmp_path / "ix", n=5, dim=8, seed=1)
    before = snapshot(old)
    new = build_index(vectors(40, 8, seed=2), [f"n{i}" for i in range(40)], IndexConfig())
    real_write = faiss.write_index

    def full_disk(index: faiss.Index, path: str) -> None:  # writes part of the file, then the disk is full
        real_write(index, path)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(faiss, "write_index", full_disk)
    with pytest.raises((OSError, UserError), match="(?i)no space left"):  # a one-line UserError where reported
        new.save(old)
    assert snapshot(old) == before and Index.load(old).ids.tolist() == [f"kb{i}" for i in range(5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ix"]  # no temporary folder left behind
    monkeypatch.setattr(faiss, "write_index", real_write)
    new.save(old)
    assert len(Index.load(old)) == 40


KILL_DURING_SAVE = """
import os, signal, sys
import faiss
real = faiss.write_index
def killed(index, path):
    real(index, path)
    os.truncate(path, os.path.getsize(path) // 2)
    os.kill(os.getpid(), signal.SIGKILL)
faiss.write_index = killed
from vlt5r.main import main
sys.exit(main(["build-index", "--features", sys.argv[1], "--out", sys.argv[2], "--overwrite"]))
"""


def test_a_rebuild_killed_mid_write_leaves_the_old_index(tmp_path: Path) -> None:
    old = index_dir(tmp_path / "ix", n=5, dim=8, seed=1)
    before = snapshot(old)
    feats = feature_file(tmp_path / "kb.h5", vectors(30, 8))
    proc = run_subprocess([sys.executable, "-c", KILL_DURING_SAVE, str(feats), str(old)], cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert snapshot(old) == before and len(Index.load(old)) == 5
    # the next rebuild clears the killed one's temporary folder and replaces the index
    from vlt5r.main import main

    assert main(["build-index", "--features", str(feats), "--out", str(old), "--overwrite"]) == 0
    assert len(Index.load(old)) == 30 and sorted(p.name for p in tmp_path.iterdir()) == ["ix", "kb.h5"]


def test_a_kill_between_the_two_renames_loads_the_old_index(tmp_path: Path) -> None:
    """``write_dir_atomically`` keeps the old index at ``.ix.old`` between its two renames; ``Index.load`` finds it."""
    old = index_dir(tmp_path / "ix", n=5, dim=8)
    os.rename(old, tmp_path / ".ix.old")
    assert Index.load(old).ids.tolist() == [f"kb{i}" for i in range(5)]


def test_k_is_capped_at_the_index_size_in_the_library() -> None:
    index = build_index(vectors(7, 8), [f"kb{i}" for i in range(7)], IndexConfig())
    scores, ids = index.search(vectors(2, 8, seed=3), 10**9)  # a huge k would allocate Q x k results
    assert ids.shape == scores.shape == (2, 7) and sorted(ids[0].tolist()) == sorted(index.ids.tolist())
    _, rows = index.search_rows(vectors(1, 8, seed=3), 10**12)
    assert rows.shape == (1, 7)


def test_k_is_capped_in_the_search_cli_and_the_server(world, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    from fastapi.testclient import TestClient

    from retrieval.querying.app import ServerConfig, create_app
    from retrieval.querying.searcher import open_searcher
    from vlt5r.main import main

    n_kb = len(Index.load(world.index))
    run = tmp_path / "run.trec"
    assert main(["search", "--index", str(world.index), "--encoder", str(world.encoder), "--queries",
                 str(world.queries), "--query-features", str(world.features("scenes")), "--out", str(run),
                 "-k", "1000000000", "--no-progress"]) == 0
    lines = run.read_text().splitlines()
    n_queries = len({line.split()[0] for line in lines})
    assert len(lines) == n_queries * n_kb
    searcher = open_searcher(world.index, world.kb, str(world.encoder))
    with TestClient(create_app(searcher, ServerConfig(max_k=10**9)), raise_server_exceptions=False) as client:
        scene = world.scene("test-00000")
        reply = client.post("/search", data={"question": "the red one", "k": "1000000000"},
                            files={"image": (scene.name, scene.read_bytes(), "image/png")})
    assert reply.status_code == 200, reply.text
    assert len(reply.json()["hits"]) == n_kb


def test_trec_writers_refuse_ids_they_cannot_hold(tmp_path: Path) -> None:
    from retrieval.formats import read_trec_run, write_trec_qrels, write_trec_run

    for bad in ("d 1", "d\t1", "d1\n", " d1", ""):
        with pytest.raises(UserError, match=r"run\.trec: document id of query 'q1' .* (contains whitespace|is empty)"):
            write_trec_run(tmp_path / "run.trec", {"q1": {"ok": 1.0, bad: 0.5}})
        assert not (tmp_path / "run.trec").exists()
    with pytest.raises(UserError, match=r"query id 'q 1' contains whitespace"):
        write_trec_qrels(tmp_path / "qrels.txt", {"q 1": {"d": 1}})
    write_trec_run(tmp_path / "run.trec", {"q1": {"d1": 1.0, "d2": 0.5}})
    assert read_trec_run(tmp_path / "run.trec") == {"q1": {"d1": 1.0, "d2": 0.5}}


def test_non_utf8_ids_round_trip_to_the_file_name(tmp_path: Path) -> None:
    from feature_extraction.inputs import list_image_dir, name_of_text, text_of_name

    folder = non_utf8_names(tmp_path / "imgs")
    listing = list_image_dir(folder)
    odd = next(i for i in listing.ids if i != "img_00000")
    assert odd == "caf\\xe9-\\xff" and odd.encode("utf-8")  # valid UTF-8 text
    assert name_of_text(odd) + b".jpg" == NON_UTF8_NAME
    assert (folder / os.fsdecode(NON_UTF8_NAME)).read_bytes()[:2] == b"\xff\xd8"  # the source still opens
    assert text_of_name("ok/é ü.jpg") == "ok/é ü.jpg"  # a UTF-8 name is its own id


def test_symlink_walk_lists_every_real_folder_once(tmp_path: Path) -> None:
    from feature_extraction.inputs import walk_images

    folder = symlink_loops(tmp_path / "imgs")
    outside = tmp_path / "elsewhere"
    from bad_inputs import image_folder

    image_folder(outside, 1)
    (folder / "linked").symlink_to(outside, target_is_directory=True)
    found, skipped = walk_images(folder)
    assert sorted(found) == ["img_00000.jpg", "img_00001.jpg", "linked/img_00000.jpg", "sub/img_00000.jpg"]
    assert {s.item_id: s.category for s in skipped} == {"self/": "symlink loop", "sub/up/": "symlink loop",
                                                       "again/": "repeated folder"}


def test_training_check_passes_matching_features(tmp_path: Path) -> None:
    """The same-CLIP check does not refuse what belongs together (same dim, same or unrecorded sha256)."""
    from retrieval.training.data import check_training_features

    a = feature_file(tmp_path / "a.h5", vectors(3, 8), backbone_sha256="c" * 64)
    b = feature_file(tmp_path / "b.h5", vectors(3, 8), backbone_sha256="c" * 64)
    c = feature_file(tmp_path / "c.h5", vectors(3, 8))
    check_training_features(str(a), None, "image", str(b), str(c))
    with pytest.raises(UserError, match="text-features"):
        check_training_features(str(a), str(feature_file(tmp_path / "t.h5", vectors(3, 5))), "mean", str(b), None)


def test_feature_store_reads_consistent_attrs(tmp_path: Path) -> None:
    from feature_extraction.store import H5FeatureStore

    grid = vectors(3 * 9, 5).reshape(3, 9, 5)
    with H5FeatureStore(feature_file(tmp_path / "g.h5", vectors(3, 8), grid=grid)) as store:
        assert store.attrs["grid_hw"] == [3, 3] and store.has_grid
    path = feature_file(tmp_path / "f.h5", vectors(3, 8))
    with h5py.File(path, "a") as f:
        del f.attrs["fc_dim"]  # absent attributes (legacy files) are not checked
    with H5FeatureStore(path) as store:
        assert store.ids == ["kb0", "kb1", "kb2"]
