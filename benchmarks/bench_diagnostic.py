"""Does the joint encoder use the question? Quality and step time on the diagnostic tasks (issue 10).

    python benchmarks/bench_diagnostic.py [--tasks mixed relational] [--steps 600 900]
        [--variants recipe batch ...] [--threads 2] [--json out.json]

Every run is ``vlt5r train`` with the shipped random-init recipe (``configs/joint_random_small.json``, the one
``scripts/train_joint_encoder.sh`` and the diagnostic test use) on a diagnostic task of
:mod:`retrieval.demo.diagnostic` with its synthetic CLIP-like features, plus the variant's flags:

* ``recipe``   — the recipe as shipped (``--negatives all``: each query scored against the whole KB);
* ``batch``    — ``--negatives batch``: the batch's positives + sampled hard negatives (the old default);
* ``batch+kb`` — ``--negatives batch --kb-negatives 32``: plus 32 random KB rows per step;
* ablations of the recipe: ``pool-mean`` / ``pool-first`` (pooling), ``dropout0``, ``tau-fixed`` (temperature
  0.05, not learned), ``tau-fixed-0.1``, ``lr-backbone-1e-4`` (the backbone at a tenth of the other groups' LR),
  ``zero-boxes`` (no grid-cell boxes), ``no-fc-token``.

Tasks: ``mixed`` = half position / half relational questions, ``relational`` = two-hop relational questions only
(the harder one). Each run reports the held-out test split's MRR@10 and R@1 of the joint encoder, of the CLIP
baselines and — for ``recipe`` and ``batch`` — of the generic reference trained on the same inputs and budget
(``--no-reference`` elsewhere, to save time), the shuffled-question / shuffled-image diagnostics, and the joint
encoder's median time per optimizer step (from ``log.jsonl``: forward + loss + backward + step, data included).
``--kb-sizes`` adds what KB-wide negatives cost on a large KB, where the diagnostic task's 64 entries say
nothing: the loss part of one step (candidates, scores, loss, backward into the queries) for a batch of 32
queries of width 512 against the whole KB of N entries (``--negatives all``) vs the batch pool of 128 rows
(``--negatives batch``), beside the encoder step measured above. Numbers go to ``docs/training.md`` §10.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RECIPE = REPO / "configs" / "joint_random_small.json"

from retrieval.demo.diagnostic import DiagnosticTaskConfig, prepare_training_run  # noqa: E402

TASKS = {"mixed": DiagnosticTaskConfig(train_scenes=400, dev_scenes=30, test_scenes=60, position_share=0.5),
         "relational": DiagnosticTaskConfig(train_scenes=600, dev_scenes=50, test_scenes=100, position_share=0.0)}
VARIANTS: dict[str, list[str]] = {
    "recipe": [],
    "batch": ["--negatives", "batch"],
    "batch+kb": ["--negatives", "batch", "--kb-negatives", "32"],
    "pool-mean": ["--pooling", "mean"],
    "pool-first": ["--pooling", "first"],
    "dropout0": ["--dropout", "0"],
    "tau-fixed": ["--no-learn-temperature"],
    "tau-fixed-0.1": ["--no-learn-temperature", "--temperature", "0.1"],
    "lr-backbone-1e-4": ["--lr-backbone", "1e-4"],
    "zero-boxes": ["--boxes", "zero"],
    "no-fc-token": ["--no-fc-token"],
}
WITH_REFERENCE = {"recipe", "batch"}
ROWS = ("clip_image", "clip_text", "joint", "joint_shuffled_questions", "joint_shuffled_images", "generic_reference")


def run_variant(data_flags: list[str], variant: str, steps: int, threads: int, out: Path) -> dict:
    from retrieval.training import train
    from vlt5r.drivers.train import parse_config

    flags = ["--config", str(RECIPE), *data_flags, *VARIANTS[variant], "--max-steps", str(steps), "--epochs", "1000",
             "--threads", str(threads), "--no-progress", "--no-save-init", "--log-every", "1", "--out", str(out)]
    if variant not in WITH_REFERENCE:
        flags.append("--no-reference")
    cfg, _ = parse_config(flags)
    t0 = time.perf_counter()
    table = train(cfg).test
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    step_ms = [1000 * r["step_time"] for r in records if r.get("kind") == "train"]
    rows = {name: {"mrr@10": round(table[name]["mrr@10"], 4), "r@1": round(table[name]["recall@1"], 4)}
            for name in ROWS if name in table}
    return {"rows": rows, "step_ms_median": round(statistics.median(step_ms[5:] or step_ms), 2),
            "wall_s": round(wall, 1), "flags": VARIANTS[variant]}


def loss_step_ms(n_kb: int, mode: str, batch: int = 32, dim: int = 512, pool: int = 128, reps: int = 9) -> float:
    """Fastest of ``reps`` timings (ms; robust on a shared machine) of the loss part of one training step, as
    ``RetrievalTask.training_forward`` does it."""
    import torch

    from retrieval.losses import dpr_loss, kb_candidates

    gen = torch.Generator().manual_seed(0)
    kb = torch.nn.functional.normalize(torch.randn(n_kb, dim, generator=gen), dim=-1)
    positives = [[int(r)] for r in torch.randint(n_kb, (batch,), generator=gen)]
    pool_rows = list(dict.fromkeys([p[0] for p in positives] + torch.randperm(n_kb, generator=gen).tolist()[:pool]))
    pool_rows = pool_rows[:max(pool, batch)]  # the positives first, then hard-negative-like rows
    times = []
    for _ in range(reps):
        queries = torch.randn(batch, dim, requires_grad=True)
        t0 = time.perf_counter()
        rows, mask = kb_candidates(positives, [] if mode == "all" else pool_rows, n_kb, mode)
        candidates = kb if mode == "all" else kb[rows]
        dpr_loss(queries, candidates, mask, 0.05, candidates_normalized=True).backward()
        times.append(1000 * (time.perf_counter() - t0))
    return round(min(times), 3)


def markdown(results: dict) -> str:
    lines = []
    for task, by_variant in results.items():
        lines += [f"\n{task}:", "| variant | joint | q-shuffled | img-shuffled | reference | clip_image | clip_text "
                  "| joint / reference | step ms |", "|---|---|---|---|---|---|---|---|---|"]
        for variant, r in by_variant.items():
            rows = r["rows"]

            def cell(name: str) -> str:
                return f"{rows[name]['mrr@10']:.3f} ({rows[name]['r@1']:.2f})" if name in rows else "–"

            ratio = (f"{rows['joint']['mrr@10'] / rows['generic_reference']['mrr@10']:.2f}"
                     if "generic_reference" in rows else "–")
            lines.append(f"| {variant} | {cell('joint')} | {cell('joint_shuffled_questions')} | "
                         f"{cell('joint_shuffled_images')} | {cell('generic_reference')} | {cell('clip_image')} | "
                         f"{cell('clip_text')} | {ratio} | {r['step_ms_median']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", nargs="*", default=["mixed", "relational"], choices=sorted(TASKS))
    p.add_argument("--steps", nargs="+", type=int, default=[600, 900], help="optimizer steps, one per task")
    p.add_argument("--variants", nargs="+", default=["recipe", "batch"], choices=list(VARIANTS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--kb-sizes", nargs="*", type=int, default=[], help="e.g. 64 10000 100000 1000000")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if args.kb_sizes:
        import torch

        torch.set_num_threads(args.threads)
        cost = {n: {mode: loss_step_ms(n, mode) for mode in ("all", "batch")} for n in args.kb_sizes}
        print("| KB entries | loss part, --negatives all (ms) | loss part, --negatives batch (ms) |\n|---|---|---|")
        for n, c in cost.items():
            print(f"| {n} | {c['all']} | {c['batch']} |")
        if args.json:
            args.json.with_suffix(".kb.json").write_text(json.dumps(cost, indent=2))
    steps = dict(zip(args.tasks, args.steps + args.steps[-1:] * len(args.tasks)))
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            data_flags = prepare_training_run(Path(tmp) / task, TASKS[task])
            results[task] = {}
            for variant in args.variants:
                r = run_variant(data_flags, variant, steps[task], args.threads, Path(tmp) / task / f"run-{variant}")
                results[task][variant] = r
                print(f"{task} {variant}: {json.dumps(r)}", flush=True)
                if args.json:
                    args.json.write_text(json.dumps({"steps": steps, "results": results}, indent=2))
    print(markdown(results))


if __name__ == "__main__":
    main()
