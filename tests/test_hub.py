"""Without network, hub datasets, tokenizers and models fail in seconds with a clear reason, not after retries."""

from __future__ import annotations

import os
import subprocess
import time

from conftest import CLI

from qlora4080 import hub
from qlora4080.toml_io import dumps_toml


def _offline_env() -> dict[str, str]:
    # Nothing listens on 127.0.0.1:443 here, so the probe is refused at once; the hub libraries
    # would otherwise retry every request with back-off before giving up.
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    return {**env, "HF_ENDPOINT": "https://127.0.0.1", "COLUMNS": "200"}


def test_unreachable_hub_switches_the_libraries_to_their_cache_and_back(monkeypatch):
    import datasets.config
    from huggingface_hub import constants

    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=hub.PROBE_SECONDS: False)
    before = (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE)
    with hub.cache_only_unless_reachable() as online:
        assert online is False
        assert constants.HF_HUB_OFFLINE is True and datasets.config.HF_HUB_OFFLINE is True
    assert (constants.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE) == before


def test_hub_dataset_without_network_fails_fast_naming_it(tmp_path):
    recipe = tmp_path / "hub.toml"
    recipe.write_text(dumps_toml({"model": {"name": "builtin:smollm2-135m-instruct"},
                                  "data": {"build_dir": str(tmp_path / "b"), "sources": [{"hub": "someone/some-set"}]}}))
    started = time.monotonic()
    result = subprocess.run([*CLI, "data", "build", str(recipe)], capture_output=True, text=True,
                            env=_offline_env(), timeout=120)
    assert result.returncode != 0
    assert "could not load hub dataset 'someone/some-set'" in result.stderr
    assert "127.0.0.1 cannot be reached" in result.stderr and "local file" in result.stderr
    assert time.monotonic() - started < 30  # seconds, not a minute of retries


def test_hub_model_without_network_fails_fast_naming_it(tmp_path):
    (tmp_path / "t.jsonl").write_text('{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}\n')
    recipe = tmp_path / "m.toml"
    recipe.write_text(dumps_toml({"model": {"name": "someone/not-cached-model", "load_in_4bit": False},
                                  "data": {"train": "t.jsonl"}}))
    started = time.monotonic()
    result = subprocess.run([*CLI, "train", str(recipe)], capture_output=True, text=True, env=_offline_env(),
                            timeout=120, cwd=tmp_path)
    assert result.returncode != 0
    assert "could not load model 'someone/not-cached-model'" in result.stderr
    assert "cannot be reached from this machine" in result.stderr
    assert time.monotonic() - started < 20
