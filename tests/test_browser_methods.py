"""The three learned or merged seed methods in the real page (headless Chromium) on a tiny random model: each is
picked from the Method menu, shows its own controls from its schema, runs, and draws its own charts (PruneNet's
reward and DISP-LLM's loss in the training-curve slot, DOTResize's merge map among the method's charts).

Run alone: ``python -m pytest -m browser tests/test_browser_methods.py``; screenshots go to
``$SLIMLAB_SCREENSHOTS`` (else a temporary folder).
"""
from __future__ import annotations

import re

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

from test_browser import console_errors, field, page, set_box, shots, shown, text, toasts, wait  # noqa: E402,F401  (skips without a browser)
from test_browser_search import app_url, traces  # noqa: E402,F401  (the app on a tiny checkpoint)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

CALIBRATION = {"Samples": "8", "Tokens per sample": "32"}
# label in the Method menu, a control only it has (set small: a quick run), the chart that must appear
METHODS = [
    ("PruneNet (learned policy, no data)", {"episodes": "2"}, "training-curve", "prunenet"),
    ("DISP-LLM (learned per-block channels)", {"steps": "3", "seqlen": "32"}, "training-curve", "disp"),
    ("DOTResize (merge neurons by optimal transport)", {}, "method-charts", "dotresize"),
]


def runs_so_far(driver) -> int:
    """The number of the page's newest run in its status line ("compressed: run N, ..."), 0 before the first."""
    found = re.search(r"compressed: run (\d+),", text(driver, "slimlab-status"))
    return int(found.group(1)) if found else 0


@pytest.mark.parametrize("label, params, chart, name", METHODS, ids=[m[3] for m in METHODS])
def test_each_seed_method_runs_in_the_page_with_its_own_chart(page, shots, label, params, chart, name):
    page.find_element(By.ID, "tab-compress-button").click()
    wait(page, lambda: page.find_elements(By.CSS_SELECTOR, "#tab-compress input[aria-label='Method']"), 60,
         "the Method menu")
    field(page, "compress", "Method").click()
    wait(page, lambda: page.find_elements(By.CSS_SELECTOR, "ul[role=listbox] li"), 10, "the method menu")
    next(i for i in page.find_elements(By.CSS_SELECTOR, "ul[role=listbox] li") if i.text.strip("✓\n ") == label).click()
    for param in params or {"reg": ""}:  # its own controls, from its schema
        wait(page, lambda: shown(page, param), 30, f"{name}'s control {param}")
    if not shown(page, "Tokens per sample"):  # the accordion opens once per page
        page.find_element(By.XPATH, "//button[.//span[normalize-space()='Calibration data']]").click()
        wait(page, lambda: shown(page, "Tokens per sample"), 30, "the calibration controls")
    for box, value in (CALIBRATION | params).items():
        set_box(page, box, value)
    ratio = field(page, "compress", "number input for Target ratio")
    ratio.send_keys(Keys.CONTROL, "a")
    ratio.send_keys("0.25", Keys.TAB)
    this_run = runs_so_far(page) + 1
    page.execute_script("arguments[0].click()", page.find_element(By.XPATH, "//button[normalize-space()='Run']"))
    wait(page, lambda: runs_so_far(page) == this_run or toasts(page), 300, f"the {name} run")
    assert not toasts(page), toasts(page)
    assert name.split("-")[0] in text(page, "result-card").lower().replace("-", "")
    wait(page, lambda: traces(page, chart, "scatter") + traces(page, chart, "bar") > 0, 30, f"{name}'s chart")
    page.execute_script(f"document.getElementById('{chart}').scrollIntoView()")
    page.save_screenshot(str(shots / f"method-{name}.png"))
    assert console_errors(page) == []
