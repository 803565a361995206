"""Vocabulary trimming in the real page (headless Chromium) on a tiny random model: the accordion's count of
tokens to keep and counted text show in the planned size beside Run, the run's card says how many tokens
it kept, and a count above the vocabulary is refused with a message that leaves that result in place.

Run alone: ``python -m pytest -m browser tests/test_browser_vocabulary.py``; screenshots go to
``$SLIMLAB_SCREENSHOTS`` (else a temporary folder).
"""
from __future__ import annotations

import re

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

from test_browser import (  # noqa: E402,F401  (skips without a browser)
    choose, console_errors, field, open_accordion, page, set_box, shots, text, toasts, wait)
from test_browser_methods import runs_so_far  # noqa: E402
from test_browser_search import app_url  # noqa: E402,F401  (the app on a tiny checkpoint)
from selenium.webdriver.common.by import By  # noqa: E402

CALIBRATION = {"Samples": "8", "Tokens per sample": "32"}
VOCABULARY = 320  # the tiny tokenizer's


def test_tokens_to_keep_size_the_run_and_the_card_says_how_many_were_kept(page, shots):
    page.find_element(By.ID, "tab-compress-button").click()
    wait(page, lambda: "Planned size" in text(page, "planned-size"), 60, "the tab's starting recipe")
    open_accordion(page, "Calibration data", "Tokens per sample")
    for box, value in CALIBRATION.items():
        set_box(page, box, value)
    open_accordion(page, "Vocabulary trimming", "Tokens to keep")
    choose(page, "compress", "Counted text", "wikitext2:test")
    set_box(page, "Tokens to keep", "285")
    page.execute_script("document.activeElement.blur()")  # Tab moved on to the Counted text list: closed
    kept: list[str] = []  # read inside the wait: the blur's update may re-render the line after it

    def trimmed_size() -> bool:
        planned = re.search(r"keeps ([\d,]+) of 320 tokens", text(page, "planned-size"))
        if planned and int(planned.group(1).replace(",", "")) >= 285:  # not a count typed halfway ("28")
            kept.append(planned.group(1))
        return bool(kept)

    wait(page, trimmed_size, 60, "the trimmed planned size")
    assert int(kept[0].replace(",", "")) < VOCABULARY
    page.execute_script("arguments[0].scrollIntoView({block: 'center'})", field(page, "compress", "Tokens to keep"))
    page.save_screenshot(str(shots / "vocabulary-controls.png"))

    page.execute_script("arguments[0].click()", page.find_element(By.XPATH, "//button[normalize-space()='Run']"))
    wait(page, lambda: runs_so_far(page) == 1 or toasts(page), 300, "the trimmed run")
    assert not toasts(page), toasts(page)
    card = text(page, "result-card")
    assert f"Vocabulary: keeps {kept[0]} of 320 tokens" in card and "most used in wikitext2:test" in card
    assert "vocabulary 285" in text(
        page, "slimlab-status")
    page.execute_script("document.getElementById('result-card').scrollIntoView()")
    page.save_screenshot(str(shots / "vocabulary-result-card.png"))

    set_box(page, "Tokens to keep", "100000")  # more than the vocabulary: refused, the run above stays
    refusal = "Tokens to keep must be a whole number from 0 to 320"
    wait(page, lambda: "Cannot run as set" in text(page, "planned-size") and refusal in text(page, "planned-size"),
         60, "the refusal beside Run")
    page.execute_script("arguments[0].click()", page.find_element(By.XPATH, "//button[normalize-space()='Run']"))
    wait(page, lambda: any("Tokens to keep" in t for t in toasts(page)), 60, "the refusal toast")
    assert text(page, "result-card") == card and runs_so_far(page) == 1
    page.save_screenshot(str(shots / "vocabulary-refused.png"))
    assert console_errors(page) == []
