"""vlt5r import — bring DPR / ViQuAE / KILT data into the toolkit's JSONL formats (bad records skipped, counted).

examples:
  vlt5r import dpr --input biencoder-nq-dev.json --out nq_dev.jsonl --kb-out nq_kb.jsonl
  vlt5r import dpr-passages --input psgs_w100.tsv --out wiki_kb.jsonl
  vlt5r import viquae --input viquae_validation.jsonl --out viquae_dev.jsonl \
      [--positives provenance_indices] [--negatives BM25_irrelevant_indices]
  vlt5r import kilt --input viquae_passages.jsonl --articles viquae_kb.jsonl --out kb.jsonl

Inputs may be .json (arrays), .jsonl, .tsv or gzip-compressed (.gz). --strict stops at the first malformed record.
An existing --out is replaced only with --overwrite. Same as `python -m retrieval.importers`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from foundations.cli import CLIParser, command, setup_logging
from foundations.errors import UsageError, UserError
from foundations.io import refuse_overwrite, same_file


def build_parser() -> CLIParser:
    p = CLIParser(prog="vlt5r import", description=__doc__)
    sub = p.add_subparsers(dest="source", required=True, parser_class=CLIParser)
    dpr = sub.add_parser("dpr", help="DPR retriever JSON (question, positive_ctxs, hard_negative_ctxs)",
                         description=__doc__)
    dpr.add_argument("--prefix", default="dpr", help="query id prefix (ids are prefix + record number)")
    dpr.add_argument("--kb-out", type=Path, help="also write every context seen as a KB JSONL")
    passages = sub.add_parser("dpr-passages", help="DPR passages TSV (id, text, title) → KB", description=__doc__)
    vq = sub.add_parser("viquae", help="ViQuAE question records (id, input, image, provenance indices)",
                        description=__doc__)
    vq.add_argument("--positives", default="provenance_indices", help="field with relevant passage indices")
    vq.add_argument("--negatives", help="field with irrelevant passage indices (hard negatives), e.g. "
                    "BM25_irrelevant_indices")
    vq.add_argument("--passage-prefix", default="", help="prefix for passage ids (must match the KB's)")
    kilt = sub.add_parser("kilt", help="KILT-like articles or passages → KB", description=__doc__)
    kilt.add_argument("--split", choices=("paragraph", "article"), default="paragraph")
    kilt.add_argument("--articles", type=Path, help="article file giving title/image to passages by 'index'")
    kilt.add_argument("--id-prefix", default="")
    for sp in (dpr, passages, vq, kilt):
        sp.add_argument("--input", type=Path, required=True, help="source file (.json, .jsonl, .tsv, or .gz)")
        sp.add_argument("--out", type=Path, required=True, help="JSONL to write")
        sp.add_argument("--overwrite", action="store_true", help="replace --out (and --kb-out) if they exist")
        sp.add_argument("--strict", action="store_true", help="stop at the first malformed record")
    for sp in (vq, kilt):
        sp.add_argument("--image-id", choices=("stem", "name"), default="stem",
                        help="image file name → feature id: drop the suffix (vlt5r extract --images) or keep it")
    return p


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(quiet=True)
    inputs = [args.input, *([args.articles] if getattr(args, "articles", None) else [])]
    refuse_overwrite(args.out, args.overwrite, inputs=inputs)
    if getattr(args, "kb_out", None) is not None:
        if same_file(args.kb_out, args.out):
            raise UsageError(f"--kb-out {args.kb_out} is also --out")
        refuse_overwrite(args.kb_out, args.overwrite, "--kb-out", inputs=inputs)
    from retrieval.formats import KBEntry, Query
    from retrieval.importers.common import ImportStats
    from retrieval.importers.dpr import dpr_passages, dpr_queries
    from retrieval.importers.kilt import article_table, kilt_entries
    from retrieval.importers.viquae import viquae_queries
    from retrieval.importers.write import write_unique

    stats = ImportStats()
    kb: dict[str, KBEntry] | None = {} if args.source == "dpr" and args.kb_out else None
    records: Iterator[Query | KBEntry]
    if args.source == "dpr":
        records, what = dpr_queries(args.input, stats, prefix=args.prefix, kb=kb), "queries"
    elif args.source == "dpr-passages":
        records, what = dpr_passages(args.input, stats), "KB entries"
    elif args.source == "viquae":
        records, what = viquae_queries(args.input, stats, positives_field=args.positives,
                                       negatives_field=args.negatives, passage_prefix=args.passage_prefix,
                                       image_mode=args.image_id), "queries"
    else:
        articles = article_table(args.articles, args.image_id) if args.articles else None
        records, what = kilt_entries(args.input, stats, split=args.split, id_prefix=args.id_prefix,
                                     articles=articles, image_mode=args.image_id), "KB entries"
    write_unique(args.out, records, stats, args.strict)
    if stats.written == 0:  # write_unique left any existing --out untouched
        detail = f": {next(iter(stats.examples))} (e.g. {next(iter(stats.examples.values()))})" if stats.skipped else ""
        raise UserError(f"{args.input}: no valid records in {stats.read}{detail}")
    print(f"{args.out}: {stats.summary(what)}")
    if kb is not None:
        kb_stats = ImportStats(read=len(kb))
        write_unique(args.kb_out, kb.values(), kb_stats, strict=False)
        print(f"{args.kb_out}: {len(kb)} KB entries from the contexts")
    return 0
