"""Search a KB index: one question + image from the command line, or a queries file into a TREC run.

    python retrieval/search.py --index runs/kb_index --kb kb.jsonl --encoder runs/train/best \\
        --question "Who is the red one?" --image scene.png [-k 10] [--json]
    python retrieval/search.py --index runs/kb_index --kb kb.jsonl --encoder clip-image --queries dev.jsonl \\
        --query-features scenes.h5 --out clip_image.trec [-k 100]
    python retrieval/search.py ... --passages passages.jsonl [--article-field article]   # article -> passages

``--encoder`` is a saved query encoder directory, ``clip-image[:BACKBONE]`` or ``clip-text[:BACKBONE]``. A new image
is encoded with the backbone recorded in the encoder's / index's metadata (``--backbone`` says where the weights are
if they moved; their sha256 must match). Batch mode reads image features from ``--query-features`` (ids = the
queries' ``image``) and, for ``clip-text``, question features from ``--query-text-features`` (ids = query ids;
without it the questions are encoded now). Score the run with ``retrieval/evaluate.py``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # the clip package's import

from tqdm import tqdm  # noqa: E402

from foundations.cli import CLIParser  # noqa: E402
from retrieval.formats import exit_on_user_error, read_queries, write_trec_run  # noqa: E402
from retrieval.querying.images import DEFAULT_MAX_PIXELS, image_from_path  # noqa: E402
from retrieval.querying.searcher import Hit, Searcher, open_searcher  # noqa: E402

logger = logging.getLogger(__name__)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = CLIParser(prog="python retrieval/search.py", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--index", required=True, type=Path, help="index directory (retrieval/build_index.py)")
    p.add_argument("--kb", type=Path, help="KB JSONL, for titles and snippets")
    p.add_argument("--encoder", required=True, help="encoder dir | clip-image[:BACKBONE] | clip-text[:BACKBONE]")
    p.add_argument("--backbone", help="where the CLIP weights are (default: as recorded in the metadata)")
    p.add_argument("-k", "--k", type=int, default=10, help="results per query (default 10)")
    one = p.add_argument_group("one query")
    one.add_argument("--question", help="the question")
    one.add_argument("--image", type=Path, help="the query image file")
    one.add_argument("--json", action="store_true", help="print the hits as JSON instead of a table")
    one.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images")
    batch = p.add_argument_group("batch")
    batch.add_argument("--queries", type=Path, help="queries JSONL {id, question, image, positives}")
    batch.add_argument("--query-features", type=Path, help="image features of the queries (ids = their 'image')")
    batch.add_argument("--query-text-features", type=Path, help="CLIP text features of the questions (ids = query "
                                                                "ids), for clip-text")
    batch.add_argument("--out", type=Path, help="TREC run to write")
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
    args = p.parse_args(argv)
    if args.k < 1:
        p.error(f"-k must be ≥ 1, got {args.k}")
    if (args.queries is None) == (args.question is None and args.image is None):
        p.error("give one query (--question and/or --image) or a queries file (--queries ... --out RUN)")
    if args.queries is not None and args.out is None:
        p.error("--queries needs --out RUN.trec")
    return args


def format_table(hits: list[Hit], width: int = 120) -> str:
    """rank, score, id, title, snippet: one line per hit, cut to ``width`` characters."""
    if not hits:
        return "no results"
    id_w = min(24, max(2, *(len(h.id) for h in hits)))
    title_w = min(36, max(5, *(len(h.title) for h in hits)))
    lines = [f"{'rank':>4}  {'score':>7}  {'id':<{id_w}}  {'title':<{title_w}}  snippet"]
    for h in hits:
        line = f"{h.rank:>4}  {h.score:>7.4f}  {h.id[:id_w]:<{id_w}}  {h.title[:title_w]:<{title_w}}  {h.snippet}"
        lines.append(line if len(line) <= width else line[: width - 1] + "…")
    return "\n".join(lines)


def search_one(searcher: Searcher, args: argparse.Namespace) -> None:
    image = image_from_path(args.image, args.max_pixels) if args.image is not None else None
    hits = searcher.search(args.question, image, args.k)
    if args.json:
        query = {"question": args.question, "image": str(args.image) if args.image else None, "k": args.k,
                 "encoder": args.encoder}
        print(json.dumps({"query": query, "hits": [h.to_json() for h in hits]}, ensure_ascii=False, indent=2))
    else:
        print(format_table(hits))


def search_batch(searcher: Searcher, args: argparse.Namespace) -> None:
    from feature_extraction.store import FeatureStore

    assert searcher.encoder is not None
    queries = read_queries(args.queries)
    features = FeatureStore.open(args.query_features) if args.query_features else None
    text_features = FeatureStore.open(args.query_text_features) if args.query_text_features else None
    run: dict[str, dict[str, float]] = {}
    with tqdm(total=len(queries), unit="q", disable=args.no_progress, desc="search") as bar:
        for start in range(0, len(queries), args.batch_size):
            chunk = queries[start : start + args.batch_size]
            vectors = searcher.encoder.encode_stored(chunk, features, text_features)  # (B, D)
            for q, ranked in zip(chunk, searcher.ranked(vectors, args.k)):
                run[q.id] = dict(ranked)
            bar.update(len(chunk))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_trec_run(args.out, run, tag=args.tag or searcher.encoder.describe()["kind"])
    print(f"wrote {args.out}: {len(run)} queries, top-{args.k} each")


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    searcher = open_searcher(args.index, args.kb, args.encoder, backbone=args.backbone, device=args.device,
                             passages=args.passages, article_field=args.article_field,
                             article_sep=args.article_sep, nprobe=args.nprobe,
                             ef_search=args.ef_search)
    if args.queries is not None:
        search_batch(searcher, args)
    else:
        search_one(searcher, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
