"""The served page in a real headless Chromium: click an example, see the result, keep a screenshot.

Needs ``/usr/bin/chromium`` + ``/usr/bin/chromedriver`` (Debian: ``apt-get install chromium
chromium-driver``) and ``selenium``; skipped otherwise. The screenshot goes to
``tests/artifacts/app_browser.png`` for a person to look at.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from test_app import start_app_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path(shutil.which("chromedriver") or "/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found: apt-get install -y chromium chromium-driver")
    if not CHROMEDRIVER.exists():
        pytest.skip("chromedriver not found: apt-get install -y chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    profile = tmp_path_factory.mktemp("chromium-profile")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1280,1600", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    yield driver
    driver.quit()


def _visible_with_text(driver, text: str) -> list:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By

    return [e for e in driver.find_elements(By.XPATH, f"//*[contains(text(), '{text}')]") if e.is_displayed()]


def test_click_an_example_and_see_the_result(browser, tmp_path_factory: pytest.TempPathFactory) -> None:  # type: ignore[no-untyped-def]
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = start_app_server(tmp_path_factory)
    browser.get(url)
    wait = WebDriverWait(browser, 60)
    example = wait.until(lambda d: _visible_with_text(d, "phantom volume"))[0]
    assert "NOT FOR CLINICAL USE" in browser.find_element(By.TAG_NAME, "body").text
    example.click()  # a real click: fills the upload, which starts the analysis
    wait.until(lambda d: "Volume anomaly score" in d.find_element(By.ID, "score").text)
    score = browser.find_element(By.ID, "score").text
    assert "Slice" in score and "box" in score
    widths = {}
    for elem_id in ("input-image", "recon-image", "overlay-image"):
        img = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, f"#{elem_id} img"))[0]
        wait.until(lambda d: int(img.get_attribute("naturalWidth") or 0) >= 384)
        widths[elem_id] = int(img.get_attribute("naturalWidth"))
    assert widths["overlay-image"] > widths["input-image"]  # the map's colour bar
    verdict = browser.find_element(By.ID, "verdict")
    assert verdict.is_displayed() and "NO VERDICT" in verdict.text  # the tiny model has no healthy statistics
    assert verdict.location["y"] < browser.find_element(By.ID, "overlay-image").location["y"]  # above the maps
    assert browser.find_element(By.ID, "slice").is_displayed()  # the volume's slice slider
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "app_browser.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
