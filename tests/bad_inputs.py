"""Builders of bad inputs and the harness of the permanent bad-input suite (``tests/test_bad_inputs*.py``).

One row of a table is a :class:`Case`: the ``vlt5r`` command line, a *builder* that makes the bad input (and any
output that exists before the command) under ``tmp_path``, the exit code, a regex for the one ``error:`` line, and
the outputs that must come out byte-identical (``keep``) or must not exist (``absent``). :func:`run_case` runs a
row in-process through :func:`vlt5r.main.main`, or in a fresh process (``subprocess=True``: a hang then ends in a
timeout instead of stopping the suite).

Conventions a new table can rely on:

* a builder is ``builder(root: Path) -> {name: path}``; builders combine with :func:`combine` and the small
  writers below (:func:`feature_file`, :func:`index_dir`, :func:`trec_run`, ...) make real files through the
  toolkit's own writers (``write_feature_file``, ``Index.save``, ``write_trec_run``);
* ``{name}`` in ``argv`` is replaced by that path; in ``message`` by the *escaped* path, so a regex such as
  ``r"{feats}: .* dim"`` checks that the message names the file;
* ``fixtures`` names pytest fixtures (e.g. ``tiny_vit_pt``) whose values join the paths;
* a case with ``code == 0`` checks ``message`` against stdout, and ``check(paths)`` for what was written.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from test_cli import run as run_subprocess  # the one subprocess harness of the CLI tests (env, cwd, timeout)

Paths = dict[str, Path]
Builder = Callable[[Path], Paths]


@dataclass(frozen=True)
class Case:
    """One row of a bad-input table (see the module docstring)."""

    id: str
    build: Builder
    argv: Sequence[str]
    code: int
    message: str = ""
    keep: Sequence[str] = ()
    absent: Sequence[str] = ()
    check: Callable[[Paths], None] | None = None
    subprocess: bool = False
    fixtures: Sequence[str] = ()
    timeout: float = 120


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    paths: Paths = field(default_factory=dict)


# -- the harness -------------------------------------------------------------------------------------------------
def snapshot(path: Path) -> dict[str, bytes] | None:
    """Every byte under ``path`` (a file, or a folder's files by relative path); None when it does not exist."""
    if path.is_file():
        return {"": path.read_bytes()}
    if path.is_dir():
        return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    return None


def fill(template: str, paths: Paths, escape: bool = False) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: re.escape(str(paths[m.group(1)])) if escape else str(paths[m.group(1)]),
                  template)


def run_case(case: Case, tmp_path: Path, capsys: Any, request: Any) -> Outcome:
    """Build, run and check one case; returns what happened (for extra checks by the caller)."""
    from vlt5r.main import main

    paths = {name: Path(request.getfixturevalue(name)) for name in case.fixtures}
    paths.update(case.build(tmp_path))
    before = {name: snapshot(paths[name]) for name in case.keep}
    assert all(v is not None for v in before.values()), f"{case.id}: a 'keep' output was not built"
    argv = [fill(a, paths) for a in case.argv]
    if case.subprocess:
        proc = run_subprocess([sys.executable, "-m", "vlt5r", *argv], cwd=tmp_path, timeout=case.timeout)
        outcome = Outcome(proc.returncode, proc.stdout, proc.stderr, paths)
    else:
        capsys.readouterr()
        code = main(argv)
        out, err = capsys.readouterr()
        outcome = Outcome(code, out, err, paths)
    where = f"{case.id}: vlt5r {' '.join(argv)}\nstdout: {outcome.stdout[-1500:]}\nstderr: {outcome.stderr[-3000:]}"
    assert outcome.code == case.code, where
    assert "Traceback" not in outcome.stderr, where
    if case.code != 0:
        lines = outcome.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), where
        assert re.search(fill(case.message, paths, escape=True), lines[0]), where
    elif case.message:
        assert re.search(fill(case.message, paths, escape=True), outcome.stdout), where
    for name in case.keep:
        assert snapshot(paths[name]) == before[name], f"{case.id}: {paths[name]} changed"
    for name in case.absent:
        assert not paths[name].exists(), f"{case.id}: {paths[name]} was written"
    if case.check is not None:
        case.check(paths)
    return outcome


# -- builders: small real files -----------------------------------------------------------------------------------
def combine(*builders: Builder) -> Builder:
    """One builder running several (later names win)."""
    def build(root: Path) -> Paths:
        out: Paths = {}
        for b in builders:
            out.update(b(root))
        return out
    return build


def names(**paths: str) -> Builder:
    """Paths that are only named (outputs the command should or should not write): ``names(out="ix")``."""
    return lambda root: {name: root / rel for name, rel in paths.items()}


