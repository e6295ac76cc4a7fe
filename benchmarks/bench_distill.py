"""Distillation step: running the teacher's text tower on every batch vs reading its pre-computed embeddings from a
feature file (``--teacher-features``, made once by the extraction pipeline).

    python benchmarks/bench_distill.py [--teacher vit-b-32|tiny] [--batch 64] [--steps 10] [--threads 2] [--json out]

One random-weight OpenAI-format teacher of the chosen shape (``vit-b-32``: the released ViT-B/32's text tower, width
512, 12 layers; the image tower is never run here) and one small XLM-R-shaped student (hidden 256, 4 layers, 4
heads) on the same parallel sentences; each way builds its :class:`multilingual.training.DistillTask` through
``build_task`` and times the engine's step on it (``training_forward`` + backward + AdamW step) over the same
batches, after 2 warm-up steps. Reported: median step time, the setup (``build_task``: loading the models and, for the
feature file, writing it once with ``vlt5r extract --texts``'s pipeline over the distinct English sentences), and
the first-step losses of both (equal).
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
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORDS = ("red blue green yellow purple orange black white small large round square ring cross star circle dog cat "
         "bird horse house tree car boat on under near left right of the a with two three").split()


def corpus(n: int) -> list[tuple[str, str]]:
    """``n`` distinct English sentences of 6–12 words and a reversed copy as their "translation"."""
    import numpy as np

    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        words = [WORDS[int(j)] for j in rng.integers(0, len(WORDS), int(rng.integers(6, 13)))]
        english = " ".join(words) + f" {i}"
        out.append((english, " ".join(reversed(english.split()))))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", default="vit-b-32", choices=("vit-b-32", "tiny"))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    import torch

    import engine
    from feature_extraction.tiny import TINY_VIT, VIT_B32, make_hf_text_encoder, make_openai_clip
    from foundations.config import from_dict
    from multilingual.config import DistillConfig
    from multilingual.training import build_task

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_distill_"))
    pairs = corpus(args.batch * (args.steps + 2))
    (work / "pairs.jsonl").write_text("".join(json.dumps({"english": e, "foreign": f}) + "\n" for e, f in pairs))
    teacher = make_openai_clip(work / "teacher.pt", VIT_B32 if args.teacher == "vit-b-32" else TINY_VIT)
    student = make_hf_text_encoder(work / "student", [f for _, f in pairs], hidden_size=256, layers=4, heads=4,
                                   intermediate_size=1024, max_length=77)

    def task(features: Path | None) -> tuple[object, float]:
        cfg = from_dict(DistillConfig, {
            "model": {"teacher": str(teacher), "student": str(student)},
            "data": {"train_data": [str(work / "pairs.jsonl")], "batch_size": args.batch,
                     "teacher_features": str(features) if features else None},
            "loop": {"out": str(work / "run"), "device": "cpu"}})
        start = time.perf_counter()
        built = build_task(cfg, engine.DistEnv())
        return built, time.perf_counter() - start

    results = {}
    for name, features in (("teacher runs", None), ("teacher features", work / "teacher_en.h5")):
        torch.manual_seed(0)  # the same student initialisation and dropout masks both ways
        built, setup = task(features)
        torch.manual_seed(1)
        built.train()
        optimizer = torch.optim.AdamW([p for g in built.param_groups() for p in g["params"]], lr=1e-4)
        times, first = [], None
        for i, batch in enumerate(built.train_batches(0, 0, args.steps + 2)):
            start = time.perf_counter()
            loss, _ = built.training_forward(batch)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if i >= 2:
                times.append(time.perf_counter() - start)
            first = loss.item() if first is None else first
        results[name] = {"median_step_ms": 1000 * statistics.median(times), "setup_s": setup, "first_loss": first}
        print(f"{name:>16}: median step {results[name]['median_step_ms']:.0f} ms, setup {setup:.1f} s, first loss "
              f"{first:.6f}", flush=True)
    ratio = results["teacher runs"]["median_step_ms"] / results["teacher features"]["median_step_ms"]
    print(f"speed-up per step: {ratio:.2f}x  (teacher {args.teacher}, batch {args.batch}, {args.threads} threads)")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **results,
                                         "speedup": ratio}, indent=2))


if __name__ == "__main__":
    main()
