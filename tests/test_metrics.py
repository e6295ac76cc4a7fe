"""ranx metrics against hand computation on a small run, and the evaluate CLI (tables, JSON, significance)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vlt5r.drivers.evaluate import main as evaluate_main
from retrieval.formats import Query, write_jsonl, write_trec_qrels, write_trec_run
from retrieval.metrics import (NO_CUTOFF, RANX_METRICS, canonical_metric, compare_runs, evaluate_run,
                               metric_depth)

REPO = Path(__file__).resolve().parents[1]

# q1 relevant {a, b}; q2 relevant {c}; q3 relevant {z} (never retrieved); q4 is not judged (ignored)
QRELS = {"q1": {"a": 1, "b": 1}, "q2": {"c": 1}, "q3": {"z": 1}}
RUN = {
    "q1": {"x": 0.9, "a": 0.8, "y": 0.7, "b": 0.6},  # ranks: x a y b  → relevant at 2 and 4
    "q2": {"c": 0.5, "w": 0.4},  # relevant at 1
    "q3": {"u": 0.3},  # nothing relevant
    "q4": {"a": 1.0},
}


def test_metrics_equal_hand_computation() -> None:
    got = evaluate_run(RUN, QRELS, ["mrr@10", "P@2", "R@2", "recall@4", "success@1", "hit_rate@3", "ndcg@4",
                                    "hits@4", "hits@1"])
    log2 = math.log2
    ndcg_q1 = (1 / log2(3) + 1 / log2(5)) / (1 / log2(2) + 1 / log2(3))  # gains at ranks 2, 4; ideal at 1, 2
    hand = {
        "mrr@10": (1 / 2 + 1 / 1 + 0) / 3,
        "precision@2": (1 / 2 + 1 / 2 + 0) / 3,
        "recall@2": (1 / 2 + 1 + 0) / 3,
        "recall@4": (2 / 2 + 1 + 0) / 3,
        "hit_rate@1": (0 + 1 + 0) / 3,
        "hit_rate@3": (1 + 1 + 0) / 3,
        "ndcg@4": (ndcg_q1 + 1.0 + 0) / 3,
        "hits@4": (2 + 1 + 0) / 3,  # ranx hits: the NUMBER of relevant documents in the top k
        "hits@1": (0 + 1 + 0) / 3,
    }
    assert got == pytest.approx(hand, abs=1e-9)


def test_queries_missing_from_the_run_score_zero() -> None:
    partial = {"q2": RUN["q2"]}
    assert evaluate_run(partial, QRELS, ["mrr@10"])["mrr@10"] == pytest.approx(1 / 3)
    per_query = evaluate_run(partial, QRELS, ["mrr@10"], per_query=True)["mrr@10"]
    assert per_query == {"q1": 0.0, "q2": 1.0, "q3": 0.0}


def test_metric_names() -> None:
    assert canonical_metric("MRR@10") == "mrr@10"
    assert canonical_metric("hits@5") == "hits@5"  # ranx's count of relevant hits, not the hit rate
    assert canonical_metric("success@5") == "hit_rate@5"
    assert canonical_metric("ndcg") == "ndcg"
    with pytest.raises(ValueError, match="unknown metric 'bleu@4'"):
        canonical_metric("bleu@4")
    with pytest.raises(ValueError, match="ambiguous.*hit_rate@k.*hits@k"):
        canonical_metric("hit@10")


@pytest.mark.parametrize("metric", [*(f"{m}@3" for m in RANX_METRICS if m not in NO_CUTOFF), *RANX_METRICS])
def test_every_name_is_ranx_own(metric: str) -> None:
    """Each accepted name means exactly what ranx computes under that name (no renaming on the way)."""
    from ranx import Qrels as RanxQrels, Run as RanxRun, evaluate

    judged = RanxQrels(QRELS)
    reference = evaluate(judged, RanxRun({q: RUN[q] for q in QRELS}), metric)
    assert evaluate_run(RUN, QRELS, [metric])[canonical_metric(metric)] == pytest.approx(float(reference))


def test_every_metric_name_is_documented() -> None:
    doc = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
    for name in [*RANX_METRICS, "p", "r", "rr", "success", "hit"]:
        assert f"`{name}" in doc, name
    assert "docs/metrics.md" in (REPO / "docs" / "retrieval.md").read_text(encoding="utf-8") or \
        "metrics.md" in (REPO / "docs" / "retrieval.md").read_text(encoding="utf-8")


def test_metric_depth_reads_whole_run_for_metrics_without_cutoff() -> None:
    assert metric_depth(["mrr", "recall@1"], 500) == 500
    assert metric_depth(["ndcg"], 500) == 500
    assert metric_depth(["mrr@10", "recall@1", "P@5"], 500) == 10
    assert metric_depth(["recall@1000"], 500) == 500


def test_mrr_at_metric_depth_equals_full_ranking_mrr() -> None:
    """['mrr', 'recall@1'] on an exact index: MRR over the run searched to metric_depth equals MRR over the full
    ranking (hand-worked: the relevant item is at rank 3 → MRR 1/3), not P@1 (0)."""
    from retrieval.indexing import IndexConfig, build_index

    kb = np.array([[1.0, 0.0], [0.9, 0.1], [0.6, 0.4], [0.0, 1.0]], dtype=np.float32)
    index = build_index(kb, ["a", "b", "c", "d"], IndexConfig(factory="Flat", normalize=False))
    metrics = ["mrr", "recall@1"]
    scores, ids = index.search(np.array([[1.0, 0.0]], dtype=np.float32), metric_depth(metrics, len(index)))
    run = {"q": {str(d): float(x) for d, x in zip(ids[0], scores[0])}}
    got = evaluate_run(run, {"q": {"c": 1}}, metrics)
    assert got == pytest.approx({"mrr": 1 / 3, "recall@1": 0.0})


def test_compare_runs_reports_significance() -> None:
    rng = np.random.default_rng(0)
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(60)}
    good = {q: {f"d{i}": 1.0, "noise": 0.5} for i, q in enumerate(qrels)}  # always rank 1
    bad = {q: {"noise": 1.0, **({f"d{i}": 0.5} if rng.random() < 0.3 else {})} for i, q in enumerate(qrels)}
    out = compare_runs({"good": good, "bad": bad}, qrels, ["mrr@10"], stat_test="student")
    assert out["means"]["good"]["mrr@10"] == 1.0 and out["means"]["bad"]["mrr@10"] < 0.3
    assert out["p_values"]["good"]["bad"]["mrr@10"] < 0.01
    assert out["win_tie_loss"]["good"]["bad"]["mrr@10"]["L"] == 0
    assert "good" in out["table"] and "MRR@10" in out["table"]


def test_evaluate_cli(tmp_path) -> None:
    queries = [Query(id=q, question="?", image=None, positives=list(d)) for q, d in QRELS.items()]
    write_jsonl(tmp_path / "q.jsonl", queries)
    write_trec_qrels(tmp_path / "qrels.txt", QRELS)
    write_trec_run(tmp_path / "a.trec", RUN)
    write_trec_run(tmp_path / "b.trec", {"q1": {"a": 1.0}, "q2": {"c": 1.0}, "q3": {"z": 1.0}})
    for qrels in ("q.jsonl", "qrels.txt"):
        out = tmp_path / f"{qrels}.json"
        assert evaluate_main(["--qrels", str(tmp_path / qrels), "--runs", str(tmp_path / "a.trec"),
                              str(tmp_path / "b.trec"), "--metrics", "mrr@10", "r@2", "--json", str(out)]) == 0
        result = json.loads(out.read_text())
        assert result["means"]["a"]["mrr@10"] == pytest.approx(0.5)
        assert result["means"]["b"]["recall@2"] == pytest.approx((1 / 2 + 1 + 1) / 3)
    script = str(REPO / "retrieval" / "evaluate.py")
    proc = subprocess.run([sys.executable, script, "--qrels", str(tmp_path / "q.jsonl"), "--runs",
                           str(tmp_path / "a.trec"), "--metrics", "bleu"], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.startswith("error: unknown metric") and "Traceback" not in proc.stderr
