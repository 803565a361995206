"""``python -m ui.screenshots`` options and file names (the browser flow itself needs chromium: run it by hand)."""
from __future__ import annotations

import pytest

from ui import screenshots


def test_one_invocation_shoots_every_theme_by_default():
    args = screenshots.parse_args(["--model", "/tmp/tiny", "--quick"])
    assert args.theme == "all" and args.quick and args.start == "/tmp/tiny"
    assert screenshots.themes(args.theme) == ["light", "dark", "present"]
    assert screenshots.themes(screenshots.parse_args(["--theme", "dark"]).theme) == ["dark"]
    with pytest.raises(SystemExit):
        screenshots.parse_args(["--theme", "sepia"])


def test_every_tab_and_theme_gets_its_own_file():
    names = [screenshots.shot_name(tab, theme) for theme in screenshots.THEMES for tab in screenshots.TABS]
    assert len(set(names)) == 3 * len(screenshots.TABS)
    assert names[0] == "01-model-light.png" and "03-compress-dark.png" in names and names[-1] == "07-learn-present.png"
