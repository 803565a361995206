"""The Export tab's deploy formats in the real page (headless Chromium), on a tiny random llama standing in
for the demo model (no real model is loaded): a run compressed in the Compress tab, exported as a q8_0 GGUF,
then a refused export that leaves the page as it was.

Run alone: ``python -m pytest -m browser tests/test_browser_export.py``; the screenshots go to
``$SLIMLAB_SCREENSHOTS`` (else a temporary folder). Skipped without chromium and chromedriver.
"""
from __future__ import annotations

import gguf
import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

browser = pytest.importorskip("test_browser", reason="selenium or a headless browser is missing")
By, Keys = browser.By, browser.Keys
shots = browser.shots  # a fixture


@pytest.fixture(scope="module")
def app_url(data_dir, tmp_path_factory):
    """The app with "demo" mapped to a tiny llama (the page's load event loads it) and outputs in a temp folder."""
    from tiny import save_model_dir

    from engine import load_model
    from ui import build_app, launch_kwargs
    from ui.state import MODELS

    tiny = save_model_dir(tmp_path_factory.mktemp("tiny") / "llama", "llama", max_position_embeddings=2048)
    monkey = pytest.MonkeyPatch()
    monkey.setenv("SLIMLAB_OUTPUT_DIR", str(tmp_path_factory.mktemp("outputs")))
    monkey.setattr(MODELS, "loader", lambda spec, **kw: load_model(str(tiny) if spec == "demo" else spec, **kw))
    monkey.setattr(MODELS, "_models", type(MODELS._models)())
    app = build_app(preload_demo=False)
    app.queue().launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", **launch_kwargs())
    yield app.local_url
    app.close()
    monkey.undo()


page = browser.page  # one browser on app_url above, "demo" (the tiny llama) loaded


def _type(element, value: str) -> None:
    element.send_keys(Keys.CONTROL, "a")
    element.send_keys(value, Keys.TAB)


def _box(driver, tab: str, label: str):
    """A text box (gradio renders some as textarea) or number input, by the label shown above it."""
    return driver.find_element(By.XPATH, _BOX.format(tab=tab, label=label))


def _boxes(driver, tab: str, label: str) -> list:
    """``_box``'s matches, none while the box is not rendered yet (e.g. an accordion still opening)."""
    return driver.find_elements(By.XPATH, _BOX.format(tab=tab, label=label))


_BOX = "//*[@id='tab-{tab}']//label[.//span[normalize-space()='{label}']]//*[self::input or self::textarea]"


def _radio(driver, tab: str, label: str) -> None:
    driver.find_element(By.XPATH, f"//*[@id='tab-{tab}']//label[normalize-space()='{label}']").click()


def test_a_run_exports_as_gguf_and_a_refusal_keeps_what_the_tab_showed(page, shots, tmp_path):
    text, wait, field = browser.text, browser.wait, _box
    page.find_element(By.ID, "tab-compress-button").click()
    browser.choose(page, "compress", "Method", "FASP")
    page.find_element(By.XPATH, "//*[@id='tab-compress']//button[.//span[normalize-space()='Calibration data']]").click()
    wait(page, lambda: _boxes(page, "compress", "Samples"), 30, "the opened calibration fields")  # busy machines
    _type(field(page, "compress", "Samples"), "8")
    _type(field(page, "compress", "Tokens per sample"), "64")
    page.find_element(By.XPATH, "//*[@id='tab-compress']//button[normalize-space()='Run']").click()
    wait(page, lambda: "run 1" in text(page, "slimlab-status"), 300, "the compression run")

    page.find_element(By.ID, "tab-export-button").click()
    _radio(page, "export", "GGUF (llama.cpp)")
    wait(page, lambda: field(page, "export", "Output path").get_attribute("value").endswith("-run1.gguf"), 30,
         "the GGUF default path")
    browser.choose(page, "export", "Weights", "q8_0")
    out = tmp_path / "tiny-q8_0.gguf"
    _type(field(page, "export", "Output path"), str(out))
    page.find_element(By.XPATH, "//*[@id='tab-export']//button[normalize-space()='Save']").click()
    wait(page, lambda: "Exported run 1" in text(page, "export-status"), 120, "the export's report")
    status = text(page, "export-status")
    assert str(out) in status and "q8_0" in status and "llama-cli -m" in status
    assert gguf.GGUFReader(out).fields["general.architecture"].contents() in ("llama", "deci")
    page.save_screenshot(str(shots / "export-gguf.png"))

    _type(field(page, "export", "Result to export"), str(tmp_path))  # a folder that is not a SlimLab result
    _type(field(page, "export", "Output path"), str(tmp_path / "other.gguf"))
    page.find_element(By.XPATH, "//*[@id='tab-export']//button[normalize-space()='Save']").click()
    wait(page, lambda: any("is not a SlimLab result" in t for t in browser.toasts(page)), 60, "the refusal toast")
    assert text(page, "export-status") == status and "Error" not in text(page, "export-status") and not (tmp_path / "other.gguf").exists()
    assert page.find_element(By.XPATH, "//*[@id='tab-export']//button[normalize-space()='Save']").is_enabled()
    page.save_screenshot(str(shots / "export-refused.png"))
    page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", browser.NARROW)
    try:
        width, viewport = page.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
        assert width <= viewport, "the Export tab scrolls sideways at 412 px"
        page.save_screenshot(str(shots / "export-narrow-412.png"))
    finally:
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert browser.console_errors(page) == []
