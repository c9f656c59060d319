"""`qlora4080 export`: merge the adapter into its base and save a standalone model (GGUF: gguf_export.py),
and publish the adapter or the merged model to the hub with its model card.

The base is always reloaded in 16-bit (fp32 on CPU) for merging, never in 4-bit:
merging into quantized weights would round the LoRA update away. A model
trained on a 4-bit base therefore exports as the 16-bit base plus the adapter.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .checkpoint import META_FILE, RECIPE_SNAPSHOT, CheckpointMeta
from .errors import QloraError
from .model_card import CARD_FILE, CARD_MARKER, card_for_checkpoint, home_as_tilde
from .quantized_agreement import Agreement, agreement_with_4bit_model, validation_prompts

if TYPE_CHECKING:
    from .data.vocabulary import Message


EXPORT_RECORD = "qlora4080_export.json"
"""Written into a merged folder: where it came from, its dtype, and (4-bit-trained adapters) its agreement."""


@dataclass
class ExportResult:
    out_dir: Path
    prompt: str
    adapter_answer: str
    """The 16-bit base + adapter, which the merged model must reproduce."""
    merged_answer: str
    agreement: Agreement | None = None
    """Adapters trained on a 4-bit base: the merged model's greedy answers against the 4-bit model as trained."""

    @property
    def answers_match(self) -> bool:
        return self.adapter_answer == self.merged_answer


def check_out_dir(out_dir: Path, overwrite: bool, source: Path | None = None, option: str = "--merged",
                  remove: bool = True) -> None:
    """Make sure writing to `out_dir` can only ever replace an earlier export, never the checkpoint itself.

    An earlier merged export is known by the EXPORT_RECORD this module wrote into it, never by a config.json
    (every model folder has one: --overwrite once deleted the checkpoint's own base model). With `remove`
    False the caller replaces the folder itself, once its new contents are complete.
    """
    if source is not None:
        out, src = out_dir.resolve(), source.resolve()
        if out == src or out in src.parents or src in out.parents:
            raise QloraError(f"{out_dir} is the checkpoint being exported, or inside it (or holds it)", where=option,
                             hint="export to a separate folder, e.g. exports/<run>")
    if out_dir.exists() and not out_dir.is_dir():
        raise QloraError(f"{out_dir} is a file, not a folder", where=option, hint="pass a new or empty folder")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise QloraError(f"{out_dir} exists and is not empty", where=option,
                             hint="choose an empty or new folder, or pass --overwrite to replace its contents")
        if not (out_dir / EXPORT_RECORD).is_file():
            raise QloraError(f"{out_dir} does not look like an earlier export (no {EXPORT_RECORD}), so --overwrite "
                             "leaves it alone", where=option, hint="choose another folder")
        check_only_written(out_dir, out_dir / EXPORT_RECORD, option)
        if remove:
            shutil.rmtree(out_dir)


def check_only_written(out_dir: Path, record_path: Path, option: str, written: list[str] | None = None) -> None:
    """Refuse to replace an earlier export that now holds files it did not write (a user's notes, another export).

    `written` defaults to the record's "files"; a record from before that list existed proves nothing more.
    """
    if written is None:
        try:
            listed = json.loads(record_path.read_text(encoding="utf-8")).get("files")
        except (OSError, UnicodeDecodeError, ValueError, RecursionError, AttributeError):
            listed = None
        if not isinstance(listed, list):
            return
        written = [str(name) for name in listed]
    extra = sorted(p.name for p in out_dir.iterdir() if p.name not in written)
    if extra:
        shown = ", ".join(extra[:5]) + (f" and {len(extra) - 5} more" if len(extra) > 5 else "")
        raise QloraError(f"{out_dir} is an earlier export, but it now also holds {shown}, which the export did not "
                         "write, so --overwrite leaves it alone", where=option,
                         hint=f"move {'that' if len(extra) == 1 else 'those'} out of {out_dir}, or export into another folder")


@contextmanager
def staged_folder(out_dir: Path) -> Iterator[Path]:
    """A staging folder beside `out_dir` that replaces it when the block ends without error; removed otherwise."""
    staging = out_dir.parent / f".{out_dir.name}.exporting-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
    except Exception as error:  # noqa: BLE001  a full disk shows as OSError, SafetensorError or torch's RuntimeError
        shutil.rmtree(staging, ignore_errors=True)
        reason = f"{error.strerror} ({error.filename})" if isinstance(error, OSError) and error.strerror else str(error)
        kept = f"the earlier export in {out_dir} was left as it is" if out_dir.exists() else "nothing was left behind"
        raise QloraError(f"could not write the merged model for {out_dir}: {reason}; {kept}",
                         hint="free disk space or fix the folder's permissions, then export again", exit_code=4) from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    aside = out_dir.parent / f".{out_dir.name}.replaced-{os.getpid()}"
    if out_dir.exists():
        out_dir.rename(aside)
    staging.rename(out_dir)
    shutil.rmtree(aside, ignore_errors=True)


def read_meta(checkpoint: Path) -> CheckpointMeta:
    """The checkpoint's qlora4080.json, after checking its adapter files load (before any model does)."""
    from .adapter_files import check_adapter, check_tokenizer_files
    from .infer import read_checkpoint_meta

    meta = read_checkpoint_meta(checkpoint)
    if not meta:
        raise QloraError(f"{checkpoint} is not a qlora4080 checkpoint (no {META_FILE})", hint="pass checkpoints/<run> as written by `qlora4080 train`")
    check_tokenizer_files(checkpoint, meta.recipe_path)
    check_adapter(checkpoint, meta.recipe_path)
    return meta


