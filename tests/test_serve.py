"""The HTTP server: every endpoint through FastAPI's TestClient, every bad request as a 4xx JSON error, and a real
uvicorn process on 127.0.0.1 answering 200 concurrent requests exactly like the in-process searcher."""

from __future__ import annotations

import io
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from helpers_search import ServerProcess, World, make_world_fixture, server_args
from PIL import Image

from retrieval.formats import KBEntry, read_queries
from retrieval.querying import image_from_path, open_searcher
from retrieval.querying.app import ServerConfig, create_app

world = make_world_fixture()
QUESTION = "Which entry describes the red shape in this picture?"


@pytest.fixture(scope="module")
def searcher(world: World):  # noqa: ANN201
    s = open_searcher(world.index, world.kb, str(world.encoder))
    s.encoder.load()
    return s


@pytest.fixture(scope="module")
def client(searcher, world: World):  # noqa: ANN201
    cfg = ServerConfig(images_dir=world.data, max_upload_mb=0.05, max_pixels=256 * 256, max_k=20,
                       max_question_chars=200)
    with TestClient(create_app(searcher, cfg), raise_server_exceptions=False) as c:
        yield c


def png_bytes(size: tuple[int, int] = (40, 40), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def scene_upload(world: World, scene: str = "test-00000") -> dict:
    return {"image": (f"{scene}.png", world.scene(scene).read_bytes(), "image/png")}


def test_health(client: TestClient, world: World) -> None:
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["index"] == {"size": 64, "dim": 48, "factory": "Flat"}
    assert h["encoder"]["kind"] == "joint" and h["encoder"]["backbone_sha256"] and h["limits"]["max_k"] == 20


def test_search_answers_what_the_in_process_searcher_answers(client: TestClient, searcher, world: World) -> None:
    r = client.post("/search", data={"question": QUESTION, "k": "5"}, files=scene_upload(world))
    assert r.status_code == 200, r.text
    expected = searcher.search(QUESTION, image_from_path(world.scene("test-00000")), 5)
    hits = r.json()["hits"]
    assert [h["id"] for h in hits] == [e.id for e in expected]
    assert [h["score"] for h in hits] == pytest.approx([e.score for e in expected], abs=1e-6)
    assert hits[0]["title"] == expected[0].title and hits[0]["thumbnail"] == f"/kb-image/{expected[0].id}"
    assert len(client.post("/search", data={"question": QUESTION}, files=scene_upload(world)).json()["hits"]) == 10


def test_page_and_static_files(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for element in ('id="image"', 'id="question"', 'id="k"', 'id="results"', "/static/app.js"):
        assert element in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from the network
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "fetch(\"/search\"" in js.text
    assert client.get("/static/style.css").status_code == 200
    assert client.get("/static/../querying/app.py").status_code == 404


def test_kb_images_only_for_kb_ids_inside_the_folder(client: TestClient, searcher, world: World,
                                                     tmp_path: Path) -> None:
    r = client.get("/kb-image/E003")
    assert r.status_code == 200 and r.content == (world.data / "images" / "kb" / "E003.png").read_bytes()
    for bad in ["E999", "..%2Fkb.jsonl", "../../etc/passwd", "%2Fetc%2Fpasswd", "images/kb/E003.png"]:
        r = client.get(f"/kb-image/{bad}")
        assert r.status_code == 404 and "error" in r.json(), bad
    outside = tmp_path / "secret.png"
    outside.write_bytes(png_bytes())
    link = world.data / "images" / "kb" / "link.png"
    link.symlink_to(outside)
    searcher.kb.update({"Xdots": KBEntry("Xdots", "t", "x", "../" * 6 + str(outside).lstrip("/")),
                        "Xabs": KBEntry("Xabs", "t", "x", str(outside)),
                        "Xlink": KBEntry("Xlink", "t", "x", "images/kb/link.png"),
                        "Xtext": KBEntry("Xtext", "t", "x", "kb.jsonl")})
    try:
        for doc_id in ("Xdots", "Xabs", "Xlink", "Xtext"):
            assert client.get(f"/kb-image/{doc_id}").status_code == 404, doc_id
    finally:
        link.unlink()
        for doc_id in ("Xdots", "Xabs", "Xlink", "Xtext"):
            del searcher.kb[doc_id]


def truncated_png(world: World) -> bytes:
    data = world.scene("test-00000").read_bytes()
    return data[: len(data) // 2]


BAD_REQUESTS = {
    # name: (form fields, files, expected status)
    "non-image upload": ({"question": "q"}, {"image": ("kb.jsonl", b'{"id": 1}\n' * 20, "text/plain")}, 415),
    "truncated image": ({"question": "q"}, "truncated", 400),
    "empty image file": ({"question": "q"}, {"image": ("x.png", b"", "image/png")}, 400),
    "missing image": ({"question": "q"}, None, 400),
    "missing everything": ({"k": "3"}, None, 400),
    "k huge": ({"question": "q", "k": str(10**9)}, "scene", 400),
    "k zero": ({"question": "q", "k": "0"}, "scene", 400),
    "k negative": ({"question": "q", "k": "-3"}, "scene", 400),
    "k text": ({"question": "q", "k": "abc"}, "scene", 400),
    "k float": ({"question": "q", "k": "2.5"}, "scene", 400),
    "k over max": ({"question": "q", "k": "21"}, "scene", 400),
    "question too long": ({"question": "x" * 201}, "scene", 400),
    "oversize upload": ({"question": "q"}, {"image": ("big.png", os.urandom(120_000), "image/png")}, 413),
    "too many pixels": ({"question": "q"}, {"image": ("wide.png", png_bytes((300, 300)), "image/png")}, 413),
    "two images": ({"question": "q"}, [("image", ("a.png", b"1", "image/png")),
                                       ("image", ("b.png", b"2", "image/png"))], 400),
    "image as text field": ({"question": "q", "image": "/etc/passwd"}, None, 400),
}


@pytest.mark.parametrize("name", sorted(BAD_REQUESTS))
def test_bad_requests_are_4xx_json(client: TestClient, world: World, name: str) -> None:
    data, files, status = BAD_REQUESTS[name]
    if files == "scene":
        files = scene_upload(world)
    elif files == "truncated":
        files = {"image": ("t.png", truncated_png(world), "image/png")}
    r = client.post("/search", data=data, files=files)
    assert r.status_code == status, (r.status_code, r.text)
    assert isinstance(r.json()["error"], str) and r.json()["error"]


def test_bad_transport_is_4xx_json(client: TestClient) -> None:
    cases = [
        client.post("/search", json={"question": "q"}),  # not a form
        client.post("/search", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data; boundary=x"}),
        client.post("/search", content=b"a" * 10, headers={"content-type": "multipart/form-data"}),  # no boundary
        client.post("/search", content=iter([b"x" * 40_000] * 3),  # chunked, no Content-Length, too long
                    headers={"content-type": "multipart/form-data; boundary=x"}),
        client.get("/search"), client.get("/nope"), client.delete("/health"),
    ]
    assert [r.status_code for r in cases] == [400, 400, 400, 413, 405, 404, 405]
    assert all("error" in r.json() for r in cases)


def test_real_uvicorn_answers_200_concurrent_requests(world: World, searcher) -> None:
    queries = read_queries(world.queries)
    expected = {q.id: searcher.search(q.question, image_from_path(world.scene(q.image)), 5)[0].id for q in queries}
    images = {q.image: world.scene(q.image).read_bytes() for q in queries}
    with ServerProcess(server_args(world)) as server, httpx.Client(timeout=60) as http:

        def one(n: int) -> tuple[str, int, str | None]:
            q = queries[n % len(queries)]
            r = http.post(server.url + "/search", data={"question": q.question, "k": "5"},
                          files={"image": (f"{q.image}.png", images[q.image], "image/png")})
            return q.id, r.status_code, r.json()["hits"][0]["id"] if r.status_code == 200 else r.text

        start = time.monotonic()
        with ThreadPoolExecutor(max_workers=32) as pool:
            results = list(pool.map(one, range(200)))
        elapsed = time.monotonic() - start
        assert [s for _, s, _ in results] == [200] * 200, [r for r in results if r[1] != 200][:3]
        assert all(top1 == expected[qid] for qid, _, top1 in results)
        assert http.get(server.url + "/health").status_code == 200  # still up
        assert elapsed < 120
