"""Reaching the Hugging Face hub: know in seconds, not after a minute of retries.

Without network, huggingface_hub and datasets retry every request with
back-off (25 s for one dataset, over a minute for a tokenizer) before failing.
Here one TCP connect to the hub decides: when it does not answer, the hub
libraries are switched to their offline mode for the call, so anything
already cached still loads and anything else fails at once.

Publishing (`export --push-to-hub`) asks the same probe before anything heavy,
then uploads one staged folder: only the model's files, never the trainer's
intermediate checkpoints, lock or temporary files. huggingface_hub's HTTP
client waits forever by default; during an upload it gives up after a stall of
UPLOAD_TIMEOUT_SECONDS instead.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from .errors import QloraError

PROBE_SECONDS = 3.0
_REACHABLE: dict[str, bool] = {}


def hub_endpoint() -> str:
    """The hub's base URL: $HF_ENDPOINT (a mirror, a private hub) or huggingface.co, read at call time."""
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def hub_host() -> str:
    return urlparse(hub_endpoint()).hostname or "huggingface.co"


def hub_address() -> tuple[str, int]:
    """(host, port) the hub answers on: the endpoint's own port, else the scheme's."""
    url = urlparse(hub_endpoint())
    try:
        port = url.port
    except ValueError:  # a port that is not a number: the probe fails, as any request would
        port = None
    return hub_host(), port or (80 if url.scheme == "http" else 443)


def offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "TRUE", "YES", "ON")


def hub_reachable(timeout: float = PROBE_SECONDS) -> bool:
    """True when the hub answers a TCP connect within `timeout` (asked once per process)."""
    if offline_mode():
        return False
    host, port = hub_address()
    key = f"{host}:{port}"
    if key not in _REACHABLE:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            _REACHABLE[key] = True
        except OSError:
            _REACHABLE[key] = False
    return _REACHABLE[key]


OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
"""Read at call time by libraries that do not ask huggingface_hub's constants (unsloth's loader among them)."""


@contextmanager
def cache_only_unless_reachable() -> Iterator[bool]:
    """Inside, hub libraries use the network if the hub is reachable, else only their local caches.

    Yields whether the hub was reachable, so an error message can say which it was. Offline, both
    huggingface_hub's constant and the environment variables say so for the call, then are put back.
    """
    if hub_reachable():
        yield True
        return
    from huggingface_hub import constants

    saved = {"hub": constants.HF_HUB_OFFLINE}
    saved_variables = {name: os.environ.get(name) for name in OFFLINE_VARIABLES}
    constants.HF_HUB_OFFLINE = True
    os.environ.update(dict.fromkeys(OFFLINE_VARIABLES, "1"))
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        saved["datasets"] = getattr(datasets_config, "HF_HUB_OFFLINE", False)
        setattr(datasets_config, "HF_HUB_OFFLINE", True)  # noqa: B010  (a module attribute mypy cannot see)
    try:
        yield False
    finally:
        constants.HF_HUB_OFFLINE = saved["hub"]
        for name, value in saved_variables.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if datasets_config is not None:
            setattr(datasets_config, "HF_HUB_OFFLINE", saved["datasets"])  # noqa: B010


# ---- publishing ----

UPLOAD_TIMEOUT_SECONDS = 60.0
"""Seconds without progress (connect, send, answer) after which an upload gives up."""
# The hub's own rule (huggingface_hub's validate_repo_id): each part starts with a letter or digit and ends with a
# letter, digit or '_', at most 96 characters, no '--' or '..'. Checked here, before a merge of minutes, not by the hub after.
_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
REPO_ID = re.compile(f"{_REPO_PART}/{_REPO_PART}")
# Never uploaded: the trainer's resumable checkpoints (optimizer state, gigabytes) and their files wherever they
# are, its stray TensorBoard folder, the trackers' folders (when output.runs_dir is the checkpoints folder, runs/<run>
# is checkpoints/<run>: W&B's debug logs name the machine and user), run locks, staging and temporary files, and
# hidden files (the run marker).
_SKIPPED_FOLDERS = re.compile(r"checkpoint-\d+|runs|__pycache__|wandb|mlruns|tensorboard")
_SKIPPED_FILES = re.compile(r"optimizer\.pt|scheduler\.pt|rng_state(_\d+)?\.pth|training_args\.bin|trainer_state\.json")
_SKIPPED_SUFFIXES = (".lock", ".tmp", ".part", ".incomplete", "~")


def check_repo_id(repo_id: str) -> None:
    if not REPO_ID.fullmatch(repo_id) or ".." in repo_id or "--" in repo_id or repo_id.endswith(".git"):
        raise QloraError(f"{repo_id!r} is not a hub repository name", where="--push-to-hub",
                         hint="give it as owner/name, e.g. --push-to-hub my-name/qwen3-4b-emoji (letters, digits, '-', '_', '.'; "
                              "no '--' or '..', not ending in '-' or '.')")


def check_can_push(repo_id: str) -> str:
    """Before anything heavy: a valid repo name, a reachable hub and a token. Returns the token."""
    check_repo_id(repo_id)
    if offline_mode():
        raise QloraError("HF_HUB_OFFLINE is set, so nothing can be uploaded", where="--push-to-hub",
                         hint="unset HF_HUB_OFFLINE and run again")
    if not hub_reachable():
        host, port = hub_address()
        raise QloraError(f"the hub ({hub_endpoint()}) cannot be reached from this machine ({host}:{port} refused or "
                         f"did not answer within {PROBE_SECONDS:g} s)", where="--push-to-hub",
                         hint="check the network (or HF_ENDPOINT), then run again; the files stay where they are")
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise QloraError("no Hugging Face token on this machine, and uploading needs one", where="--push-to-hub",
                         hint="set HF_TOKEN to a token with write access (huggingface.co/settings/tokens), or run `hf auth login`")
    return token


