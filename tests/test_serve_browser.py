"""The demo page in a real browser: headless Chromium (Debian's chromium + chromedriver, through Selenium) against a
real `rnnsent serve` process on loopback. It types a review, presses the button and reads the answer from the DOM."""
import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest

import rnnsent
from rnnsent.inference.loading import load_checkpoint
from rnnsent.serve.process import ServerProcess, environment

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
DOCS_SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "serve.png"
REVIEW = "A moving film with a wonderful cast: I loved every minute of it. <b>Not</b> bold & not broken."

if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
    pytest.skip(
        "no headless browser: install Debian's chromium and chromium-driver (.ci/run does)", allow_module_level=True
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="the browser test drives chromium through selenium")
pytest.importorskip("fastapi", reason="rnnsent serve needs the serve extra: pip install 'rnnsent[serve]'")

from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402


@pytest.fixture
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=900,760"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})  # console and network
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_classifies_a_typed_review(browser, tmp_path):
    env = environment(OMP_NUM_THREADS="1", RNNSENT_CACHE=str(tmp_path / "cache"))
    with ServerProcess("gru", cwd=tmp_path, env=env, log=tmp_path / "server.log") as server:
        browser.get(server.url + "/")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda d: "parameters" in d.find_element(By.ID, "model").text)  # /v1/model answered
        box = browser.find_element(By.ID, "review")
        box.send_keys(REVIEW)
        browser.find_element(By.ID, "go").click()
        wait.until(expected_conditions.visibility_of_element_located((By.ID, "label")))
        wait.until(lambda d: d.find_element(By.ID, "label").text != "")
        wait.until(lambda d: d.find_element(By.ID, "go").is_enabled())  # predict, and explain if there is one, done
        label = browser.find_element(By.ID, "label").text
        probability = float(browser.find_element(By.ID, "probability").text)
        width = browser.find_element(By.ID, "probability-bar").value_of_css_property("width")
        rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "#classes tr")]
        errors = browser.find_element(By.ID, "error").text
        shown_html = browser.find_element(By.ID, "words").get_attribute("innerHTML")
        highlighted = [w.text for w in browser.find_elements(By.CSS_SELECTOR, "#words span")]
        browser.save_screenshot(str(tmp_path / "page.png"))
    expected = rnnsent.predict(load_checkpoint("gru"), [REVIEW])[0]
    assert errors == ""
    assert label == expected.label
    assert probability == pytest.approx(expected.probabilities[expected.label], abs=1e-4)  # shown to 4 decimals
    assert float(width.removesuffix("px")) > 0
    assert len(rows) == 2 and rows[0].startswith("negative") and rows[1].startswith("positive")
    if all(importlib.util.find_spec(m) for m in ("rnnsent.inference.explain", "captum")):  # the words, by attribution
        assert "<b>Not</b>" in highlighted and "wonderful" in highlighted, highlighted
        assert "&lt;b&gt;" in shown_html and "<b>" not in shown_html, "the review's markup is shown as text, never HTML"
    else:
        assert highlighted == []
    assert (tmp_path / "page.png").stat().st_size > 1000
    if os.environ.get("RNNSENT_UPDATE_DOCS_SCREENSHOT"):  # the docs' copy, on request only: tests write no repo file
        DOCS_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "page.png", DOCS_SCREENSHOT)


def test_docs_page_loads_nothing_from_elsewhere(browser, tmp_path):
    env = environment(OMP_NUM_THREADS="1", RNNSENT_CACHE=str(tmp_path / "cache"))
    with ServerProcess("gru", cwd=tmp_path, env=env, log=tmp_path / "server.log") as server:
        browser.get(server.url + "/docs")
        WebDriverWait(browser, 60).until(lambda d: "/v1/explain" in d.find_element(By.TAG_NAME, "body").text)
        headings = [h.text for h in browser.find_elements(By.TAG_NAME, "h2")]
        link = browser.find_element(By.CSS_SELECTOR, 'a[href="/openapi.json"]')
        requested = [json.loads(e["message"])["message"] for e in browser.get_log("performance")]
        console = browser.get_log("browser")
    urls = {m["params"]["request"]["url"] for m in requested if m["method"] == "Network.requestWillBeSent"}
    network = {u for u in urls if u.split(":")[0] in ("http", "https", "ws", "wss")}  # (not chrome:// nor data:)
    assert server.url + "/docs" in network and all(u.startswith(server.url + "/") for u in network), network
    assert console == [], console
    assert {"POST /v1/predict", "POST /v1/explain", "GET /v1/model", "GET /healthz"} <= set(headings), headings
    assert link.is_displayed()
