"""report.html in a real browser: headless Chromium driven by Selenium. No console errors, one map cell per compared
sequence, and a click on a diverged cell shows both continuations; a screenshot is kept in the run directory."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from harness import html

from . import synthetic_run

pytestmark = pytest.mark.process  # starts Chromium

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
DRIVER = shutil.which("chromedriver")


def open_page(path: Path):
    if not CHROMIUM or not DRIVER:
        pytest.skip("headless Chromium is not installed (apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1300,1000",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    driver.get(path.resolve().as_uri())
    return driver


def check_page(report: Path, sequences: int) -> Path:
    """The checks on any report.html with a divergence map; returns the screenshot's path."""
    from selenium.webdriver.common.by import By

    driver = open_page(report)
    try:
        cells = driver.find_elements(By.CSS_SELECTOR, "table.map td.cell")
        assert len(cells) == sequences
        # a diverged cell, else a close one (a near-tie flip: the tokens diverge there too)
        diverged = driver.find_elements(By.CSS_SELECTOR, "table.map td.cell.diverged[data-d]") or (
            driver.find_elements(By.CSS_SELECTOR, "table.map td.cell.close[data-d]")
        )
        assert diverged, "no diverged cell to click"
        panel = driver.find_element(By.ID, "detail")
        assert not panel.is_displayed()
        driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", diverged[0])
        diverged[0].click()
        assert panel.is_displayed()
        ref = panel.find_element(By.CSS_SELECTOR, "pre.cont-ref").text
        other = panel.find_element(By.CSS_SELECTOR, "pre.cont-other").text
        assert ref and other and ref != other
        assert "reference margin" in panel.text and "(chosen)" in panel.text
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert not errors, errors
        shot = report.parent / "report.png"
        driver.execute_script("document.getElementById('map').scrollIntoView()")
        driver.save_screenshot(str(shot))
        return shot
    finally:
        driver.quit()


def test_report_in_headless_chromium(tmp_path: Path):
    res = synthetic_run.build(tmp_path, sequences=150, prompts=30, steps=24)
    assert html.write(res, res.run_dir, None, []) == []
    shot = check_page(res.run_dir / "report.html", sum(len(v.comparisons) for v in res.verdicts))
    assert res.run_dir / "report.png" == shot
    assert shot.stat().st_size > 10_000
