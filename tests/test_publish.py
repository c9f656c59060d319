"""export --push-to-hub: fails in seconds with the reason when the hub or a token is missing; uploads only the model's files."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import CLI

from qlora4080 import hub
from qlora4080.errors import QloraError
from qlora4080.model_card import CARD_MARKER


def _env(endpoint: str, tmp_path: Path, token: str | None = "hf_dummy") -> dict[str, str]:
    """A hub at `endpoint`, no offline switch, no token but `token` (HF_HOME is empty: no stored login)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf-home"), COLUMNS="200")
    if token:
        env["HF_TOKEN"] = token
    return env


def _export(args: list[str], env: dict[str, str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    done = subprocess.run([*CLI, "export", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
    return done, time.monotonic() - started


@pytest.fixture
def silent_hub() -> Iterator[str]:
    """A local endpoint that accepts connections and never answers: the probe passes, every request stalls."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for connection in held:
        connection.close()


def test_unreachable_hub_fails_in_seconds_before_merging(tiny_checkpoint: Path, tmp_path: Path) -> None:
    # Nothing listens on 127.0.0.1:9, so the probe is refused at once; no request is ever sent anywhere.
    env = _env("http://127.0.0.1:9", tmp_path)
    done, seconds = _export([str(tiny_checkpoint), "--push-to-hub", "me/tiny"], env, tmp_path)
    assert done.returncode == 2, done.stderr
    assert "the hub (http://127.0.0.1:9) cannot be reached from this machine (127.0.0.1:9 refused" in done.stderr
    assert "check the network (or HF_ENDPOINT)" in done.stderr
    assert seconds < 30  # the interpreter's start and imports; no retries
    done, _ = _export([str(tiny_checkpoint), "--merged", str(tmp_path / "merged"), "--push-to-hub", "me/tiny"], env, tmp_path)
    assert done.returncode == 2 and "cannot be reached" in done.stderr
    assert not (tmp_path / "merged").exists()  # refused before the merge, not after minutes of it


def test_no_token_is_a_clear_message(tiny_checkpoint: Path, tmp_path: Path, silent_hub: str) -> None:
    done, seconds = _export([str(tiny_checkpoint), "--push-to-hub", "me/tiny"], _env(silent_hub, tmp_path, token=None), tmp_path)
    assert done.returncode == 2
    assert "no Hugging Face token on this machine" in done.stderr and "HF_TOKEN" in done.stderr
    assert "hf auth login" in done.stderr and seconds < 30


def test_offline_switch_bad_name_and_stray_private(tiny_checkpoint: Path, tmp_path: Path) -> None:
    env = {**_env("http://127.0.0.1:9", tmp_path), "HF_HUB_OFFLINE": "1"}
    done, _ = _export([str(tiny_checkpoint), "--push-to-hub", "me/tiny"], env, tmp_path)
    assert done.returncode == 2 and "HF_HUB_OFFLINE is set" in done.stderr
    done, _ = _export([str(tiny_checkpoint), "--push-to-hub", "not a repo"], env, tmp_path)
    assert done.returncode == 2 and "'not a repo' is not a hub repository name" in done.stderr
    done, _ = _export([str(tiny_checkpoint), "--merged", str(tmp_path / "m"), "--private"], env, tmp_path)
    assert done.returncode == 2 and "--private works with --push-to-hub" in done.stderr


def test_a_stalled_upload_times_out(tiny_checkpoint: Path, silent_hub: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", silent_hub)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the suite runs offline; this test only talks to its own socket
    started = time.monotonic()
    with pytest.raises(QloraError, match="stopped answering for 1 s during the upload"):
        hub.push_folder(tiny_checkpoint, "me/tiny", token="hf_dummy", private=False, card="card", timeout=1.0)
    assert time.monotonic() - started < 20


def test_upload_selection_leaves_out_trainer_checkpoints_locks_and_temp_files(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    for name in ("adapter_model.safetensors", "adapter_config.json", "README.md", "qlora4080.json", "recipe.toml",
                 "tokenizer.json", "sub/extra.txt", "checkpoint-10/optimizer.pt", "checkpoint-10/adapter_model.safetensors",
                 "runs/Nov24/events.out.tfevents.1", ".qlora4080-run", ".saving-123/adapter_model.safetensors",
                 ".recipe.toml.tmp", "model.safetensors.part", "x.lock", "notes.txt~",
                 # the trainer's state outside checkpoint-N/, and the trackers' folders when runs_dir is checkpoints_dir
                 "optimizer.pt", "scheduler.pt", "rng_state.pth", "rng_state_1.pth", "training_args.bin", "trainer_state.json",
                 "wandb/debug.log", "mlruns/0/meta.yaml", "tensorboard/events.out.tfevents.1"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(name)
    assert hub.upload_selection(folder) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                            "qlora4080.json", "recipe.toml", "sub/extra.txt", "tokenizer.json"]


def test_real_checkpoint_uploads_adapter_tokenizer_card_and_metadata(tiny_checkpoint: Path) -> None:
    chosen = hub.upload_selection(tiny_checkpoint)
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "qlora4080.json", "recipe.toml",
            "tokenizer_config.json", "chat_template.jinja"} <= set(chosen)
    assert not any(name.startswith(("checkpoint-", ".")) for name in chosen)


def test_publish_uploads_the_staged_folder_with_a_fresh_card(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub's two calls recorded at the HfApi boundary: the repo, its privacy, and the exact folder sent."""
    from huggingface_hub import HfApi

    from qlora4080.export import publish

    calls: dict[str, object] = {}

    def create_repo(self: HfApi, repo_id: str, **kwargs: object) -> str:
        calls["repo"] = (repo_id, kwargs.get("private"))
        return f"https://hub.example/{repo_id}"

    def upload_folder(self: HfApi, *, folder_path: Path, repo_id: str, **kwargs: object) -> None:
        staged = Path(folder_path)
        calls["files"] = sorted(p.relative_to(staged).as_posix() for p in staged.rglob("*") if p.is_file())
        calls["card"] = (staged / "README.md").read_text()

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(HfApi, "repo_info", lambda self, repo_id, **kw: SimpleNamespace(private=True))
    before = (tiny_checkpoint / "README.md").read_text()
    result = publish(tiny_checkpoint, "me/tiny-adapter", token="hf_dummy", private=True)
    assert result.url == "https://hub.example/me/tiny-adapter" and calls["repo"] == ("me/tiny-adapter", True)
    assert calls["files"] == hub.upload_selection(tiny_checkpoint)
    card = str(calls["card"])
    assert CARD_MARKER in card and 'PeftModel.from_pretrained(base, "me/tiny-adapter")' in card
    assert (tiny_checkpoint / "README.md").read_text() == before  # the staged card never writes through a hard link


def test_publish_keeps_a_card_written_by_hand(tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from huggingface_hub import HfApi

    from qlora4080.export import publish

    folder = tmp_path / "mine"
    shutil.copytree(tiny_checkpoint, folder)
    (folder / "README.md").write_text("# My adapter\n\nHand-written.\n")
    sent: list[str] = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: f"https://hub.example/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, *, folder_path, repo_id, **kw:
                        sent.append((Path(folder_path) / "README.md").read_text()))
    assert publish(folder, "me/mine", token="hf_dummy").kept_own_card
    assert sent == ["# My adapter\n\nHand-written.\n"]


def test_private_is_refused_for_an_existing_public_repo(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """create_repo(exist_ok=True) leaves an existing repo public: --private must not upload into it."""
    from huggingface_hub import HfApi

    from qlora4080.export import publish

    uploads: list[str] = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: f"https://hub.example/{repo_id}")
    monkeypatch.setattr(HfApi, "repo_info", lambda self, repo_id, **kw: SimpleNamespace(private=False))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, *, folder_path, repo_id, **kw: uploads.append(repo_id))
    with pytest.raises(QloraError, match="me/public already exists and is public") as refused:
        publish(tiny_checkpoint, "me/public", token="hf_dummy", private=True)
    assert "nothing was uploaded" in refused.value.hint and uploads == []
    publish(tiny_checkpoint, "me/public", token="hf_dummy", private=False)  # without --private it is the user's choice
    assert uploads == ["me/public"]


def test_uploaded_metadata_writes_the_home_folder_as_tilde(tiny_checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """qlora4080.json, recipe.toml and adapter_config.json name this machine's paths: the hub gets ~, the disk keeps them."""
    from huggingface_hub import HfApi

    from qlora4080.export import publish

    home = tiny_checkpoint.parents[2]  # holds the tiny model, the recipe and the data paths of the run
    monkeypatch.setenv("HOME", str(home))
    on_disk = {name: (tiny_checkpoint / name).read_text() for name in ("qlora4080.json", "recipe.toml", "adapter_config.json")}
    assert all(f"{home}/" in text for text in on_disk.values()), "the test needs paths under the home folder"
    sent: dict[str, str] = {}

    def upload_folder(self: HfApi, *, folder_path: Path, repo_id: str, **kwargs: object) -> None:
        sent.update({name: (Path(folder_path) / name).read_text() for name in on_disk})

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: f"https://hub.example/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    publish(tiny_checkpoint, "me/tiny-adapter", token="hf_dummy")
    for name, text in sent.items():
        assert f"{home}/" not in text and "~/" in text, name
    assert json.loads(sent["qlora4080.json"])["recipe_path"].startswith("~/")
    assert {name: (tiny_checkpoint / name).read_text() for name in on_disk} == on_disk  # never written through a link


@pytest.mark.parametrize("name", ["me/name-", "me/na--me", "me/name.", "me-/name", "me/" + "a" * 97, "me/x.git"])
def test_repo_names_the_hub_refuses_are_refused_before_any_merge(name: str) -> None:
    """The hub's own check (validate_repo_id) would raise only inside create_repo, after the merge and as a traceback."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    with pytest.raises(HFValidationError):
        validate_repo_id(name)
    with pytest.raises(QloraError, match="is not a hub repository name"):
        hub.check_repo_id(name)
    hub.check_repo_id("my-name/qwen3-4b_emoji.v2")  # what the hub takes passes


@pytest.fixture
def captive_portal() -> Iterator[str]:
    """A local endpoint that answers every request with 200 and a login page, as a network portal does."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class LoginPage(BaseHTTPRequestHandler):
        def _page(self) -> None:
            body = b"<html><body>Please log in to the guest network</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = do_HEAD = _page

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), LoginPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_hub_answering_with_a_web_page_is_a_clear_error(tiny_checkpoint: Path, captive_portal: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_ENDPOINT", captive_portal)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the suite runs offline; this test only talks to its own server
    with pytest.raises(QloraError, match="not the hub's JSON") as failed:
        hub.push_folder(tiny_checkpoint, "me/tiny", token="hf_dummy", private=False, card="card", timeout=10.0)
    assert "nothing was uploaded" in (failed.value.hint or "")