def vectors(n: int = 12, dim: int = 8, seed: int = 0) -> np.ndarray:
    """(n, dim) float32 Gaussian rows: nonzero and finite."""
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def feature_file(path: Path, fc: np.ndarray, ids: Sequence[str] | None = None, grid: np.ndarray | None = None,
                 **attrs: Any) -> Path:
    """A feature file in our HDF5 layout, written by the toolkit's own writer (``write_feature_file``); ``attrs``
    override the consistent defaults (pass ``fc_dim=99`` to make them contradict the data)."""
    from feature_extraction.writer import Block, write_feature_file

    ids = list(ids) if ids is not None else [f"kb{i}" for i in range(len(fc))]
    base = {"format_name": "vlt5-retrieval/features", "format_version": 1, "modality": "image", "backbone": "test",
            "fc_dim": fc.shape[1], "dtype": str(fc.dtype), "num_shards": 1, "shard_id": 0,
            "has_grid": grid is not None}
    if grid is not None:
        side = int(round(grid.shape[1] ** 0.5))
        base.update(grid_hw=[side, grid.shape[1] // side], grid_dim=grid.shape[2])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_feature_file(path, {**base, **attrs}, len(ids), fc.shape[1], None if grid is None else grid.shape[1:],
                       str(fc.dtype), [Block(ids, fc, grid)], [])
    return path


def set_attrs(path: Path, **attrs: Any) -> Path:
    """Change attributes of an existing HDF5 file in place (the data stays as it was)."""
    with h5py.File(path, "a") as f:
        f.attrs.update(attrs)
    return path


def index_dir(path: Path, n: int = 12, dim: int = 8, seed: int = 0) -> Path:
    """A Flat index directory over :func:`vectors`, saved by ``Index.save`` (ids ``kb0``..)."""
    from retrieval.indexing import IndexConfig, build_index

    build_index(vectors(n, dim, seed), [f"kb{i}" for i in range(n)], IndexConfig(factory="Flat")).save(path)
    return path


def trec_run(path: Path, run: dict[str, dict[str, float]] | None = None, tag: str = "t") -> Path:
    """A TREC run written by ``write_trec_run`` (default: two queries, three documents each); ``{}`` = empty."""
    from retrieval.formats import write_trec_run

    if run is None:
        run = {"q1": {"d1": 0.9, "d2": 0.5, "d3": 0.1}, "q2": {"d2": 0.8, "d3": 0.4, "d1": 0.2}}
    if not run:
        path.write_text("")
        return path
    write_trec_run(path, run, tag=tag)
    return path


def qrels_file(path: Path) -> Path:
    """TREC qrels for :func:`trec_run`'s queries (q1 -> d1, q2 -> d3)."""
    path.write_text("q1 0 d1 1\nq2 0 d3 1\n")
    return path


def queries_jsonl(path: Path, ids: Sequence[str] = ("q1", "q2")) -> Path:
    """A queries JSONL (``{id, question, image, positives}``) with these ids."""
    lines = [json.dumps({"id": i, "question": f"question {i}?", "image": f"img{n}", "positives": ["kb0"]})
             for n, i in enumerate(ids)]
    path.write_text("\n".join(lines) + "\n")
    return path


def dpr_json(path: Path, top_level: Any) -> Path:
    """A DPR-style ``.json`` source whose top level is ``top_level`` (DPR's own format is a list of records)."""
    path.write_text(json.dumps(top_level))
    return path


DPR_RECORD = {"question": "who wrote it?", "answers": ["x"],
              "positive_ctxs": [{"title": "T", "text": "some text", "passage_id": "p1"}], "hard_negative_ctxs": []}


def text_file(path: Path, text: str = "an output the user already has\n") -> Path:
    """A plain file standing for an output that exists before the command runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- builders: folders that trip a walker ------------------------------------------------------------------------
def image_folder(path: Path, n: int = 2) -> Path:
    """``n`` small JPEG photographs (``img_00000.jpg``...)."""
    from feature_extraction.tiny import make_image_folder

    make_image_folder(path, n, size=(40, 30))
    return path


def symlink_loops(path: Path) -> Path:
    """An image folder with two loops: ``self -> .`` and ``sub/up -> ..`` (unbounded paths for a naive walk),
    plus ``again -> sub`` (a second link to a folder already listed)."""
    image_folder(path)
    image_folder(path / "sub", 1)
    (path / "self").symlink_to(".", target_is_directory=True)
    (path / "sub" / "up").symlink_to("..", target_is_directory=True)
    (path / "again").symlink_to("sub", target_is_directory=True)
    return path


NON_UTF8_NAME = b"caf\xe9-\xff.jpg"  # Latin-1 e-acute and a byte that is never UTF-8


def non_utf8_names(path: Path) -> Path:
    """An image folder with one file whose name is not UTF-8 (:data:`NON_UTF8_NAME`)."""
    import os

    image_folder(path)
    os.rename(path / "img_00001.jpg", os.path.join(os.fsencode(path), NON_UTF8_NAME))
    return path
