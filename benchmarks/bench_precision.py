"""How far ``--precision bf16`` / ``fp16`` move ``fc`` and ``grid`` from the fp32 result, per backbone family.

    python benchmarks/bench_precision.py                     # CPU: bf16 vs fp32
    python benchmarks/bench_precision.py --device cuda       # GPU: fp16 and bf16 vs fp32

Each model extracts the same photos (``--images`` 500x375 JPEGs) through the real pipeline (``extract()``) once per
precision, stored as float32; the table gives, against the fp32 file, the largest absolute difference and the
smallest per-row cosine, for ``fc`` and for ``grid`` (each row's whole (T, C) grid as one vector), with the largest
|value| of the fp32 result for scale. The models are randomly initialised in the real architectures (ViT-B/32 and
RN101 shapes; tiny transformers and CLIP-family ones): no released weights are downloaded here, so the numbers are
those of random weights.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

import numpy as np

from bench_extract import REPO, ensure_images  # noqa: I001  (sibling module; puts the repo on sys.path)
from feature_extraction.config import ExtractConfig
from feature_extraction.extract import extract
from feature_extraction.store import H5FeatureStore
from feature_extraction.tiny import RN101, VIT_B32, make_hf_clip, make_openai_clip


def models(workdir: Path) -> dict[str, str]:
    """{label: --backbone} of one model per family, built once into ``workdir``."""
    from clip_family.config import tiny_config
    from clip_family.model import ClipFamilyModel

    vit, rn = workdir / "vit_b32.pt", workdir / "rn101.pt"
    if not vit.exists():
        make_openai_clip(vit, VIT_B32)
    if not rn.exists():
        make_openai_clip(rn, RN101)
    hf, family = workdir / "tiny_hf_clip", workdir / "tiny_clip_family"
    if not hf.exists():
        make_hf_clip(hf)
    if not family.exists():
        ClipFamilyModel(tiny_config()).save_pretrained(family)
    return {"openai-clip ViT-B/32 shape": str(vit), "openai-clip RN101 shape": str(rn),
            "hf-clip (tiny)": f"hf:{hf}", "clip-family (tiny OpenAI ViT)": str(family)}


def run(backbone: str, images: Path, out: Path, device: str, precision: str, batch: int) -> tuple[np.ndarray, ...]:
    extract(ExtractConfig(out=out, backbone=backbone, image_list=images, device=device, precision=precision,
                          dtype="float32", batch_size=batch, progress=False))
    with H5FeatureStore(out) as store:
        return store._file["fc"][:].astype(np.float64), store._file["grid"][:].astype(np.float64)


def compare(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(max |a - b|, min over rows of cos(a_row, b_row)) with rows flattened."""
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    cos = np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    return float(np.abs(a - b).max()), float(cos.min())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "runs" / "bench_extract")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.workdir.mkdir(parents=True, exist_ok=True)
    paths = ensure_images(args.workdir, args.images, (500, 375))
    listing = args.workdir / f"precision_list_{args.images}.txt"
    listing.write_text("".join(f"{p}\n" for p in paths))
    reduced = ["bf16"] if args.device == "cpu" else ["fp16", "bf16"]
    print(f"{args.images} photos, device {args.device}, stored float32; deviation from the fp32 run\n")
    print("| family (random weights) | precision | fc max abs | fc min cosine | grid max abs | grid min cosine | "
          "max abs fc / grid (fp32) |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for label, backbone in models(args.workdir).items():
            fc32, grid32 = run(backbone, listing, Path(tmp) / "fp32.h5", args.device, "fp32", args.batch_size)
            for precision in reduced:
                fc, grid = run(backbone, listing, Path(tmp) / f"{precision}.h5", args.device, precision,
                               args.batch_size)
                (fc_abs, fc_cos), (grid_abs, grid_cos) = compare(fc, fc32), compare(grid, grid32)
                print(f"| {label} | {precision} | {fc_abs:.2e} | {fc_cos:.6f} | {grid_abs:.2e} | {grid_cos:.6f} | "
                      f"{np.abs(fc32).max():.3g} / {np.abs(grid32).max():.3g} |", flush=True)
            for path in Path(tmp).glob("*"):
                path.unlink()


if __name__ == "__main__":
    main()
