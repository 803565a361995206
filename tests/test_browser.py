"""The real page in headless Chromium (Selenium + Debian's chromium and chromium-driver), on the demo model.

Run alone: ``python -m pytest -m browser tests/test_browser.py``; screenshots go to ``$SLIMLAB_SCREENSHOTS``
(else a temporary folder). ``.ci/run`` installs chromium when it is missing; without a browser this
module is skipped with the reason.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Callable

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.demo]

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
DRIVER = shutil.which("chromedriver")
if CHROMIUM is None or DRIVER is None:
    pytest.skip("no headless browser: install Debian's chromium and chromium-driver "
                "(apt-get install -y chromium chromium-driver)", allow_module_level=True)

LOAD_SECONDS = 600  # the demo model's first load (a GGUF dequantized once), on a busy machine


@pytest.fixture(scope="module")
def app_url(data_dir):
    from ui import build_app, launch_kwargs

    app = build_app(preload_demo=False)  # the page's own load event loads the demo model
    app.queue().launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", **launch_kwargs())
    yield app.local_url
    app.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = Path(os.environ.get("SLIMLAB_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def page(app_url):
    """One browser on the app, the demo model loaded."""
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,2000"):
        options.add_argument(arg)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.get(app_url)
    wait(driver, lambda: "none yet" in text(driver, "slimlab-status"), LOAD_SECONDS, "the demo model to load")
    yield driver
    driver.quit()


def text(driver, elem_id: str) -> str:
    """The element's text, or "" while the page has not rendered it."""
    found = driver.find_elements(By.ID, elem_id)
    return found[0].text if found else ""


