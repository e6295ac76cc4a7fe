"""The HTTP server: FastAPI app over an in-process :class:`Searcher` (started by ``retrieval/serve.py``).

* ``GET /health`` — index size and dim, encoder, backbone, limits.
* ``POST /search`` — multipart ``question``, ``image`` (file), ``k`` -> ``{"hits": [{rank, score, id, title, snippet,
  thumbnail}]}``; ``thumbnail`` is ``/kb-image/{id}`` when the KB entry's image resolves inside ``--images``.
* ``GET /`` — the page (``retrieval/web/``: static HTML/JS/CSS, no build step, nothing from the network).
* ``GET /kb-image/{id}`` — a KB entry's image, only for ids in the KB whose image resolves inside ``--images``; the
  client names an id, never a path, and a resolved path that leaves the folder (``..``, symlinks) is refused.

Bad input is a 4xx with ``{"error": "..."}``: the body is read with a byte limit (413) before the multipart parser
sees it, then fields, k, question length, image bytes and pixels are checked; every parse error is a 4xx.

Memory is bounded (:class:`QueryPool`): at most ``workers`` queries are read, decoded and encoded at once, in
``workers`` threads of their own; at most ``queue`` more wait with their body still unread (uvicorn keeps at most
64 KiB of it); any further request is answered 503 with ``Retry-After`` at once. Large images are decoded smaller
(JPEG ``draft``, then ``Image.reduce`` before the RGB conversion: :func:`foundations.images.decode_image` with
``min_side``). The encoder serialises its torch part (:mod:`retrieval.querying.encoders`). ``/health`` shows file
names, not server paths, unless the server was started with ``--debug-paths``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePath
from typing import Any, TypeVar
from urllib.parse import quote

from fastapi import FastAPI, Request
from PIL import Image
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from feature_extraction.inputs import IMAGE_SUFFIXES
from retrieval.formats import KBEntry
from retrieval.querying.images import DEFAULT_MAX_PIXELS, ImageError, image_from_bytes
from retrieval.querying.searcher import Hit, Searcher
from foundations.errors import UserError

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
FIELD_OVERHEAD = 64 * 1024  # room for the form's other fields and multipart headers
IMAGE_STATUS = {"not an image": 415, "unsupported mode": 415, "too many pixels": 413}
ASCII_INT = re.compile(r"\+?[0-9]{1,12}")  # str.isdigit() also accepts '²', which int() refuses
RETRY_AFTER_S = 1
T = TypeVar("T")


@dataclass
class ServerConfig:
    """Limits and locations of one server."""

    images_dir: Path | None = None  # KB thumbnails are served from here only
    max_upload_mb: float = 10.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_k: int = 100
    default_k: int = 10
    max_question_chars: int = 1000
    workers: int = 2  # queries read, decoded and encoded at once (each holds one body and one decoded image)
    queue: int = 256  # queries waiting for a worker, body unread; one more is answered 503 with Retry-After
    decode_side: int | None = 1024  # larger images are decoded reduced, shorter side kept >= this (None: full size)
    show_paths: bool = False  # /health shows server paths (a debug flag); by default names only
    extra: dict[str, Any] = field(default_factory=dict)  # shown in /health (e.g. the index directory)

    def __post_init__(self) -> None:
        if self.max_upload_mb <= 0 or self.max_pixels < 1 or self.max_question_chars < 1:
            raise UserError("max_upload_mb, max_pixels and max_question_chars must be positive")
        if self.workers < 1 or self.queue < 0 or (self.decode_side is not None and self.decode_side < 1):
            raise UserError(f"need workers >= 1, queue >= 0, decode_side >= 1 (got {self.workers}, {self.queue}, "
                            f"{self.decode_side})")
        if not 1 <= self.default_k <= self.max_k:
            raise UserError(f"need 1 <= default_k ({self.default_k}) <= max_k ({self.max_k})")
        if self.images_dir is not None:
            if not Path(self.images_dir).is_dir():
                raise UserError(f"--images {self.images_dir}: not a directory")
            self.images_dir = Path(self.images_dir).resolve()

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024) + FIELD_OVERHEAD

    def memory_bound_mb(self, warm_mb: float) -> float:
        """The documented bound on the server's RSS (docs/serving.md §2): the warmed-up server, plus per worker one
        body at the upload limit and 5 bytes per pixel at the pixel limit (the image decoded at full size, 4 bytes a
        pixel in PIL's RGB(X), and its reduced or converted copies), plus 64 KiB (uvicorn's read buffer) per request
        waiting in the queue."""
        per_worker = (5 * self.max_pixels + self.max_body_bytes) / 2**20
        return warm_mb + self.workers * per_worker + self.queue * 64 / 1024

    def limits(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items()
                if k.startswith(("max_", "default_")) or k in ("workers", "queue", "decode_side")}


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


class QueryPool:
    """Admission and the threads that decode and encode queries: at most ``workers`` queries hold a ``slot`` (read
    the body, decode, encode), running in ``workers`` threads of their own (so at most that many bodies and decoded
    images exist, and only those threads' malloc arenas grow); at most ``queue`` more wait for a slot with their body
    unread; one more is refused with 503 + ``Retry-After`` at once. Used from the event loop only (no lock)."""

    def __init__(self, workers: int, queue: int) -> None:
        self.capacity = workers + queue
        self.slot = asyncio.Semaphore(workers)
        self.executor = ThreadPoolExecutor(workers, thread_name_prefix="query")
        self.admitted = 0

    @contextmanager
    def admit(self) -> Iterator[None]:
        if self.admitted >= self.capacity:
            raise ApiError(503, f"server busy: {self.admitted} queries running or waiting; retry in "
                                f"{RETRY_AFTER_S} s", {"Retry-After": str(RETRY_AFTER_S)})
        self.admitted += 1
        try:
            yield
        finally:
            self.admitted -= 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)


_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])(?:~|[A-Za-z]:)?/[^\s'\"()]+")


def names_only(value: Any) -> Any:
    """``value`` (from /health) with every server path shown as its name: a string that is an existing path, and
    every absolute path inside a string (``clip-image:/srv/models/RN101.pt`` -> ``clip-image:RN101.pt``)."""
    if isinstance(value, dict):
        return {k: names_only(v) for k, v in value.items()}
    if isinstance(value, list):
        return [names_only(v) for v in value]
    if not isinstance(value, str) or not value:
        return value
    if ("/" in value or "\\" in value) and Path(value).exists():
        return Path(value).name
    return _ABSOLUTE_PATH.sub(lambda m: PurePath(m.group()).name or m.group(), value)


def kb_image_path(entry: KBEntry | None, root: Path | None) -> Path | None:
    """The entry's image file when it resolves inside ``root`` and is an image file; otherwise None."""
    if entry is None or not entry.image or root is None:
        return None
    try:
        path = (root / entry.image).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if not path.is_relative_to(root) or path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
        return None
    return path


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes (Content-Length first, then while streaming)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not re.fullmatch(r"[0-9]{1,18}", declared):
            raise ApiError(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise ApiError(413, f"request body of {int(declared)} bytes is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_form(request: Request, body: bytes) -> Any:
    """Multipart / urlencoded fields of an already-read body (starlette's parser, with field-count limits)."""
    sent = False

    async def replay() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        return await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except Exception as exc:  # MultiPartException, HTTPException(400) and parser errors: all the client's fault
        raise ApiError(400, f"malformed form body ({getattr(exc, 'detail', None) or exc})") from None


def parse_k(raw: Any, cfg: ServerConfig) -> int:
    if raw is None or raw == "":
        return cfg.default_k
    if not isinstance(raw, str) or not ASCII_INT.fullmatch(raw.strip()):
        raise ApiError(400, f"k must be an integer between 1 and {cfg.max_k}, got {str(raw)[:20]!r}")
    k = int(raw)
    if not 1 <= k <= cfg.max_k:
        raise ApiError(400, f"k must be between 1 and {cfg.max_k}, got {k}")
    return k


async def parse_query(form: Any, cfg: ServerConfig, searcher: Searcher) -> tuple[str | None, bytes | None, int]:
    question, upload = form.get("question"), form.get("image")
    if question is not None and not isinstance(question, str):
        raise ApiError(400, "question must be a text field")
    if question is not None and len(question) > cfg.max_question_chars:
        raise ApiError(400, f"question is {len(question)} characters, the limit is {cfg.max_question_chars}")
    question = (question or "").strip() or None
    if upload is not None and not isinstance(upload, UploadFile):
        raise ApiError(400, "image must be a file upload (multipart/form-data)")
    data = await upload.read() if upload is not None else None
    if upload is not None and not data and not upload.filename:
        data = None  # a form submitted with no file chosen
    elif upload is not None and not data:
        raise ApiError(400, f"image {upload.filename!r} is empty")
    encoder = searcher.encoder
    assert encoder is not None
    if encoder.needs_image and data is None:
        raise ApiError(400, f"missing field 'image' (encoder {encoder.describe()['kind']} needs an image)")
    if encoder.needs_question and question is None:
        raise ApiError(400, f"missing field 'question' (encoder {encoder.describe()['kind']} needs a question)")
    if question is None and data is None:
        raise ApiError(400, "missing fields: give a 'question', an 'image' or both")
    return question, data, parse_k(form.get("k"), cfg)


def warm_up(searcher: Searcher) -> None:
    """Load the backbone and run one query, so that the first request is as fast as the others."""
    encoder = searcher.encoder
    assert encoder is not None
    encoder.load()
    image = Image.new("RGB", (64, 64), (128, 128, 128)) if encoder.needs_image else None
    searcher.search("warm up", image, 1)


def create_app(searcher: Searcher, cfg: ServerConfig) -> FastAPI:
    """The FastAPI app; ``searcher.encoder`` must be set (and loaded, to answer the first request quickly)."""
    if searcher.encoder is None:
        raise ValueError("the server needs a query encoder")
    app = FastAPI(title="vlt5-retrieval", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    pool = QueryPool(cfg.workers, cfg.queue)

    def thumbnail(doc_id: str) -> str | None:
        image_id = searcher.image_entry_id(doc_id)
        if image_id is not None and kb_image_path(searcher.kb.get(image_id), cfg.images_dir) is not None:
            return f"/kb-image/{quote(image_id, safe='')}"
        return None

    def run_search(question: str | None, data: bytes | None, k: int) -> list[Hit]:
        try:
            image = image_from_bytes(data, cfg.max_pixels, cfg.decode_side) if data is not None else None
        except ImageError as exc:
            raise ApiError(IMAGE_STATUS.get(exc.category, 400), f"image rejected: {exc}") from None
        return searcher.search(question, image, k)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": f"invalid request: {exc.errors()[:3]}"}, status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error on %s", request.url.path)
        return JSONResponse({"error": f"internal error ({type(exc).__name__})"}, status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        index = searcher.index
        answer = {"status": "ok", "index": {"size": len(index), "dim": index.dim, "factory": index.meta.factory},
                  "kb_entries": len(searcher.kb), "passages": searcher.passages is not None,
                  "encoder": searcher.encoder.describe(), "limits": cfg.limits(),
                  "queries_admitted": pool.admitted, **cfg.extra}
        return answer if cfg.show_paths else names_only(answer)

    @app.post("/search")
    async def search(request: Request) -> JSONResponse:
        with pool.admit():
            async with pool.slot:  # only now is the body read: a waiting query holds no memory
                form = await parse_form(request, await read_body(request, cfg.max_body_bytes))
                question, data, k = await parse_query(form, cfg, searcher)
                hits = await pool.run(run_search, question, data, k)
        return JSONResponse({"k": k, "question": question,  # plain types: no response-model encoding pass
                             "hits": [{**h.to_json(), "thumbnail": thumbnail(h.id)} for h in hits]})

    @app.get("/kb-image/{doc_id:path}")
    async def kb_image(doc_id: str) -> FileResponse:
        path = kb_image_path(searcher.kb.get(doc_id), cfg.images_dir)
        if path is None:
            raise ApiError(404, f"no KB image for id {doc_id[:80]!r}")
        return FileResponse(path, headers={"Cache-Control": "max-age=3600"})

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    return app
