"""ViQuAE late fusion: default minimum, global z-score and weighted sum against a hand-worked example; ranx's
weight search agrees with an exhaustive evaluation; the CLI fits and applies weights."""

from __future__ import annotations

import json
import math

import pytest

from retrieval.formats import read_trec_run, write_trec_qrels, write_trec_run
from retrieval.fusion import default_minimum, fuse, global_zscore, prepare, tune_weights
from vlt5r.drivers.fuse import main as fusion_main
from retrieval.metrics import evaluate_run

RUN_A = {"q1": {"d1": 3.0, "d2": 1.0}, "q2": {"d3": 2.0}}
RUN_B = {"q1": {"d2": 0.5, "d4": 0.1}, "q2": {"d3": 0.9, "d5": 0.3}}


def test_default_minimum_fills_union_with_run_minimum() -> None:
    a, b = default_minimum([RUN_A, RUN_B])
    assert a == {"q1": {"d1": 3.0, "d2": 1.0, "d4": 1.0}, "q2": {"d3": 2.0, "d5": 2.0}}
    assert b == {"q1": {"d1": 0.1, "d2": 0.5, "d4": 0.1}, "q2": {"d3": 0.9, "d5": 0.3}}


def test_fusion_equals_hand_worked_example() -> None:
    # Run A after default minimum: 3, 1, 1 | 2, 2 → mean 1.8, var (1.44+.64+.64+.04+.04)/5 = .56, std .748331
    # Run B after default minimum: .1, .5, .1 | .9, .3 → mean .38, var (.0784+.0144+.0784+.2704+.0064)/5 = .0896
    sa, sb = math.sqrt(0.56), math.sqrt(0.0896)
    za = {3.0: 1.2 / sa, 1.0: -0.8 / sa, 2.0: 0.2 / sa}
    zb = {0.1: -0.28 / sb, 0.5: 0.12 / sb, 0.9: 0.52 / sb, 0.3: -0.08 / sb}
    assert za[3.0] == pytest.approx(1.603567, abs=1e-6) and zb[0.9] == pytest.approx(1.737198, abs=1e-6)
    fused = fuse([RUN_A, RUN_B], [0.3, 0.7])
    hand = {
        "q1": {"d1": 0.3 * za[3.0] + 0.7 * zb[0.1],  # -0.173720: B never retrieved d1 → B's q1 minimum
               "d2": 0.3 * za[1.0] + 0.7 * zb[0.5],  # -0.040089
               "d4": 0.3 * za[1.0] + 0.7 * zb[0.1]},  # -0.975504: A never retrieved d4 → A's q1 minimum
        "q2": {"d3": 0.3 * za[2.0] + 0.7 * zb[0.9],  # 1.296217
               "d5": 0.3 * za[2.0] + 0.7 * zb[0.3]},  # -0.106904
    }
    for q in hand:
        assert fused[q] == pytest.approx(hand[q], abs=1e-9)
    assert fused["q1"]["d1"] == pytest.approx(-0.173720, abs=1e-6)
    assert max(fused["q1"], key=fused["q1"].get) == "d2"  # run A alone ranks d1 first


def test_zscore_is_over_the_whole_run_not_per_query() -> None:
    z = global_zscore({"q1": {"a": 1.0, "b": 2.0}, "q2": {"c": 3.0, "d": 4.0}})
    assert z["q1"]["a"] == pytest.approx((1 - 2.5) / math.sqrt(1.25))  # per-query z-scores would give -1
    assert sum(v for docs in z.values() for v in docs.values()) == pytest.approx(0.0)


def test_ranx_wsum_agrees_on_prepared_runs() -> None:
    from ranx import Run, fuse as ranx_fuse

    prepared = prepare([RUN_A, RUN_B])
    ours = fuse([RUN_A, RUN_B], [0.4, 0.6])
    theirs = ranx_fuse([Run(p) for p in prepared], norm=None, method="wsum", params={"weights": [0.4, 0.6]})
    for q, docs in ours.items():
        assert dict(theirs.run[q]) == pytest.approx(docs, abs=1e-9)


