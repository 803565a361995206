"""Where SlimLab keeps what it can rebuild: the demo model, downloads, tokenized texts."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$SLIMLAB_CACHE``, else ``~/.cache/slimlab``."""
    return Path(os.environ.get("SLIMLAB_CACHE", Path.home() / ".cache" / "slimlab")).expanduser()
