"""vlt5r search — search a KB index: one question + image, or a whole queries file into a TREC run.

examples:
  vlt5r search --index runs/kb_index --kb kb.jsonl --encoder runs/train/best \
      --question "Who is the red one?" --image scene.png -k 10 [--json]
  vlt5r search --index runs/kb_index --kb kb.jsonl --encoder clip-image --image photo.jpg          # baseline
  vlt5r search --index runs/kb_index --encoder runs/train/best --queries test.jsonl \
      --query-features scenes.h5 --out joint.trec -k 100
  vlt5r search ... --passages passages.jsonl [--article-field article]       # article hits -> their passages

--encoder is a saved query encoder directory, clip-image[:BACKBONE] or clip-text[:BACKBONE]. A new image is
encoded with the backbone recorded in the encoder's / index's metadata (--backbone says where the weights are if
they moved; their sha256 must match). Batch mode reads image features from --query-features (ids = the queries'
"image") and, for clip-text, question features from --query-text-features (ids = query ids; without it the
questions are encoded now). Score the run with `vlt5r evaluate`.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path

from foundations.cli import CLIParser, command, setup_logging
from foundations.errors import UsageError
from foundations.images import QUERY_MAX_PIXELS


def build_parser() -> CLIParser:
    p = CLIParser(prog="vlt5r search", description=__doc__)
    p.add_argument("--index", required=True, type=Path, help="index directory (vlt5r build-index)")
    p.add_argument("--kb", type=Path, help="KB JSONL, for titles and snippets")
    p.add_argument("--encoder", required=True, help="encoder dir | clip-image[:BACKBONE] | clip-text[:BACKBONE]")
    p.add_argument("--backbone", help="where the CLIP weights are (default: as recorded in the metadata)")
    p.add_argument("-k", "--k", type=int, default=10, help="results per query (default 10)")
    one = p.add_argument_group("one query")
    one.add_argument("--question", help="the question")
    one.add_argument("--image", type=Path, help="the query image file")
    one.add_argument("--json", action="store_true", help="print the hits as JSON instead of a table")
    one.add_argument("--max-pixels", type=int, default=QUERY_MAX_PIXELS, help="refuse larger images")
    batch = p.add_argument_group("batch")
    batch.add_argument("--queries", type=Path, help="queries JSONL {id, question, image, positives}")
    batch.add_argument("--query-features", type=Path, help="image features of the queries (ids = their 'image')")
    batch.add_argument("--query-text-features", type=Path, help="CLIP text features of the questions (ids = query "
                                                                "ids), for clip-text")
    batch.add_argument("--out", type=Path, help="TREC run to write")
    batch.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    batch.add_argument("--tag", default=None, help="run tag in the TREC file (default: the encoder kind)")
    batch.add_argument("--batch-size", type=int, default=256, help="queries encoded per step")
    batch.add_argument("--no-progress", action="store_true")
    mapping = p.add_argument_group("article -> passage mapping (ViQuAE)")
    mapping.add_argument("--passages", type=Path, help="JSONL {id, <article field>, title?, text?}: the index holds "
                                                       "articles, hits become their passages")
    mapping.add_argument("--article-field", default="article", help="field naming the passage's article id")
    mapping.add_argument("--article-sep", help="index ids are {article}{SEP}{n} (several images per article): a "
                                               "passage scores the max over its article's images")
    p.add_argument("--nprobe", type=int, help="IVF lists to visit (default: the index's)")
    p.add_argument("--ef-search", type=int, help="HNSW search depth (default: the index's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def check_args(args) -> None:
    if args.k < 1:
        raise UsageError(f"-k must be ≥ 1, got {args.k}")
    if (args.queries is None) == (args.question is None and args.image is None):
        raise UsageError("give one query (--question and/or --image) or a queries file (--queries ... --out RUN)")
    if args.queries is not None and args.out is None:
        raise UsageError("--queries needs --out RUN.trec")
    if args.out is not None:
        from foundations.io import refuse_overwrite
        from retrieval.formats import check_trec_field

        inputs = [args.queries, args.query_features, args.query_text_features, args.kb, args.passages]
        refuse_overwrite(args.out, args.overwrite, inputs=[p for p in inputs if p])
        if args.tag is not None:
            check_trec_field(args.tag, "run tag", "--tag")


def read_batch_queries(path: Path) -> list:  # -> list[retrieval.formats.Query]
    """The queries file, read before the index and encoder are opened; an id a TREC run cannot hold is refused
    now, not after the search."""
    from retrieval.formats import check_trec_field, read_queries

    queries = read_queries(path)
    for q in queries:
        check_trec_field(q.id, "query id", path)
    return queries


@command
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    check_args(args)
    setup_logging(quiet=not args.verbose)
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # the clip package's import
    from retrieval.querying.batch import format_hits, search_queries
    from retrieval.querying.images import image_from_path
    from retrieval.querying.searcher import open_searcher

    queries = read_batch_queries(args.queries) if args.queries is not None else []
    searcher = open_searcher(args.index, args.kb, args.encoder, backbone=args.backbone, device=args.device,
                             passages=args.passages, article_field=args.article_field,
                             article_sep=args.article_sep, nprobe=args.nprobe, ef_search=args.ef_search)
    if args.queries is None:
        image = image_from_path(args.image, args.max_pixels) if args.image is not None else None
        hits = searcher.search(args.question, image, args.k)
        if args.json:
            query = {"question": args.question, "image": str(args.image) if args.image else None, "k": args.k,
                     "encoder": args.encoder}
            print(json.dumps({"query": query, "hits": [h.to_json() for h in hits]}, ensure_ascii=False, indent=2))
        else:
            print(format_hits(hits))
        return 0
    from feature_extraction.readers import open_features
    from retrieval.formats import write_trec_run

    features = open_features(args.query_features) if args.query_features else None
    text_features = open_features(args.query_text_features) if args.query_text_features else None
    run = search_queries(searcher, queries, features, text_features, args.k, args.batch_size,
                         progress=not args.no_progress)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_trec_run(args.out, run, tag=args.tag or searcher.encoder.describe()["kind"])
    print(f"wrote {args.out}: {len(run)} queries, top-{args.k} each")
    return 0
