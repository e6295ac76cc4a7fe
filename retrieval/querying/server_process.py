"""The server in a child process: ``python -m vlt5r serve ARGS`` on 127.0.0.1 and a free port, waiting (bounded)
for ``/health``. For benchmarks, tests and tools that need a real server (uvicorn, its own process), with what a
load test needs: the server's peak memory (:meth:`ServerProcess.peak_rss_mb`), many concurrent searches
(:func:`post_concurrently`) and the image that attacks a decoder's memory (:func:`bilevel_png`)."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``python -m vlt5r serve ARGS`` on 127.0.0.1 and a free port, in its own process; waits (bounded) for
    ``/health``. Use as a context manager; ``stop()`` returns the server's output."""

    def __init__(self, args: list[str], startup_s: float = 90) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        cmd = [sys.executable, "-m", "vlt5r", "serve", *args, "--port", str(self.port)]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        deadline = time.monotonic() + startup_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.proc.stdout.read()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"server did not answer /health within {startup_s} s")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        return self.proc.stdout.read() if self.proc.stdout else ""

    def _status_kb(self, field: str) -> float:
        with open(f"/proc/{self.proc.pid}/status", encoding="ascii") as f:  # Linux
            return float(next(line.split()[1] for line in f if line.startswith(field + ":")))

    def rss_mb(self) -> float:
        """The server process's resident memory now (MiB)."""
        return self._status_kb("VmRSS") / 1024

    def peak_rss_mb(self) -> float:
        """The server process's peak resident memory since it started (``VmHWM``, MiB)."""
        return self._status_kb("VmHWM") / 1024

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bilevel_png(width: int = 6000, height: int = 6000) -> bytes:
    """A 1-bit PNG of ``width`` × ``height`` (36 megapixels by default) that is a few KB on disk — a page scan, or
    an attack on a server's memory: decoded naively it becomes a 36 MB bitmap and a 144 MB RGB copy."""
    from PIL import Image, ImageDraw

    image = Image.new("1", (width, height), 0)
    draw = ImageDraw.Draw(image)
    draw.rectangle((width // 6, height // 6, width // 2, height // 2), fill=1)
    draw.rectangle((width * 7 // 12, height * 7 // 12, width * 5 // 6, height * 7 // 8), fill=1)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


@dataclass
class Answer:
    status: int  # 0: no HTTP answer (connection error)
    retry_after: str | None
    body: str


def post_concurrently(url: str, forms: list[tuple[dict[str, str], dict[str, Any]]], threads: int,
                      timeout: float = 300) -> list[Answer]:
    """POST every ``(data, files)`` form to ``url`` from ``threads`` client threads at once, in order."""
    import httpx

    with httpx.Client(timeout=timeout) as http:

        def one(form: tuple[dict[str, str], dict[str, Any]]) -> Answer:
            try:
                r = http.post(url, data=form[0], files=form[1])
            except httpx.HTTPError as exc:
                return Answer(0, None, f"{type(exc).__name__}: {exc}")
            return Answer(r.status_code, r.headers.get("retry-after"), r.text[:300])

        with ThreadPoolExecutor(max_workers=threads) as pool:
            return list(pool.map(one, forms))
