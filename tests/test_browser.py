"""The search page in a real headless Chromium (Debian's, installed by scripts/install_browser.sh), driven by
Selenium: load the page, pick an image, type a question, submit, see the result rows (the in-process searcher's
top-k, with thumbnails), see an error for a request without image; a screenshot is kept as a test artefact
(``tmp_path`` and, when ``TEST_ARTIFACTS`` is set, that folder)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from helpers_search import ServerProcess, World, make_world_fixture, server_args

from retrieval.querying import image_from_path, open_searcher

world = make_world_fixture()
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
QUESTION = "Tell me about the object in the top left."
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1200,900")


@pytest.fixture
def driver(tmp_path: Path):  # noqa: ANN201
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("chromium/chromedriver not installed: run `bash scripts/install_browser.sh` (make setup does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    d = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    d.set_page_load_timeout(60)
    try:
        yield d
    finally:
        d.quit()


def save_screenshot(driver, tmp_path: Path, name: str) -> Path:  # noqa: ANN001
    path = tmp_path / name
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 1000
    if os.environ.get("TEST_ARTIFACTS"):
        target = Path(os.environ["TEST_ARTIFACTS"])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / name)
    return path


def test_page_in_headless_chromium(world: World, driver, tmp_path: Path) -> None:  # noqa: ANN001
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    scene = world.scene("test-00001")
    expected = open_searcher(world.index, world.kb, str(world.encoder)).search(QUESTION, image_from_path(scene), 6)
    with ServerProcess(server_args(world)) as server:
        driver.get(server.url + "/")
        wait = WebDriverWait(driver, 60)
        wait.until(ec.text_to_be_present_in_element((By.ID, "health"), "KB vectors"))
        driver.find_element(By.ID, "image").send_keys(str(scene))
        wait.until(lambda d: d.find_element(By.ID, "preview").get_attribute("hidden") is None)
        driver.find_element(By.ID, "question").send_keys(QUESTION)
        k = driver.find_element(By.ID, "k")
        k.clear()
        k.send_keys("6")
        driver.find_element(By.ID, "submit").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "tr.hit")) == 6)
        rows = driver.find_elements(By.CSS_SELECTOR, "tr.hit")
        assert [r.get_attribute("data-id") for r in rows] == [h.id for h in expected]
        first = rows[0]
        assert first.find_element(By.CSS_SELECTOR, ".title").text == expected[0].title
        assert first.find_element(By.CSS_SELECTOR, ".score").text == f"{expected[0].score:.4f}"
        assert expected[0].snippet[:30] in first.find_element(By.CSS_SELECTOR, ".snippet").text
        wait.until(lambda d: d.execute_script(
            "return [...document.querySelectorAll('td.thumb img')].every(i => i.complete && i.naturalWidth > 0)"))
        assert "6 results" in driver.find_element(By.ID, "status").text
        save_screenshot(driver, tmp_path, "search_page.png")

        driver.find_element(By.ID, "clear").click()  # no image: the joint encoder needs one -> the error is shown
        driver.find_element(By.ID, "submit").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "status"), "missing field 'image'"))
        assert driver.find_element(By.ID, "status").get_attribute("class") == "error"
        assert not driver.find_elements(By.CSS_SELECTOR, "tr.hit")
