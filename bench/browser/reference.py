#!/usr/bin/env python3
"""The login flow done directly with Python Selenium (Debian's chromium + chromedriver).

The reference side of baton's browser benchmark: the same flow as
examples/browser-login.json, the same Chromium flags, the same browser-side timing
(PerformanceNavigationTiming, and the click -> dashboard time stamped in the page), so
baton's figures can be set against it. Prints JSON.

  .venv/bin/python bench/browser/reference.py --repeat 20 --url http://127.0.0.1:8088/login \
      --json-out selenium.json
"""
import argparse
import json
import statistics
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--password-store=basic", "--window-size=1280,800",
]

# The same page-side stamps baton uses: first input event of the click, and the moment
# the 2000th dashboard row exists (MutationObserver), both on the browser's clock.
ARM = """
sessionStorage.removeItem('__in');
addEventListener('pointerdown', e => { if (!sessionStorage.getItem('__in')) sessionStorage.setItem('__in', String(performance.timeOrigin + e.timeStamp)); }, true);
addEventListener('click', e => { if (!sessionStorage.getItem('__in')) sessionStorage.setItem('__in', String(performance.timeOrigin + e.timeStamp)); }, true);
"""
WAIT = """
const done = arguments[arguments.length - 1];
const xp = '//table[@id="orders"]//tr[2000]';
const holds = () => { const el = document.evaluate(xp, document, null, XPathResult.FIRST_ORDERED_NODE_TYPE, null).singleNodeValue; return el && el.getClientRects().length > 0; };
const finish = () => done({at: performance.timeOrigin + performance.now(), input: Number(sessionStorage.getItem('__in'))});
if (holds()) finish(); else { const o = new MutationObserver(() => { if (holds()) { o.disconnect(); finish(); } }); o.observe(document, {subtree: true, childList: true}); }
"""
NAV = "const n = performance.getEntriesByType('navigation')[0]; return n ? n.toJSON() : null;"


def one_run(url, driver_path):
    options = webdriver.ChromeOptions()
    for f in FLAGS:
        options.add_argument(f)
    profile = tempfile.mkdtemp(prefix="selenium-ref-")
    options.add_argument(f"--user-data-dir={profile}")
    options.add_experimental_option("prefs", {"session.restore_on_startup": 4, "session.startup_urls": ["about:blank"]})
    t0 = time.perf_counter()
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    t1 = time.perf_counter()
    try:
        driver.set_script_timeout(30)
        driver.get(url)
        nav = driver.execute_script(NAV)
        t2 = time.perf_counter()
        driver.find_element(By.XPATH, '//input[@id="username"]').send_keys("alice")
        driver.find_element(By.XPATH, '//input[@type="password"]').send_keys("s3cret-pass")
        button = driver.find_element(By.XPATH, '//button[text()="Login"]')
        driver.execute_script(ARM)
        t3 = time.perf_counter()
        button.click()
        stamps = driver.execute_async_script(WAIT)
        t4 = time.perf_counter()
    finally:
        driver.quit()
    t5 = time.perf_counter()
    return {
        "sessionStartMs": (t1 - t0) * 1000,
        "pageLoadWallMs": (t2 - t1) * 1000,
        "ttfbMs": nav["responseStart"],
        "domContentLoadedMs": nav["domContentLoadedEventEnd"],
        "loadMs": nav["loadEventEnd"],
        "interactionWallMs": (t4 - t3) * 1000,
        "interactionBrowserMs": stamps["at"] - stamps["input"],
        "flowMs": (t4 - t1) * 1000,
        "totalMs": (t5 - t0) * 1000,
    }


def summary(values):
    s = sorted(values)
    def pct(q):
        pos = q * (len(s) - 1)
        lo, hi = int(pos), min(int(pos) + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)
    return {"median": statistics.median(s), "p90": pct(0.9), "min": s[0], "max": s[-1], "count": len(s)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:8088/login")
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    p.add_argument("--json-out")
    a = p.parse_args()
    runs = [one_run(a.url, a.chromedriver) for _ in range(a.repeat)]
    out = {
        "tool": "python-selenium",
        "url": a.url,
        "repeat": a.repeat,
        "runs": runs,
        "summary": {k: summary([r[k] for r in runs]) for k in runs[0]},
    }
    text = json.dumps(out, indent=2)
    if a.json_out:
        with open(a.json_out, "w") as f:
            f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