def wait(driver, done: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if done():
            return
        time.sleep(0.25)
    raise AssertionError(f"waited {seconds:.0f} s for {what}; status: {text(driver, 'slimlab-status')!r}")


def field(driver, tab: str, label: str):
    return driver.find_element(By.CSS_SELECTOR, f"#tab-{tab} input[aria-label='{label}']")


def shown(driver, label: str) -> bool:
    """Whether the Compress tab's input ``label`` is on screen (False while gradio re-renders it)."""
    try:
        return field(driver, "compress", label).is_displayed()
    except (NoSuchElementException, StaleElementReferenceException):
        return False


def set_box(driver, label: str, value: str) -> None:
    """Type ``value`` into the visible Compress-tab input named ``label`` (another owner may have one hidden)."""
    box = next(b for b in driver.find_elements(By.CSS_SELECTOR, f"#tab-compress input[aria-label='{label}']")
               if b.is_displayed())
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(value, Keys.TAB)


def open_accordion(driver, title: str, inside: str) -> None:
    """Open the Compress tab's accordion ``title`` unless its control ``inside`` already shows."""
    if not shown(driver, inside):
        driver.find_element(By.XPATH, f"//button[.//span[normalize-space()='{title}']]").click()
        wait(driver, lambda: shown(driver, inside), 30, f"the {title} controls")


def choose(driver, tab: str, label: str, option: str) -> None:
    """Pick ``option`` (by the start of its text) in a dropdown."""
    field(driver, tab, label).click()
    wait(driver, lambda: driver.find_elements(By.CSS_SELECTOR, "ul[role=listbox] li"), 10, f"{label}'s options")
    items = driver.find_elements(By.CSS_SELECTOR, "ul[role=listbox] li")
    next(i for i in items if i.text.strip("✓\n ").startswith(option)).click()


def console_errors(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_the_compress_tab_opens_on_a_recipe_that_shrinks_the_demo(page, shots):
    from ui import presets

    page.find_element(By.ID, "tab-compress-button").click()
    wait(page, lambda: "Planned size" in text(page, "planned-size"), 60, "the planned size beside Run")
    assert field(page, "compress", "Preset").get_attribute("value") == presets.for_model("demo").name
    assert field(page, "compress", "Method").get_attribute("value").startswith("FASP")
    size = text(page, "planned-size")
    assert "BIGGER" not in size and "0.90×" in size and "134.52 M" in size
    page.save_screenshot(str(shots / "compress-opens-on-demo-90.png"))
    assert console_errors(page) == []


def test_a_choice_that_grows_the_model_is_flagged_beside_run(page, shots):
    page.find_element(By.ID, "tab-compress-button").click()
    wait(page, lambda: "Planned size" in text(page, "planned-size"), 60, "the tab's starting recipe")
    open_accordion(page, "Vocabulary trimming", "Tokens to keep")
    set_box(page, "Tokens to keep", "0")  # the demo-90 preset trims the vocabulary: the flag is about the method
    choose(page, "compress", "Method", "SliceGPT")
    ratio = field(page, "compress", "number input for Target ratio")
    ratio.send_keys(Keys.CONTROL, "a")
    ratio.send_keys("0.25", Keys.TAB)
    wait(page, lambda: "140.65 M parameters vs 134.52 M" in text(page, "planned-size"), 60, "the grow flag")
    assert "BIGGER" in text(page, "planned-size")
    assert "No compressed model yet" in text(page, "result-card")  # flagged before anything was computed
    page.save_screenshot(str(shots / "compress-grow-flag.png"))
    assert console_errors(page) == []


def toasts(driver) -> list[str]:
    return [t.text for t in driver.find_elements(By.CSS_SELECTOR, ".toast-body")]


def test_a_bad_model_id_is_a_toast_and_keeps_the_loaded_model(page, shots):
    page.find_element(By.ID, "tab-model-button").click()
    spec = field(page, "model", "Model")
    spec.send_keys(Keys.CONTROL, "a")
    spec.send_keys("/no/such/model", Keys.ENTER)
    page.find_element(By.XPATH, "//button[normalize-space()='Load']").click()
    wait(page, lambda: any("No such file or folder" in t for t in toasts(page)), 60, "the error toast")
    page.save_screenshot(str(shots / "bad-model-id.png"))
    table = page.find_element(By.ID, "model-accounting")
    assert "parameters, total" in table.text and "134.52 M" in table.text  # the demo's accounting stays
    assert "Error" not in table.text
    assert "demo" in text(page, "slimlab-status") and "Error" not in text(page, "slimlab-status")


def test_chat_answers_are_plain_text(page, shots):
    page.find_element(By.ID, "tab-chat-button").click()
    prompt = page.find_element(By.CSS_SELECTOR, "#tab-chat textarea")
    prompt.send_keys("# Say hi")
    page.find_element(By.XPATH, "//button[normalize-space()='Send']").click()
    wait(page, lambda: "# Say hi" in text(page, "chat-original"), 180, "the message in the Original panel")
    chat = page.find_element(By.ID, "chat-original")
    assert not chat.find_elements(By.CSS_SELECTOR, "h1")  # shown as typed, not as a Markdown heading
    assert "No compressed model yet" in chat.find_element(By.XPATH, "//*[@id='chat-compressed']").text
    page.save_screenshot(str(shots / "chat-plain-text.png"))


WIDEST = """return [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right >
    document.documentElement.clientWidth + 1 && e.offsetParent !== null).slice(-4).map(e =>
    `${e.tagName}#${e.id}.${String(e.className).slice(0, 40)} ${Math.round(e.getBoundingClientRect().width)}px`)"""


NARROW = {"width": 412, "height": 900, "deviceScaleFactor": 1, "mobile": True}  # a phone


def test_no_sideways_scroll_at_412_px(page, shots):
    try:
        for tab in ("analyze", "compress", "evaluate", "chat", "export", "learn", "model"):
            # chosen at full width: at 412 px gradio may fold some tab buttons into its overflow menu
            page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
            button = f"tab-{tab}-button"  # gradio unfolds the overflow menu a moment after the resize
            wait(page, lambda: bool(page.find_elements(By.ID, button)), 30, f"the {tab} tab's button at full width")
            page.find_element(By.ID, button).click()
            page.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", NARROW)
            time.sleep(1)
            width, viewport = page.execute_script(
                "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
            wide = page.execute_script(WIDEST) if width > viewport else []
            assert width <= viewport, f"the {tab} tab scrolls sideways at 412 px ({width} > {viewport}): {wide}"
        page.save_screenshot(str(shots / "narrow-412.png"))
    finally:
        page.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
