"""Screenshots of a browser page for the README: python docs/screenshot.py PAGE.html OUT_DIR --feature 0:185

Opens the page in headless Chromium, expands the feature's tree node, selects it (forest.png),
then shows it side by side with its children (forest-side.png). Prints the page's open time.
"""

import argparse
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def main() -> None:
    """Write forest.png and forest-side.png of one feature of the page."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("page", help="HTML file written by `hsae browse`")
    ap.add_argument("out", help="directory for the PNG files")
    ap.add_argument("--feature", default="0:0", help="LEVEL:ID of a root with children")
    a = ap.parse_args()
    o = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        o.add_argument(arg)
    d = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=o)
    try:
        d.get(Path(a.page).resolve().as_uri())
        print(f"usable after {d.execute_script('return window.HSAE_READY'):.0f} ms")
        row = d.find_element(By.CSS_SELECTOR, f'#forest .row[data-f="{a.feature}"]')
        row.find_element(By.CSS_SELECTOR, ".toggle").click()
        row.click()
        d.execute_script("arguments[0].scrollIntoView({block: 'center'})", row)
        time.sleep(0.3)
        d.save_screenshot(str(Path(a.out) / "forest.png"))
        d.find_element(By.ID, "btn-side").click()
        time.sleep(0.3)
        d.save_screenshot(str(Path(a.out) / "forest-side.png"))
    finally:
        d.quit()


if __name__ == "__main__":
    main()
