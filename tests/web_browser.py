"""Headless Chromium (Debian's `chromium` and `chromium-driver`, installed by `install.sh --dev`)
driven by Selenium, for the web console's browser tests and its screenshots in docs/.

    .venv/bin/python -m tests.web_browser URL PASSWORD [--user admin] [--out docs/console]

takes a screenshot of each page of a running console (e.g. the demo's) into ``--out``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER = ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver")


def available() -> str | None:
    """Why no browser can run here, or None when one can."""
    if not any(Path(p).exists() for p in CHROMIUM) and not shutil.which("chromium"):
        return "Debian's chromium is not installed (bash install.sh --dev installs it)"
    if not any(Path(p).exists() for p in DRIVER) and not shutil.which("chromedriver"):
        return "Debian's chromium-driver is not installed (bash install.sh --dev installs it)"
    return None


def chrome(width: int = 1400, height: int = 900) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = next((p for p in CHROMIUM if Path(p).exists()), shutil.which("chromium") or "")
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 f"--window-size={width},{height}", "--force-device-scale-factor=1", "--lang=en-GB",
                 "--disable-extensions", "--no-first-run", "--password-store=basic"):
        options.add_argument(flag)
    driver_path = next((p for p in DRIVER if Path(p).exists()), shutil.which("chromedriver"))
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    browser.set_page_load_timeout(30)
    return browser


def wait(browser: webdriver.Chrome, timeout: float = 15.0) -> WebDriverWait:
    return WebDriverWait(browser, timeout, poll_frequency=0.1)


def login(browser: webdriver.Chrome, base: str, user: str, password: str) -> None:
    browser.get(base + "/login")
    browser.find_element(By.ID, "name").send_keys(user)
    browser.find_element(By.ID, "password").send_keys(password)
    browser.find_element(By.ID, "submit").click()
    wait(browser).until(EC.visibility_of_element_located((By.ID, "card-uplink")))


def screenshots(base: str, user: str, password: str, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    browser = chrome()
    taken = []
    try:
        browser.get(base + "/login")
        browser.find_element(By.ID, "name").send_keys(user)
        taken.append(_shot(browser, out / "login.png"))
        browser.find_element(By.ID, "password").send_keys(password)
        browser.find_element(By.ID, "submit").click()
        wait(browser).until(EC.visibility_of_element_located((By.ID, "card-uplink")))
        time.sleep(1.5)   # a settled picture, not a correctness wait
        taken.append(_shot(browser, out / "overview.png"))
        browser.get(base + "/#devices")
        wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".device")))
        time.sleep(1.5)
        taken.append(_shot(browser, out / "devices.png", full=True))
        browser.get(base + "/#events")
        wait(browser, 120).until(EC.presence_of_element_located((By.CSS_SELECTOR, ".event .evidence img")))
        time.sleep(1.5)
        taken.append(_shot(browser, out / "events.png"))
        browser.get(base + "/#camera/cam-01")
        wait(browser, 30).until(lambda b: b.find_element(By.ID, "picture").get_attribute("src"))
        wait(browser).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#overlay g.figure")))
        time.sleep(1.5)
        taken.append(_shot(browser, out / "camera.png"))
        # the rule editor: a zone drawn on the picture, its diff checked
        from selenium.webdriver.common.action_chains import ActionChains
        from selenium.webdriver.support.ui import Select
        Select(browser.find_element(By.ID, "kind")).select_by_value("zone_intrusion")
        browser.find_element(By.ID, "draw").click()
        overlay = browser.find_element(By.ID, "overlay")
        width, height = overlay.size["width"], overlay.size["height"]
        for x, y in ((700, 470), (960, 470), (1010, 640), (650, 640)):
            ActionChains(browser).move_to_element_with_offset(
                overlay, int(x * width / 1280 - width / 2), int(y * height / 720 - height / 2)).click().perform()
        browser.find_element(By.ID, "finish").click()
        wait(browser).until(lambda b: "zone_intrusion" in b.find_element(By.ID, "diff").text)
        wait(browser).until(lambda b: "checked" in b.find_element(By.ID, "apply-status").text)
        taken.append(_shot(browser, out / "rule-editor.png"))
    finally:
        browser.quit()
    return taken


def _shot(browser: webdriver.Chrome, path: Path, full: bool = False) -> Path:
    if full:
        height = browser.execute_script("return document.body.scrollHeight")
        browser.set_window_size(1400, min(max(900, height + 40), 3000))
    browser.save_screenshot(str(path))
    if full:
        browser.set_window_size(1400, 900)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("password")
    parser.add_argument("--user", default="admin")
    parser.add_argument("--out", type=Path, default=Path("docs/console"))
    args = parser.parse_args()
    for path in screenshots(args.url.rstrip("/"), args.user, args.password, args.out):
        print(path)


if __name__ == "__main__":
    main()
