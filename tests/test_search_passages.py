"""Article -> passage mapping (ViQuAE): a hand-worked example, several images per article, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers_search import World, make_world_fixture

from vlt5r.drivers import search as search_cli
from retrieval.formats import read_trec_run, write_trec_run
from retrieval.indexing import IndexConfig, build_index
from retrieval.querying import PassageMap, Searcher
from retrieval.querying.searcher import PASSAGE_EPSILON

world = make_world_fixture()


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def hand_searcher(tmp_path: Path, ids: list[str], sep: str | None = None) -> Searcher:
    # Unit vectors at angles 0°, 60°, 90°, 180° from the query (1, 0): cosine 1, 0.5, 0, -1.
    vectors = np.array([[1.0, 0.0], [0.5, np.sqrt(3) / 2], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32)
    index = build_index(vectors, ids, IndexConfig(factory="Flat"))
    passages = write_jsonl(tmp_path / "passages.jsonl", [
        {"id": "a1", "article": "A", "title": "A", "text": "first passage of A"},
        {"id": "b1", "article": "B", "text": "only passage of B"},
        {"id": "a2", "article": "A", "text": "second passage of A"},
        {"id": "c1", "article": "C"}, {"id": "c2", "article": "C"}, {"id": "c3", "article": "C"},
        {"id": "d1", "article": "D"}])
    return Searcher(index, {}, None, PassageMap.from_jsonl(passages, "article", sep))


def test_article_scores_go_to_their_passages_by_hand(tmp_path: Path) -> None:
    s = hand_searcher(tmp_path, ["A", "C", "B", "D"])  # A: 1.0, C: 0.5, B: 0.0, D: -1.0
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    assert [[p for p, _ in row] for row in s.ranked(q, 3)] == [["a1", "a2", "c1"]]
    got = s.ranked(q, 10)[0]
    assert [p for p, _ in got] == ["a1", "a2", "c1", "c2", "c3", "b1", "d1"]
    np.testing.assert_allclose([x for _, x in got], [1, 1, 0.5, 0.5, 0.5, 0, -1], atol=1e-6)
    # meerqat's score - ε·rank: the n-th passage of the list is its article's score minus n·ε
    np.testing.assert_allclose([x for _, x in got], np.array([1, 1, 0.5, 0.5, 0.5, 0, -1]) - PASSAGE_EPSILON *
                               np.arange(7), rtol=0, atol=1e-12)
    hits = s.search_vectors(q, 2)[0]
    assert hits[1].snippet == "second passage of A" and s.image_entry_id("c2") is None


def test_several_images_per_article_take_the_max(tmp_path: Path) -> None:
    # Images C#0 (1.0), A#0 (0.5), C#1 (0.0), A#1 (-1.0): C scores 1.0 (its best image), A 0.5.
    s = hand_searcher(tmp_path, ["C#0", "A#0", "C#1", "A#1"], sep="#")
    got = s.ranked(np.array([[1.0, 0.0]], dtype=np.float32), 5)[0]
    assert [p for p, _ in got] == ["c1", "c2", "c3", "a1", "a2"]
    np.testing.assert_allclose([x for _, x in got], [1.0, 1.0, 1.0, 0.5, 0.5], atol=1e-6)


def test_articles_without_passages_make_the_searcher_look_further(tmp_path: Path) -> None:
    s = hand_searcher(tmp_path, ["X", "Y", "A", "B"])  # X and Y have no passages
    got = s.ranked(np.array([[1.0, 0.0]], dtype=np.float32), 3)[0]
    assert [p for p, _ in got] == ["a1", "a2", "b1"]


def test_passage_order_survives_the_trec_file(tmp_path: Path) -> None:
    """Passages of one article keep their file order through write_trec_run → read_trec_run → ranx ranking, even
    when their ids sort the other way as strings ('998' after '1000')."""
    vectors = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    index = build_index(vectors, ["A", "B"], IndexConfig(factory="Flat"))
    passages = write_jsonl(tmp_path / "p.jsonl", [{"id": "998", "article": "A"}, {"id": "1000", "article": "A"},
                                                  {"id": "5", "article": "B"}])
    ranked = Searcher(index, {}, None, PassageMap.from_jsonl(passages)).ranked(np.array([[1.0, 0.1]]), 3)[0]
    assert [p for p, _ in ranked] == ["998", "1000", "5"]
    assert len({s for _, s in ranked}) == 3  # no ties left for a sort to break
    write_trec_run(tmp_path / "run.trec", {"q": dict(ranked)})
    lines = (tmp_path / "run.trec").read_text().split("\n")
    assert [line.split()[2] for line in lines if line] == ["998", "1000", "5"]
    back = read_trec_run(tmp_path / "run.trec")["q"]
    assert sorted(back, key=back.__getitem__, reverse=True) == ["998", "1000", "5"]
    assert back == dict(ranked)  # exact scores: nothing rounded away


def test_bad_passage_files_are_format_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'article'"):
        PassageMap.from_jsonl(write_jsonl(tmp_path / "p.jsonl", [{"id": "p1"}]))
    with pytest.raises(ValueError, match="duplicate passage id"):
        PassageMap.from_jsonl(write_jsonl(tmp_path / "p.jsonl", [{"id": "p", "article": "A"}] * 2))


def test_cli_batch_maps_kb_hits_to_passages(world: World, tmp_path: Path) -> None:
    kb_ids = [json.loads(line)["id"] for line in world.kb.read_text().splitlines()]
    passages = write_jsonl(tmp_path / "passages.jsonl", [
        {"id": f"{kb}_p{n}", "wiki": kb, "text": f"passage {n} of {kb}"} for kb in kb_ids for n in range(2)])
    args = ["--index", str(world.index), "--encoder", "clip-image", "--queries", str(world.queries),
            "--query-features", str(world.features("scenes")), "--no-progress", "-k"]
    assert search_cli.main([*args, "6", "--out", str(tmp_path / "articles.trec")]) == 0
    assert search_cli.main([*args, "12", "--out", str(tmp_path / "passages.trec"), "--passages", str(passages),
                            "--article-field", "wiki"]) == 0
    articles, mapped = read_trec_run(tmp_path / "articles.trec"), read_trec_run(tmp_path / "passages.trec")
    for qid, docs in articles.items():
        expected = {f"{kb}_p{n}": score for kb, score in docs.items() for n in range(2)}
        assert mapped[qid].keys() == expected.keys()
        np.testing.assert_allclose([mapped[qid][p] for p in expected], list(expected.values()), atol=1e-5)
