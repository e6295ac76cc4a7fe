"""Search: encoders vs the extraction pipeline, Flat search vs brute force, the CLI (one query, batch, errors)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers_search import World, brute_force_topk, make_world_fixture, run_cli

from feature_extraction.readers import open_features
from feature_extraction.tiny import TINY_VIT, make_openai_clip
from vlt5r.drivers import search as search_cli
from retrieval.formats import read_queries, read_trec_run
from retrieval.querying import BackboneMismatch, image_from_path, load_encoder, open_searcher
from retrieval.querying.backbone_ref import BACKBONE_RECORD, encoder_record, index_record, resolve_backbone
from retrieval.querying.features import encode_with_features
from vlt5 import QueryEncoder

world = make_world_fixture()
QUESTION = "Which entry describes the red shape in this picture?"


@pytest.fixture(scope="module")
def searcher(world: World):  # noqa: ANN201
    return open_searcher(world.index, world.kb, str(world.encoder))


def fc_of(path: Path, ids: list[str]) -> np.ndarray:
    with open_features(path) as store:
        return np.asarray(store.get_many(ids).fc, dtype=np.float32)


def test_joint_query_from_an_image_file_equals_the_encoder_on_extracted_features(world: World, searcher) -> None:
    """The server/CLI path (decode -> backbone -> in-memory store -> encoder) = the training path (feature file)."""
    scenes = ["test-00000", "test-00003"]
    images = [image_from_path(world.scene(s)) for s in scenes]
    live = searcher.encoder.encode_queries([QUESTION, "the top left one"], images)  # (2, D)
    reference = encode_with_features(QueryEncoder.from_pretrained(world.encoder), world.features("scenes"),
                                     [QUESTION, "the top left one"], scenes)
    np.testing.assert_allclose(live, reference, atol=2e-5)
    one = searcher.encoder.encode_query(QUESTION, images[0])
    np.testing.assert_allclose(one, reference[0], atol=2e-5)


def test_clip_baselines_equal_the_extracted_features(world: World) -> None:
    image_enc = load_encoder("clip-image", index_record=index_record(json.loads(
        (world.index / "index.json").read_text())["source"], world.index))
    kb_png = image_from_path(world.data / "images" / "kb" / "E005.png")
    np.testing.assert_allclose(image_enc.encode_query(None, kb_png), fc_of(world.features("kb_image"), ["E005"])[0],
                               atol=2e-5)
    text_enc = load_encoder(f"clip-text:{world.clip}")
    q = read_queries(world.queries)[:3]
    stored = fc_of(world.features("questions"), [x.id for x in q])
    np.testing.assert_allclose(text_enc.encode_queries([x.question for x in q], [None] * 3), stored, atol=2e-5)


def test_flat_search_equals_brute_force(world: World, searcher) -> None:
    for scene, question in [("test-00000", QUESTION), ("test-00004", "Tell me about the ring.")]:
        vector = searcher.encoder.encode_query(question, image_from_path(world.scene(scene)))
        hits = searcher.search_vectors(vector[None], 10)[0]
        ids, scores = brute_force_topk(world, vector, 10)
        assert [h.id for h in hits] == ids
        np.testing.assert_allclose([h.score for h in hits], scores, atol=1e-5)
        assert hits[0].title and hits[0].snippet and [h.rank for h in hits] == list(range(1, 11))


def test_backbone_is_resolved_from_encoder_then_training_run_then_index(world: World, tmp_path: Path) -> None:
    source = json.loads((world.index / "index.json").read_text())["source"]
    from_index = index_record(source, world.index)
    ref = resolve_backbone([encoder_record(world.encoder), from_index], None)
    assert ref.source.endswith(BACKBONE_RECORD) and ref.image_size == 32 and ref.sha256
    run_ckpt = tmp_path / "best"  # a training checkpoint: no backbone.json, but train_config.json
    shutil.copytree(world.encoder, run_ckpt, ignore=shutil.ignore_patterns(BACKBONE_RECORD))
    (run_ckpt / "train_config.json").write_text(json.dumps({"data": {"query_features": str(world.features("scenes"))}}))
    ref2 = resolve_backbone([encoder_record(run_ckpt), from_index], None)
    assert "train_config.json" in ref2.source and ref2.sha256 == ref.sha256
    (run_ckpt / "train_config.json").unlink()
    ref3 = resolve_backbone([encoder_record(run_ckpt), from_index], None)
    assert ref3.source.endswith("index.json") and ref3.sha256 == ref.sha256
    with pytest.raises(BackboneMismatch, match="pass --backbone"):
        resolve_backbone([None, None], None)


def test_other_weights_are_refused_with_one_line(world: World, tmp_path: Path) -> None:
    other = make_openai_clip(tmp_path / "other.pt", TINY_VIT, seed=1)
    encoder = load_encoder(str(world.encoder), backbone=str(other))
    with pytest.raises(BackboneMismatch, match="sha256") as err:
        encoder.load()
    assert "\n" not in str(err.value)
    with pytest.raises(BackboneMismatch, match="sha256"):  # query features from other weights: refused as well
        fake = tmp_path / "scenes.h5"
        shutil.copy(world.features("scenes"), fake)
        import h5py

        with h5py.File(fake, "a") as f:
            f.attrs["backbone_sha256"] = "0" * 64
        with open_features(fake) as store:
            load_encoder(str(world.encoder)).encode_stored(read_queries(world.queries)[:1], store, None)


def test_cli_one_query_prints_the_table_as_a_script(world: World, searcher) -> None:
    scene = world.scene("test-00001")
    result = run_cli("search.py", "--index", str(world.index), "--kb", str(world.kb), "--encoder",
                     str(world.encoder), "--question", QUESTION, "--image", str(scene), "-k", "5")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:4] == ["rank", "score", "id", "title"] and len(lines) == 6
    expected = searcher.search(QUESTION, image_from_path(scene), 5)
    assert [line.split()[2] for line in lines[1:]] == [h.id for h in expected]
    assert "Traceback" not in result.stderr


def test_cli_json_output(world: World, searcher, capsys: pytest.CaptureFixture) -> None:
    scene = world.scene("test-00002")
    assert search_cli.main(["--index", str(world.index), "--kb", str(world.kb), "--encoder", str(world.encoder),
                            "--question", QUESTION, "--image", str(scene), "-k", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    expected = searcher.search(QUESTION, image_from_path(scene), 4)
    assert out["hits"] == [h.to_json() for h in expected] and out["query"]["k"] == 4


@pytest.mark.parametrize("encoder", ["joint", "clip-image", "clip-text", "clip-text-live"])
def test_cli_batch_writes_the_searchers_run(world: World, tmp_path: Path, encoder: str) -> None:
    spec = {"joint": str(world.encoder), "clip-image": "clip-image"}.get(encoder, "clip-text")
    extra = ["--query-text-features", str(world.features("questions"))] if encoder == "clip-text" else []
    run_path = tmp_path / f"{encoder}.trec"
    assert search_cli.main(["--index", str(world.index), "--kb", str(world.kb), "--encoder", spec, "--queries",
                            str(world.queries), "--query-features", str(world.features("scenes")), *extra,
                            "--out", str(run_path), "-k", "7", "--batch-size", "5", "--no-progress"]) == 0
    run = read_trec_run(run_path)
    queries = read_queries(world.queries)
    assert set(run) == {q.id for q in queries} and all(len(docs) == 7 for docs in run.values())
    s = open_searcher(world.index, None, spec)
    with open_features(world.features("scenes")) as feats, open_features(world.features("questions")) as qf:
        vectors = s.encoder.encode_stored(queries, feats, qf)
    for q, v in zip(queries, vectors):
        ids, scores = brute_force_topk(world, v, 7)
        ranked = sorted(run[q.id].items(), key=lambda kv: -kv[1])
        assert [d for d, _ in ranked] == ids, q.id
        np.testing.assert_allclose([x for _, x in ranked], scores, atol=1e-5)


@pytest.mark.parametrize("case", ["no index", "not an image", "k=0", "no query", "needs image", "wrong weights",
                                  "queries without out"])
def test_cli_user_errors_are_one_line(world: World, tmp_path: Path, case: str,
                                             capsys: pytest.CaptureFixture) -> None:
    base = ["--index", str(world.index), "--kb", str(world.kb), "--encoder", str(world.encoder)]
    query = ["--question", "q", "--image", str(world.scene("test-00000"))]
    args = {"no index": ["--index", str(tmp_path / "nope"), "--kb", str(world.kb), "--encoder", "clip-image", *query],
            "not an image": [*base, "--question", "q", "--image", str(world.kb)],
            "k=0": [*base, *query, "-k", "0"],
            "no query": base,
            "needs image": [*base, "--question", "q"],
            "wrong weights": [*base, *query, "--backbone", str(make_openai_clip(tmp_path / "o.pt", TINY_VIT, 3))],
            "queries without out": [*base, "--queries", str(world.queries)]}[case]
    usage = case in ("k=0", "no query", "queries without out")  # flags: exit 2; files and values: exit 1
    code = search_cli.main(args)
    err = capsys.readouterr().err.strip()
    assert code == (2 if usage else 1) and err.startswith("error: ") and "\n" not in err, err
