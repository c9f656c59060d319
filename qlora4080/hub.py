"""Reaching the Hugging Face hub: know in seconds, not after a minute of retries.

Without network, huggingface_hub and datasets retry every request with
back-off (25 s for one dataset, over a minute for a tokenizer) before failing.
Here one TCP connect to the hub decides: when it does not answer, the hub
libraries are switched to their offline mode for the call, so anything
already cached still loads and anything else fails at once.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlparse

PROBE_SECONDS = 3.0
_REACHABLE: dict[str, bool] = {}


def hub_host() -> str:
    return urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"


def hub_reachable(timeout: float = PROBE_SECONDS) -> bool:
    """True when the hub answers a TCP connect within `timeout` (asked once per process)."""
    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "TRUE", "YES", "ON"):
        return False
    host = hub_host()
    if host not in _REACHABLE:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            _REACHABLE[host] = True
        except OSError:
            _REACHABLE[host] = False
    return _REACHABLE[host]


@contextmanager
def cache_only_unless_reachable() -> Iterator[bool]:
    """Inside, hub libraries use the network if the hub is reachable, else only their local caches.

    Yields whether the hub was reachable, so an error message can say which it was.
    """
    if hub_reachable():
        yield True
        return
    from huggingface_hub import constants

    saved = {"hub": constants.HF_HUB_OFFLINE}
    constants.HF_HUB_OFFLINE = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        saved["datasets"] = getattr(datasets_config, "HF_HUB_OFFLINE", False)
        setattr(datasets_config, "HF_HUB_OFFLINE", True)  # noqa: B010  (a module attribute mypy cannot see)
    try:
        yield False
    finally:
        constants.HF_HUB_OFFLINE = saved["hub"]
        if datasets_config is not None:
            setattr(datasets_config, "HF_HUB_OFFLINE", saved["datasets"])  # noqa: B010
