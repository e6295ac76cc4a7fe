"""CLI: ``python -m retrieval.importers {dpr,dpr-passages,viquae,kilt} --input SRC --out OUT.jsonl``.

    python -m retrieval.importers dpr --input biencoder-nq-dev.json --out nq_dev.jsonl --kb-out nq_kb.jsonl
    python -m retrieval.importers dpr-passages --input psgs_w100.tsv --out wiki_kb.jsonl
    python -m retrieval.importers viquae --input viquae_validation.jsonl --out viquae_dev.jsonl \
        [--positives provenance_indices] [--negatives BM25_irrelevant_indices]
    python -m retrieval.importers kilt --input viquae_passages.jsonl --articles viquae_kb.jsonl --out kb.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from retrieval.formats import KBEntry, Query, exit_on_user_error
from retrieval.importers.common import ImportStats
from retrieval.importers.dpr import dpr_passages, dpr_queries
from retrieval.importers.kilt import article_table, kilt_entries
from retrieval.importers.viquae import viquae_queries


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m retrieval.importers", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="source", required=True)
    dpr = sub.add_parser("dpr", help="DPR retriever JSON (question, positive_ctxs, hard_negative_ctxs)")
    dpr.add_argument("--prefix", default="dpr", help="query id prefix (ids are prefix + record number)")
    dpr.add_argument("--kb-out", type=Path, help="also write every context seen as a KB JSONL")
    sub.add_parser("dpr-passages", help="DPR passages TSV (id, text, title) → KB")
    vq = sub.add_parser("viquae", help="ViQuAE question records (id, input, image, provenance indices)")
    vq.add_argument("--positives", default="provenance_indices", help="field with relevant passage indices")
    vq.add_argument("--negatives", help="field with irrelevant passage indices (hard negatives), e.g. "
                    "BM25_irrelevant_indices")
    vq.add_argument("--passage-prefix", default="", help="prefix for passage ids (must match the KB's)")
    kilt = sub.add_parser("kilt", help="KILT-like articles or passages → KB")
    kilt.add_argument("--split", choices=("paragraph", "article"), default="paragraph")
    kilt.add_argument("--articles", type=Path, help="article file giving title/image to passages by 'index'")
    kilt.add_argument("--id-prefix", default="")
    for sp in (dpr, sub.choices["dpr-passages"], vq, kilt):
        sp.add_argument("--input", type=Path, required=True, help="source file (.json, .jsonl, .tsv, or .gz)")
        sp.add_argument("--out", type=Path, required=True, help="JSONL to write")
        sp.add_argument("--strict", action="store_true", help="stop at the first malformed record")
    for sp in (vq, kilt):
        sp.add_argument("--image-id", choices=("stem", "name"), default="stem",
                        help="image file name → feature id: drop the suffix (clip_prepro_feats --images) or keep it")
    return p.parse_args(argv)


def write_unique(path: Path, records: Iterable[Query | KBEntry], stats: ImportStats, strict: bool) -> None:
    """Stream records to JSONL; a repeated id is skipped (and counted) like any malformed record."""
    seen: set[str] = set()
    tmp = path.with_name(path.name + ".part")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            if strict and stats.skipped:
                reason, where = next(iter(stats.examples.items()))
                raise ValueError(f"{where}: {reason}")
            if record.id in seen:
                stats.written -= 1
                stats.skip(record.id, "duplicate id")
                if strict:
                    raise ValueError(f"duplicate id {record.id!r}")
                continue
            seen.add(record.id)
            f.write(json.dumps(record.to_json(), ensure_ascii=False) + "\n")
    if strict and stats.skipped:
        reason, where = next(iter(stats.examples.items()))
        raise ValueError(f"{where}: {reason}")
    tmp.replace(path)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
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
    if stats.written == 0:
        args.out.unlink(missing_ok=True)
        detail = f": {next(iter(stats.examples))} (e.g. {next(iter(stats.examples.values()))})" if stats.skipped else ""
        raise ValueError(f"{args.input}: no valid records in {stats.read}{detail}")
    print(f"{args.out}: {stats.summary(what)}")
    if kb is not None:
        kb_stats = ImportStats(read=len(kb))
        write_unique(args.kb_out, kb.values(), kb_stats, strict=False)
        kb_stats.written = len(kb)
        print(f"{args.kb_out}: {len(kb)} KB entries from the contexts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
