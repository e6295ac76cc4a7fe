"""`vlt5r eval` / `vlt5r report` end to end: results JSON against the schema, tables, bar charts, the retrieval
HTML page (and headless Chromium when installed), comparison.json, and the one-line errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image
from test_eval_tasks import retrieval_data, sugar_crepe_data, winoground_data

from evaluation.results import (
    RESULT_SCHEMA,
    load_records,
    markdown_table,
    validate_record,
)
from feature_extraction.tiny import make_openai_clip
from vlt5r.main import main


@pytest.fixture(scope="module")
def eval_run(tiny_vit_pt: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("eval")
    sc, sc_images, _, _ = sugar_crepe_data(tmp / "sc")
    wg, _, _, _ = winoground_data(tmp / "wg")
    rt, rt_images, _, _ = retrieval_data(tmp / "rt")
    args = ["eval", "--task", "sugar_crepe", "winoground", "retrieval", "--data", str(sc), str(wg), str(rt),
            "--images", str(sc_images), "-", str(rt_images), "--quiet"]
    second = make_openai_clip(tmp / "other.pt", seed=1)
    assert main([*args, "--model", str(tiny_vit_pt), "--out", str(tmp / "a.json"), "--plots", str(tmp / "plots")]) == 0
    assert main([*args, "--model", str(second), "--out", str(tmp / "b.json")]) == 0
    return {"tmp": tmp, "a": tmp / "a.json", "b": tmp / "b.json", "plots": tmp / "plots", "sc": sc}


def test_results_file_validates(eval_run: dict[str, Path]) -> None:
    data = json.loads(eval_run["a"].read_text())
    assert data["format_version"] == 1 and [r["task"] for r in data["results"]] == \
        ["sugar_crepe", "winoground", "retrieval"]
    for record in data["results"]:
        assert validate_record(record) == []
        assert record["precision"] == "fp32" and record["counts"]["missing_images"] == 1
    jsonschema = pytest.importorskip("jsonschema")  # the documented schema is a real JSON Schema
    for record in data["results"]:
        jsonschema.validate(record, RESULT_SCHEMA)


def test_validator_names_what_is_wrong() -> None:
    good = {"format_version": 1, "task": "t", "model": "m", "precision": "fp32", "dataset": "d",
            "metrics": {"a": 0.5}, "counts": {"rows": 1, "scored": 1, "malformed_rows": 0, "missing_images": 0}}
    assert validate_record(good) == []
    expected = "record.precision: expected one of ['fp32', 'fp16', 'bf16', 'unknown']"
    assert validate_record({**good, "precision": "fp8"}) == [expected]
    assert validate_record({**good, "metrics": {"a": "high"}}) == ["record.metrics.a: expected number, got str"]
    assert "record.counts.scored: missing" in validate_record({**good, "counts": {"rows": 1}})


def test_plots_and_page_written(eval_run: dict[str, Path]) -> None:
    plots = eval_run["plots"]
    for name in ("sugar_crepe.png", "winoground.png", "retrieval.png", "table.md"):
        assert (plots / name).stat().st_size > 500, name
    with Image.open(plots / "sugar_crepe.png") as im:
        assert im.size[0] > 400 and im.size[1] > 300
    page = next(plots.glob("retrieval_*.html")).read_text()
    assert page.count('<figure class="hit">') >= 1 and "data:image/jpeg;base64," in page
    assert "image_retrieval_recall@1" in page


def test_report_puts_models_side_by_side(eval_run: dict[str, Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "report"
    assert main(["report", str(eval_run["a"]), str(eval_run["b"]), "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert table.count("tiny_vit.pt") == 3 and table.count("other.pt") == 3
    assert "### winoground" in table and "| model | precision | text | image | group | scored | skipped |" in table
    assert (out / "sugar_crepe.png").is_file() and len(list(out.glob("retrieval_*.html"))) == 2
    if os.environ.get("TEST_ARTIFACTS"):
        Path(os.environ["TEST_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
        shutil.copy(out / "sugar_crepe.png", Path(os.environ["TEST_ARTIFACTS"]) / "eval_sugar_crepe.png")


def test_report_renders_comparison_json(tmp_path: Path, capsys) -> None:
    comparison = tmp_path / "comparison.json"
    comparison.write_text(json.dumps({"clip_image": {"mrr@10": 0.17, "recall@1": 0.11},
                                      "joint": {"mrr@10": 0.98, "recall@1": 0.97}}))
    records = load_records(comparison)
    assert [r["model"] for r in records] == ["clip_image", "joint"] and all(validate_record(r) == [] for r in records)
    assert main(["report", str(comparison), "--out", str(tmp_path / "r")]) == 0
    assert "| joint | unknown | 98.0 | 97.0 |" in capsys.readouterr().out
    assert (tmp_path / "r" / "comparison_comparison_.png").is_file() or list((tmp_path / "r").glob("*.png"))


def test_markdown_table_prints_percent_and_dash_for_nan() -> None:
    rec = {"task": "classification", "model": "m", "precision": "fp32", "metrics": {"acc1": 0.5, "acc5": float("nan")},
           "counts": {"scored": 4, "malformed_rows": 1, "missing_images": 2}}
    assert "| m | fp32 | 50.0 | — | 4 | 3 |" in markdown_table([rec])


def test_cli_errors_are_one_line(eval_run: dict[str, Path], tiny_vit_pt: Path, capsys) -> None:
    base = ["eval", "--model", str(tiny_vit_pt)]
    assert main([*base, "--task", "nope", "--data", "x"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert main([*base, "--task", "winoground", "sugar_crepe", "--data", "x"]) == 2
    missing = eval_run["tmp"] / "absent.jsonl"
    assert main([*base, "--task", "winoground", "--data", str(missing)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and str(missing) in err[-1]
    assert main([*base, "--task", "sugar_crepe", "--data", str(eval_run["sc"]), "--out", str(eval_run["a"])]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["eval", "--list"]) == 0 and "aro_vg_relation" in capsys.readouterr().out


CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def test_retrieval_page_in_headless_chromium(eval_run: dict[str, Path], tmp_path: Path) -> None:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium/chromedriver not installed: run `bash scripts/install_browser.sh` (make setup does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-dev-shm-usage",
                 "--window-size=1200,900", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        page = next(eval_run["plots"].glob("retrieval_*.html"))
        driver.get(page.resolve().as_uri())
        figures = driver.find_elements(By.CSS_SELECTOR, ".query figure")
        assert figures and driver.find_elements(By.CSS_SELECTOR, "figure.hit")
        loaded = driver.execute_script("return Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert loaded, "a thumbnail did not decode"
        assert driver.find_elements(By.CSS_SELECTOR, "img.query-image")  # an image→text query is shown too
        assert driver.save_screenshot(str(tmp_path / "page.png"))
        if os.environ.get("TEST_ARTIFACTS"):
            Path(os.environ["TEST_ARTIFACTS"]).mkdir(parents=True, exist_ok=True)
            shutil.copy(tmp_path / "page.png", Path(os.environ["TEST_ARTIFACTS"]) / "eval_retrieval_page.png")
    finally:
        driver.quit()
