"""KB / queries JSONL readers (validation with file:line errors, lenient mode with counts), writers, TREC run and
qrels round trips, qrels from a queries file."""

from __future__ import annotations

import json

import pytest

from retrieval.formats import (FormatError, KBEntry, Query, ReadStats, load_qrels, qrels_from_queries, read_kb,
                               read_queries, read_trec_qrels, read_trec_run, write_jsonl, write_trec_qrels,
                               write_trec_run)


def lines(path, *objs) -> None:
    path.write_text("\n".join(o if isinstance(o, str) else json.dumps(o) for o in objs) + "\n", encoding="utf-8")


def test_kb_round_trip_and_validation(tmp_path) -> None:
    entries = [KBEntry("a", "Éiffel", "tower ✓", image="img/a"), KBEntry("b", "", "")]
    write_jsonl(tmp_path / "kb.jsonl", entries)
    assert read_kb(tmp_path / "kb.jsonl") == entries
    lines(tmp_path / "bad.jsonl", {"id": "a", "title": "t", "text": "x"}, {"id": "b", "text": "x"})
    with pytest.raises(FormatError, match=r"bad\.jsonl:2: missing field 'title'"):
        read_kb(tmp_path / "bad.jsonl")


def test_queries_validation_messages(tmp_path) -> None:
    good = {"id": "q1", "question": "who?", "image": "i1", "positives": ["a"], "hard_negatives": ["b"]}
    cases = [
        ({**good, "positives": "a"}, "field 'positives' must be a list of KB ids"),
        ({k: v for k, v in good.items() if k != "positives"}, "missing field 'positives'"),
        ({**good, "question": "  "}, "field 'question' is empty"),
        ({**good, "image": 3}, "field 'image' must be a string"),
        ("[1, 2]", "expected a JSON object"),
        ("{not json", "invalid JSON"),
    ]
    for bad, message in cases:
        lines(tmp_path / "q.jsonl", good, bad)
        with pytest.raises(FormatError, match=rf"q\.jsonl:2: .*{message}"):
            read_queries(tmp_path / "q.jsonl")
    lines(tmp_path / "dup.jsonl", good, good)
    with pytest.raises(FormatError, match=r"dup\.jsonl:2: duplicate id 'q1' \(first seen at .*dup\.jsonl:1\)"):
        read_queries(tmp_path / "dup.jsonl")


def test_lenient_reading_skips_and_counts(tmp_path) -> None:
    good = {"id": "q1", "question": "who?", "image": None, "positives": []}
    lines(tmp_path / "q.jsonl", good, "{oops", "", {**good, "id": 7, "positives": [1, "b"]}, {"id": "x"})
    stats = ReadStats()
    queries = read_queries(tmp_path / "q.jsonl", skip_bad=True, stats=stats)
    assert [q.id for q in queries] == ["q1", "7"] and queries[1].positives == ["1", "b"]
    assert (stats.read, stats.skipped) == (2, 2)
    assert "q.jsonl:2: invalid JSON" in stats.reasons[0] and "q.jsonl:5: missing field 'question'" in stats.reasons[1]


def test_trec_run_and_qrels_round_trip(tmp_path) -> None:
    run = {"q1": {"d1": 0.5, "d2": 1.25, "d3": -3.0}, "q2": {"d9": 2.0}}
    write_trec_run(tmp_path / "r.trec", run, tag="test")
    text = (tmp_path / "r.trec").read_text().splitlines()
    assert text[0] == "q1 Q0 d2 1 1.25 test" and text[2] == "q1 Q0 d3 3 -3 test"
    assert read_trec_run(tmp_path / "r.trec") == run
    qrels = {"q1": {"d1": 1, "d2": 2}, "q2": {"d9": 1}}
    write_trec_qrels(tmp_path / "qrels.txt", qrels)
    (tmp_path / "qrels.txt").write_text((tmp_path / "qrels.txt").read_text() + "q3 0 d7 0\n")  # not relevant
    assert read_trec_qrels(tmp_path / "qrels.txt") == qrels
    assert load_qrels(tmp_path / "qrels.txt") == qrels
    (tmp_path / "bad.trec").write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d1 x\n")
    with pytest.raises(FormatError, match=r"bad\.trec:2: expected 6 columns"):
        read_trec_run(tmp_path / "bad.trec")
    (tmp_path / "dup.trec").write_text("q1 Q0 d1 1 0.5 t\nq1 Q0 d1 2 0.4 t\n")
    with pytest.raises(FormatError, match=r"dup\.trec:2: document 'd1' listed twice"):
        read_trec_run(tmp_path / "dup.trec")


def test_qrels_from_queries_file(tmp_path) -> None:
    queries = [Query("q1", "a?", "i", ["d1", "d2"]), Query("q2", "b?", None, [], ["d3"])]
    write_jsonl(tmp_path / "q.jsonl", queries)
    assert read_queries(tmp_path / "q.jsonl") == queries
    assert qrels_from_queries(queries) == {"q1": {"d1": 1, "d2": 1}}
    assert load_qrels(tmp_path / "q.jsonl") == {"q1": {"d1": 1, "d2": 1}}


def test_trec_run_scores_are_written_exactly(tmp_path) -> None:
    """Scores that differ in the 8th significant digit (cosines of near-duplicates) must not tie in the file."""
    run = {"q": {"a": 0.123456781, "b": 0.123456789, "c": 1e-12, "d": -0.5}}
    write_trec_run(tmp_path / "r.trec", run)
    back = read_trec_run(tmp_path / "r.trec")
    assert back == run
    assert [line.split()[2] for line in (tmp_path / "r.trec").read_text().splitlines()] == ["b", "a", "c", "d"]
