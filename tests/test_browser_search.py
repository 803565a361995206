"""The searched schedule in the real page (headless Chromium) on a tiny random model: the live best-KL chart
fills while the search runs, Stop keeps the page as it was, and the next Run (reusing the level database)
ends with the searched plan beside the uniform one.

Run alone: ``python -m pytest -m browser tests/test_browser_search.py``; the screenshot goes to
``$SLIMLAB_SCREENSHOTS`` (else a temporary folder). The page's own first load asks for the demo model; here
the model cache hands it a tiny random checkpoint instead, so nothing real is loaded.
"""
from __future__ import annotations

import os

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

from test_browser import console_errors, field, page, shots, shown, text, toasts, wait  # noqa: E402,F401  (skips without a browser)
from test_browser import test_no_sideways_scroll_at_412_px  # noqa: E402,F401  (the same check, on the tiny page with the live chart)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

CALIBRATION = {"Samples": "8", "Tokens per sample": "32"}
SEARCH = {"offspring": "4", "tokens": "256", "first_tokens": "64", "level_step": "0.2",
          "max_level": "0.4"}


@pytest.fixture(scope="module")
def app_url(data_dir, tmp_path_factory):
    """The app as test_browser's ``page`` opens it, its model cache handing out the tiny checkpoint for "demo"."""
    from tiny import save_model_dir
    from ui import build_app, launch_kwargs
    from ui.state import MODELS

    tiny = str(save_model_dir(tmp_path_factory.mktemp("tiny") / "llama", "llama", num_hidden_layers=4))
    real, env = MODELS.loader, os.environ.get("SLIMLAB_CACHE")
    MODELS.loader = lambda spec, **kw: real(tiny if spec == "demo" else spec, **kw)
    demo = MODELS._models.pop("demo", None)  # a real demo an earlier module loaded would be served instead
    os.environ["SLIMLAB_CACHE"] = str(tmp_path_factory.mktemp("cache"))  # the level database goes there
    app = build_app(preload_demo=False)
    app.queue().launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", **launch_kwargs())
    yield app.local_url
    app.close()
    MODELS.loader = real
    MODELS._models.pop("demo", None)
    if demo is not None:
        MODELS._models["demo"] = demo
    if env is None:
        os.environ.pop("SLIMLAB_CACHE")
    else:
        os.environ["SLIMLAB_CACHE"] = env


def traces(driver, elem_id: str, kind: str) -> int:
    return len(driver.find_elements(By.CSS_SELECTOR, f"#{elem_id} .{kind}layer .trace"))


def test_the_search_draws_its_curve_live_then_the_plan_beside_uniform(page, shots):
    page.find_element(By.ID, "tab-compress-button").click()
    wait(page, lambda: "Planned size" in text(page, "planned-size"), 60, "the tab's starting recipe")
    page.find_element(By.XPATH, "//label[.//span[normalize-space()='Searched (EvoPress)']]").click()
    wait(page, lambda: shown(page, "generations"), 30, "the searched controls")
    dense, sequential = (page.find_element(By.CSS_SELECTOR, f"#tab-compress input[type=radio][value='{v}']")
                         for v in ("dense", "sequential"))
    assert dense.is_selected() and not sequential.is_selected()  # the inputs choice, dense by default
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", dense)
    page.save_screenshot(str(shots / "searched-controls.png"))
    page.find_element(By.XPATH, "//button[.//span[normalize-space()='Calibration data']]").click()
    wait(page, lambda: shown(page, "Tokens per sample"), 30, "the calibration controls")
    for name, value in (CALIBRATION | SEARCH).items():
        box = field(page, "compress", name)
        box.send_keys(Keys.CONTROL, "a")
        box.send_keys(value, Keys.TAB)
    ratio = field(page, "compress", "number input for Target ratio")
    ratio.send_keys(Keys.CONTROL, "a")
    ratio.send_keys("0.2", Keys.TAB)
    run, stop = (page.find_element(By.XPATH, f"//button[normalize-space()='{name}']") for name in ("Run", "Stop"))
    generations = field(page, "compress", "generations")
    generations.send_keys(Keys.CONTROL, "a")
    generations.send_keys("100000", Keys.TAB)  # runs until stopped
    page.execute_script("arguments[0].click()", run)
    wait(page, lambda: traces(page, "live-curve", "scatter") == 1 or toasts(page), 600, "the live curve")  # 300 s ran out at load 7
    assert not toasts(page)
    page.execute_script("document.getElementById('plan-chart').scrollIntoView()")
    page.save_screenshot(str(shots / "searched-live-running.png"))
    page.execute_script("arguments[0].click()", stop)  # the button may sit under a toast
    wait(page, lambda: any("Cancelled" in t for t in toasts(page)), 120, "the Stop toast")
    assert "No compressed model yet" in text(page, "result-card") and "none yet" in text(page, "slimlab-status")
    for box in page.find_elements(By.CSS_SELECTOR, ".toast-body button, .toast-close"):
        if box.is_displayed():
            box.click()
    generations = field(page, "compress", "generations")
    generations.send_keys(Keys.CONTROL, "a")
    generations.send_keys("6", Keys.TAB)
    page.execute_script("arguments[0].click()", run)
    wait(page, lambda: "run 1" in text(page, "slimlab-status"), 300, "the searched run to finish")
    wait(page, lambda: traces(page, "plan-chart", "bar") == 2, 30, "the plan beside the uniform plan")
    assert "Searched over levels [0.0, 0.2, 0.4] in 6 generations" in page.page_source
    assert "0 levels built, 2 reused from" in page.page_source  # the stopped run's level database
    assert "each layer compressed on the original" in page.page_source  # the default inputs, said
    page.execute_script("document.getElementById('plan-chart').scrollIntoView()")
    page.save_screenshot(str(shots / "searched-live-and-plan.png"))
    assert console_errors(page) == []
