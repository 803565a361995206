"""Fail-fast Hub reachability, so offline users get an answer in seconds, not retries."""
from __future__ import annotations

import os
import socket
from functools import lru_cache
from urllib.parse import urlparse

HUB_TIMEOUT_S = 3.0


def hub_offline_forced() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


@lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """One TCP connect to the Hub endpoint with a short timeout (cached per process)."""
    if hub_offline_forced():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=HUB_TIMEOUT_S):
            return True
    except OSError:
        return False