def export_merged(checkpoint: Path, out_dir: Path, *, overwrite: bool = False, prompt: str | None = None,
                  max_new_tokens: int = 48, repo_id: str | None = None) -> ExportResult:
    """Merge, save (with a model card naming `repo_id` if given), reload with plain transformers, and compare one
    greedy answer with base + adapter."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .adapter_files import loading_checkpoint
    from .backends import hf
    from .backends.loading import prepare_tokenizer
    from .data.render import end_of_turn_ids
    from .hardware import detect
    from .infer import ChatModel, generate
    from .plan import compute_dtype
    from .quiet import quiet_libraries

    meta = read_meta(checkpoint)
    check_out_dir(out_dir, overwrite, source=checkpoint, remove=False)  # replaced below, once the merge is saved
    quiet_libraries()
    hardware = detect()
    dtype = compute_dtype(meta.dtype, hardware)
    base_cfg = meta.model_section(load_in_4bit=False, dtype=dtype)
    base, _ = hf.load_model(base_cfg, hardware, for_training=False)
    with loading_checkpoint(checkpoint, meta.recipe_path):  # shapes that do not fit are named, not a traceback
        tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(checkpoint), None)
        model = PeftModel.from_pretrained(base, checkpoint)
    model.eval()
    question: list[Message] = [{"role": "user", "content": prompt or _first_prompt(meta)}]
    adapter_answer = generate(ChatModel(model, tokenizer, "", True, end_of_turn_ids(tokenizer)), question, max_new_tokens=max_new_tokens)

    merged = model.merge_and_unload()
    record: dict[str, object] = {"merged_from": str(checkpoint.resolve()), "base_model": meta.base_model, "dtype": dtype,
                                 "trained_on_4bit": meta.load_in_4bit}
    with staged_folder(out_dir) as staging:  # an earlier export is replaced only by a complete new one
        merged.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)  # with the chat template used in training
        (staging / CARD_FILE).write_text(card_for_checkpoint(checkpoint, load_from=repo_id or str(out_dir), merged=True),
                                         encoding="utf-8")
        # What this export wrote: a later --overwrite replaces these and refuses a folder holding anything else.
        record["files"] = sorted([*(p.name for p in staging.iterdir()), EXPORT_RECORD])
        (staging / EXPORT_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
    del merged, model, base

    reloaded = AutoModelForCausalLM.from_pretrained(out_dir, dtype=getattr(torch, dtype),
                                                    device_map="cuda" if hardware.is_cuda else None)
    plain_tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(out_dir), None)
    reloaded.eval()
    merged_chat = ChatModel(reloaded, plain_tokenizer, "", False, end_of_turn_ids(plain_tokenizer))
    merged_answer = generate(merged_chat, question, max_new_tokens=max_new_tokens)
    agreement = None
    if meta.load_in_4bit:  # trained on a 4-bit base: how far is the 16-bit merge from the model as trained?
        prompts = validation_prompts(meta) or [question]
        agreement = agreement_with_4bit_model(checkpoint, meta, merged_chat, prompts, max_new_tokens)
        record["agreement_with_4bit_model"] = agreement
        (out_dir / EXPORT_RECORD).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return ExportResult(out_dir, question[0]["content"], adapter_answer, merged_answer, agreement)


def prepare_push(checkpoint: Path, repo_id: str) -> str:
    """Everything `--push-to-hub` needs, checked in seconds before any merge: the checkpoint, the hub, a token."""
    from .hub import check_can_push

    read_meta(checkpoint)
    return check_can_push(repo_id)


def publish(checkpoint: Path, repo_id: str, *, token: str, private: bool = False, merged_dir: Path | None = None) -> PushResult:
    """Upload the adapter folder (or the merged model in `merged_dir`) with a fresh model card. Returns the URL.

    The card is written anew, so it carries the eval table of a later `qlora4080 eval`, unless the
    folder's README.md is the user's own (it lacks the card's marker line): that one is uploaded as it is.
    """
    from .hub import push_folder

    folder = merged_dir or checkpoint
    own = _own_card(folder / CARD_FILE)
    card = None if own else card_for_checkpoint(checkpoint, load_from=repo_id, merged=merged_dir is not None)
    url = push_folder(folder, repo_id, token=token, private=private, card=card, rewritten=_without_home(folder))
    return PushResult(url=url, kept_own_card=own)


# Small files that hold this machine's paths (the recipe's data files, the base model's folder, the folder merged
# from): uploaded with the home folder written as ~, as the card writes it. The files on disk keep their paths.
PATH_FILES = (META_FILE, RECIPE_SNAPSHOT, "adapter_config.json", EXPORT_RECORD)


def _without_home(folder: Path) -> dict[str, str]:
    texts = {}
    for name in PATH_FILES:
        try:
            texts[name] = home_as_tilde((folder / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            continue  # absent (or not text): uploaded as it is, if at all
    return texts


@dataclass
class PushResult:
    url: str
    kept_own_card: bool


def _own_card(readme: Path) -> bool:
    """A README.md written by hand: neither this project's card nor peft's placeholder."""
    try:
        text = readme.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return CARD_MARKER not in text and "[More Information Needed]" not in text


def _first_prompt(meta: CheckpointMeta) -> str:
    """A prompt from the run's validation data (what the adapter was trained for), else a generic one."""
    path = meta.validation_file
    if path and Path(path).is_file():
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            try:
                messages = json.loads(line)["messages"]
                return next(m["content"] for m in messages if m["role"] == "user")
            except (json.JSONDecodeError, KeyError, StopIteration, TypeError):
                continue
    return "Say hello in one short sentence."