def _dev_split() -> tuple[dict, dict, dict]:
    """Each run puts its own noise document first and the relevant one second; they agree only on the relevant one.
    With default minimum, weights in (0.25, 0.75) rank it first everywhere (MRR 1 vs 0.5 for either run)."""
    qrels, a, b = {}, {}, {}
    for i in range(20):
        q, rel = f"q{i}", f"rel{i}"
        qrels[q] = {rel: 1}
        a[q] = {f"noiseA{i}": 3.0, rel: 2.5, f"x{i}": 1.0}
        b[q] = {f"noiseB{i}": 0.3, rel: 0.25, f"y{i}": 0.1}  # another scale: normalisation makes them comparable
    return qrels, a, b


def test_tuned_weights_are_the_best_of_the_grid() -> None:
    qrels, a, b = _dev_split()
    tuned = tune_weights([a, b], qrels, metric="mrr@10", step=0.1)
    grid = [(round(w, 1), round(1 - w, 1)) for w in [i / 10 for i in range(11)]]
    scores = {w: evaluate_run(fuse([a, b], w), qrels, ["mrr@10"])["mrr@10"] for w in grid}
    assert tuned["dev_score"] == pytest.approx(max(scores.values()))
    assert scores[tuple(tuned["weights"])] == pytest.approx(max(scores.values()))
    assert tuned["dev_score"] == 1.0 and scores[(1.0, 0.0)] == scores[(0.0, 1.0)] == 0.5  # fusion beats either run
    assert 0.25 < tuned["weights"][0] < 0.75
    without_defmin = tune_weights([a, b], qrels, metric="mrr@10", step=0.1, defmin=False)
    assert without_defmin["dev_score"] < 1.0  # missing docs at 0 (= the run mean) favour the noise documents


def test_fusion_cli_fit_then_apply(tmp_path) -> None:
    qrels, a, b = _dev_split()
    write_trec_qrels(tmp_path / "qrels.txt", qrels)
    write_trec_run(tmp_path / "a.trec", a)
    write_trec_run(tmp_path / "b.trec", b)
    runs = ["--runs", str(tmp_path / "a.trec"), str(tmp_path / "b.trec")]
    assert fusion_main(["fit", "--qrels", str(tmp_path / "qrels.txt"), *runs, "--out", str(tmp_path / "w.json")]) == 0
    weights = json.loads((tmp_path / "w.json").read_text())
    assert weights["dev_score"] > max(weights["single_run_scores"].values())
    assert fusion_main(["apply", *runs, "--weights", str(tmp_path / "w.json"), "--out", str(tmp_path / "f.trec"),
                        "--k", "2"]) == 0
    fused = read_trec_run(tmp_path / "f.trec")
    assert len(fused) == 20 and all(len(d) == 2 for d in fused.values())
    assert fusion_main(["apply", *runs, "--weights", "0.5,x", "--out", str(tmp_path / "g.trec")]) == 2  # usage


def test_fit_reports_single_runs_and_fusion_on_the_same_queries() -> None:
    """Two judged queries no run answers: single-run and fused scores must both leave them out (the old CLI scored
    the single runs over all judged queries, 0 for these two, and the fusion over the answered ones only)."""
    qrels, a, b = _dev_split()
    qrels = {**qrels, "lost1": {"z": 1}, "lost2": {"z": 1}}
    tuned = tune_weights([a, b], qrels, metric="mrr@10", step=0.1, names=["a.trec", "b.trec"])
    answered = {q: d for q, d in qrels.items() if q in a or q in b}
    assert tuned["dev_queries"] == len(answered) == len(qrels) - 2
    singles = tuned["single_run_scores"]
    assert singles == pytest.approx({"a.trec": evaluate_run(a, answered, ["mrr@10"])["mrr@10"],
                                     "b.trec": evaluate_run(b, answered, ["mrr@10"])["mrr@10"]})
    assert singles == pytest.approx({"a.trec": 0.5, "b.trec": 0.5})  # hand value on the answered queries
    fused = fuse([a, b], tuned["weights"])
    assert tuned["dev_score"] == pytest.approx(evaluate_run(fused, answered, ["mrr@10"])["mrr@10"]) == 1.0
