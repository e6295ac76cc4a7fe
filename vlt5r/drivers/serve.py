"""vlt5r serve — serve a KB index over HTTP: a JSON search API and a page to try it (FastAPI + uvicorn).

examples:
  vlt5r serve --index runs/kb_index --encoder runs/train/best --kb kb.jsonl --images data/
  # open http://127.0.0.1:8000/ ; or:
  curl -F question="Who is the red one?" -F image=@scene.png -F k=5 http://127.0.0.1:8000/search
  curl http://127.0.0.1:8000/health

Binds 127.0.0.1 unless --host says otherwise (there is no authentication: expose it only behind a proxy you
trust). The encoder and the backbone are loaded once, and one warm-up query runs before the port opens. Endpoints,
limits and error codes: retrieval/querying/app.py and docs/serving.md.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

from foundations.cli import CLIParser, command

logger = logging.getLogger(__name__)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def build_parser() -> CLIParser:
    from retrieval.querying.app import ServerConfig

    d = ServerConfig()
    p = CLIParser(prog="vlt5r serve", description=__doc__)
    p.add_argument("--index", required=True, type=Path, help="index directory (vlt5r build-index)")
    p.add_argument("--encoder", required=True, help="encoder dir | clip-image[:BACKBONE] | clip-text[:BACKBONE]")
    p.add_argument("--kb", required=True, type=Path, help="KB JSONL {id, title, text, image?}")
    p.add_argument("--images", type=Path, help="folder the KB's 'image' paths are relative to (thumbnails)")
    p.add_argument("--backbone", help="where the CLIP weights are (default: as recorded in the metadata)")
    p.add_argument("--passages", type=Path, help="article -> passage mapping (see vlt5r search -h)")
    p.add_argument("--article-field", default="article")
    p.add_argument("--article-sep")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=d.max_upload_mb, help="largest image upload")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels, help="largest image (width x height)")
    p.add_argument("--max-k", type=int, default=d.max_k, help="largest k a request may ask for")
    p.add_argument("--default-k", type=int, default=d.default_k)
    p.add_argument("--max-question-chars", type=int, default=d.max_question_chars)
    p.add_argument("--workers", type=int, default=d.workers,
                   help="queries decoded + encoded at once, each in its own thread (bounds memory)")
    p.add_argument("--queue", type=int, default=d.queue,
                   help="queries that may wait for a worker; more are answered 503 with Retry-After")
    p.add_argument("--decode-side", type=int, default=d.decode_side,
                   help="decode larger images reduced, their shorter side kept >= this (0: full size)")
    p.add_argument("--debug-paths", action="store_true", help="show server paths in /health (default: names only)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    return p


@command
def main(argv: Sequence[str] | None = None) -> int:
    warnings.filterwarnings("ignore", message="pkg_resources is deprecated")  # the clip package's import
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    import torch
    import uvicorn

    from retrieval.querying.app import ServerConfig, create_app, warm_up
    from retrieval.querying.searcher import open_searcher

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = ServerConfig(images_dir=args.images, max_upload_mb=args.max_upload_mb, max_pixels=args.max_pixels,
                       max_k=args.max_k, default_k=args.default_k, max_question_chars=args.max_question_chars,
                       workers=args.workers, queue=args.queue, decode_side=args.decode_side or None,
                       show_paths=args.debug_paths, extra={"index_dir": str(args.index)})
    searcher = open_searcher(args.index, args.kb, args.encoder, backbone=args.backbone, device=args.device,
                             passages=args.passages, article_field=args.article_field, article_sep=args.article_sep)
    warm_up(searcher)
    if args.host not in LOCAL_HOSTS:
        logger.warning("listening on %s: reachable from other machines, with no authentication", args.host)
    print(f"serving {len(searcher.index):,} KB vectors with {args.encoder} on http://{args.host}:{args.port}/ "
          f"(page: /, API: POST /search, GET /health)", flush=True)
    uvicorn.run(create_app(searcher, cfg), host=args.host, port=args.port, log_level=args.log_level,
                access_log=args.log_level in ("debug", "info"))
    return 0