def upload_selection(folder: Path) -> list[str]:
    """The files of `folder` an upload sends, as sorted relative POSIX paths."""
    chosen = []
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        parents, name = relative.parts[:-1], relative.name
        if any(part.startswith(".") or _SKIPPED_FOLDERS.fullmatch(part) for part in parents):
            continue
        if not path.is_file() or name.startswith(".") or name.endswith(_SKIPPED_SUFFIXES) or _SKIPPED_FILES.fullmatch(name):
            continue
        chosen.append(relative.as_posix())
    return chosen


def push_folder(folder: Path, repo_id: str, *, token: str, private: bool, card: str | None,
                timeout: float = UPLOAD_TIMEOUT_SECONDS, rewritten: Mapping[str, str] | None = None) -> str:
    """Create the repo (if new) and upload the selected files of `folder`, with `card` as README.md. Returns the URL.

    `rewritten` gives the uploaded text of some of the files (the folder's own copies are left as they are).
    """
    files = upload_selection(folder)
    if not files:
        raise QloraError(f"{folder} holds no files to upload", where=str(folder))
    with tempfile.TemporaryDirectory(prefix=".qlora4080-upload-", dir=_staging_parent(folder)) as staging:
        stage_files(folder, files, Path(staging), card, rewritten)
        return _upload(Path(staging), repo_id, token=token, private=private, timeout=timeout)


def _staging_parent(folder: Path) -> Path | None:
    """Beside the folder, where hard links work (no copy of a merged model's gigabytes); else the system temp folder."""
    parent = folder.resolve().parent
    return parent if os.access(parent, os.W_OK | os.X_OK) else None


def stage_files(folder: Path, files: list[str], staging: Path, card: str | None,
                rewritten: Mapping[str, str] | None = None) -> None:
    """Hard links where the file system allows (no copy of gigabytes), else copies; the card replaces README.md,
    and the text of a file in `rewritten` replaces that file's (written anew, never through a link)."""
    rewritten = rewritten or {}
    for name in files:
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if name in rewritten:
            target.write_text(rewritten[name], encoding="utf-8")
            continue
        try:
            os.link(folder / name, target)
        except OSError:
            shutil.copy2(folder / name, target)
    if card is not None:
        (staging / "README.md").unlink(missing_ok=True)  # a link to the folder's own README: never written through
        (staging / "README.md").write_text(card, encoding="utf-8")


def _upload(staging: Path, repo_id: str, *, token: str, private: bool, timeout: float) -> str:
    import httpx
    from huggingface_hub import HfApi, get_session
    from huggingface_hub.errors import HfHubHTTPError

    session = get_session()
    saved = session.timeout
    session.timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
    try:
        api = HfApi(endpoint=hub_endpoint(), token=token)
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if private and not api.repo_info(repo_id, repo_type="model").private:
            # create_repo leaves an existing repository as it is: a public one would get the files despite --private
            raise QloraError(f"{repo_id} already exists and is public, so --private cannot keep these files private",
                             where="--private", hint=f"make {repo_id} private in its settings on the hub first, "
                                                     "or push to a new repository name; nothing was uploaded")
        api.upload_folder(folder_path=staging, repo_id=repo_id, repo_type="model",
                          commit_message="Upload from qlora4080 export")
        return str(url)
    except httpx.TimeoutException:
        raise QloraError(f"the hub ({hub_endpoint()}) stopped answering for {timeout:g} s during the upload",
                         where="--push-to-hub", hint="run the same command again: the files are committed only once all of them are uploaded") from None
    except HfHubHTTPError as error:
        raise _http_error(error, repo_id) from None
    except httpx.HTTPError as error:
        raise QloraError(f"the upload to {hub_endpoint()} failed: {error}", where="--push-to-hub",
                         hint="check the network (or HF_ENDPOINT) and run again") from None
    except ValueError as error:  # JSONDecodeError: a 200 with a web page, as a captive portal or proxy answers
        raise QloraError(f"{hub_endpoint()} answered with something that is not the hub's JSON ({error}): a login "
                         "page of a network portal or a proxy answers like that", where="--push-to-hub",
                         hint="open a web page to log in to the network (or check HF_ENDPOINT), then run again; "
                              "nothing was uploaded") from None
    finally:
        session.timeout = saved


def _http_error(error: Exception, repo_id: str) -> QloraError:
    status = getattr(getattr(error, "response", None), "status_code", None)
    first = str(error).splitlines()[0] if str(error) else type(error).__name__
    if status == 401:
        return QloraError(f"the hub refused the token ({first})", where="--push-to-hub",
                          hint="set HF_TOKEN to a valid token with write access, or run `hf auth login`")
    if status == 403:
        owner = repo_id.split("/")[0]
        return QloraError(f"the token may not write to {repo_id} ({first})", where="--push-to-hub",
                          hint=f"use a token with write access to '{owner}', or push to your own name")
    return QloraError(f"the hub refused the upload to {repo_id} ({first})", where="--push-to-hub")
