"""vlt5r build-index — build a faiss index directory from a feature file, or print a sizing report.

examples:
  vlt5r build-index --features kb.h5 --out runs/kb_index                          # exact (Flat)
  vlt5r build-index --features kb.h5 --out runs/kb_ivf --factory 'IVF4096,Flat'   # ANN, nprobe calibrated
  vlt5r build-index --features kb.h5 --out runs/kb_index --factory Flat --fp16
  vlt5r build-index --sizing --n 10000000 --dim 512 --factories Flat 'IVF65536,Flat' HNSW32 'OPQ64,IVF65536,PQ64'

Vectors are L2-normalised (cosine = inner product) unless --no-normalize. Zero or non-finite vectors are refused
with their ids (--skip-bad-vectors leaves them out). An existing --out is replaced only with --overwrite, atomically:
a failed or killed rebuild leaves the old index as it was. Index directory layout and metadata:
retrieval/indexing/index.py; factory guidance and the sizing table: docs/retrieval.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from foundations.cli import CLIParser, command, setup_logging
from foundations.errors import UsageError

DEFAULT_SIZING_FACTORIES = ["Flat", "SQfp16", "IVF4096,Flat", "IVF4096,SQfp16", "HNSW32", "IVF4096,PQ64",
                            "OPQ64,IVF4096,PQ64"]


def build_parser() -> CLIParser:
    p = CLIParser(prog="vlt5r build-index", description=__doc__)
    p.add_argument("--features", type=Path, help="feature file (HDF5, DESIGN.md §3); its 'fc' vectors are indexed")
    p.add_argument("--out", type=Path, help="index directory to write (replaced atomically, only with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out index (or --json report)")
    p.add_argument("--skip-bad-vectors", action="store_true",
                   help="leave zero / NaN / inf vectors out (counted in index.json) instead of refusing the file")
    p.add_argument("--factory", default="Flat", help="faiss factory string (default Flat)")
    p.add_argument("--fp16", action="store_true", help="store vectors as float16 (Flat/IVF…,Flat/HNSW storage)")
    p.add_argument("--no-normalize", action="store_true", help="index raw vectors (default: L2-normalise = cosine)")
    p.add_argument("--train-size", type=int, help="training sample for IVF/PQ (default 64 per list/centroid)")
    p.add_argument("--batch-size", type=int, default=8192, help="rows read and added per step")
    p.add_argument("--nprobe", type=int, help="default IVF nprobe (default: calibrated at build time)")
    p.add_argument("--ef-search", type=int, help="default HNSW efSearch (default: calibrated at build time)")
    p.add_argument("--ef-construction", type=int, default=80, help="HNSW build depth (default 80)")
    p.add_argument("--target-recall", type=float, default=0.97, help="calibration target recall@10 (default 0.97)")
    p.add_argument("--cpu", action="store_true", help="never use a GPU even when faiss sees one")
    p.add_argument("--seed", type=int, default=0)
    s = p.add_argument_group("sizing report")
    s.add_argument("--sizing", action="store_true", help="print bytes/vector, RAM and recall per factory")
    s.add_argument("--n", type=int, default=10_000_000, help="KB size to size for")
    s.add_argument("--dim", type=int, default=512, help="vector dim for synthetic samples (no --features)")
    s.add_argument("--factories", nargs="+", default=DEFAULT_SIZING_FACTORIES)
    s.add_argument("--sample", type=int, default=50_000, help="vectors to build each factory on")
    s.add_argument("--queries", type=int, default=1000)
    s.add_argument("--id-length", type=int, default=16, help="typical id length, for the ids' RAM")
    s.add_argument("--json", type=Path, help="also write the report as JSON")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=not args.verbose)
    if args.sizing:
        from retrieval.indexing.sample import sizing_sample
        from retrieval.indexing.sizing import format_table, sizing_report

        if args.json:
            from foundations.io import refuse_overwrite

            refuse_overwrite(args.json, args.overwrite, "--json", inputs=[args.features] if args.features else [])
        sample, queries = sizing_sample(args.features, args.sample, args.queries, args.dim, args.batch_size,
                                        args.seed)
        rows = sizing_report(sample, queries, args.factories, n_target=args.n, id_length=args.id_length)
        print(f"sizing for N={args.n:,} vectors of dim {sample.shape[1]} (measured on {len(sample):,}, "
              f"recall@10 vs Flat on {len(queries)} queries)")
        print(format_table(rows, args.n))
        if args.json:
            from foundations.io import atomic_write_text

            atomic_write_text(args.json, json.dumps([r.to_dict() for r in rows], indent=2) + "\n")
        return 0
    if args.features is None or args.out is None:
        raise UsageError("--features and --out are required (or use --sizing)")
    from foundations.io import refuse_overwrite
    from retrieval.indexing import IndexConfig, build_index_from_features
    from retrieval.indexing.index import check_replaceable

    refuse_overwrite(args.out, args.overwrite, inputs=[args.features])
    check_replaceable(args.out)  # before hours of building, not after

    cfg = IndexConfig(factory=args.factory, normalize=not args.no_normalize, fp16=args.fp16,
                      train_size=args.train_size, batch_size=args.batch_size, nprobe=args.nprobe,
                      ef_search=args.ef_search, ef_construction=args.ef_construction,
                      target_recall=args.target_recall, use_gpu=not args.cpu, seed=args.seed,
                      skip_bad_vectors=args.skip_bad_vectors)
    index = build_index_from_features(args.features, cfg)
    index.save(args.out)
    print(f"wrote {args.out}: {len(index):,} vectors, dim {index.dim}, {index.meta.factory}, "
          f"nprobe={index.meta.nprobe}, efSearch={index.meta.ef_search}, {index.meta.build['seconds']}s")
    return 0
