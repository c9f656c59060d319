"""The model card (README.md) of a checkpoint: what was trained, on what, how well, and how to load it.

`build_model_card` is a pure function of `CardInputs`; `card_for_checkpoint`
gathers those inputs from a checkpoint folder (its metadata and recipe
snapshot, the data it trained on: runs_report/data_summary.py, the run's eval.md). `train` writes the card
with the adapter; `export` writes it again, so a card pushed after
`qlora4080 eval` carries the evaluation table.

The YAML front matter uses the keys the Hugging Face hub reads: base_model
(only a hub id: a local path there would be invalid metadata), library_name,
license (only when known) and tags.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .builtin_models import BUILTIN_MODELS
from .checkpoint import RECIPE_SNAPSHOT, CheckpointMeta
from .errors import QloraError
from .recipe import BUILTIN_PREFIX
from .runs_report.data_summary import DataLine, data_lines
from .toml_io import TOMLDecodeError, loads_toml

CARD_FILE = "README.md"
CARD_MARKER = "<!-- qlora4080 model card: `qlora4080 export` writes it anew; delete this line to keep your own edits -->"
# The built-in model is a GGUF copy of a hub model: the card names the original and its license.
BUILTIN_BASES = {f"{BUILTIN_PREFIX}{key}": (model.hub_id, model.license) for key, model in BUILTIN_MODELS.items()}
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


@dataclass(frozen=True)
class CardInputs:
    run_name: str
    base_model: str
    """As the recipe names it: a hub id, a local folder or builtin:<name>."""
    method: str
    recipe_toml: str
    load_from: str
    """Where a reader loads this model from: the hub repo, or the local folder."""
    hub_base_model: str | None = None
    license: str | None = None
    load_in_4bit: bool = False
    merged: bool = False
    data: list[DataLine] = field(default_factory=list)
    data_note: str = ""
    summary: Mapping[str, object] = field(default_factory=dict)
    eval_markdown: str | None = None
    versions: Mapping[str, str] = field(default_factory=dict)


def build_model_card(card: CardInputs) -> str:
    """README.md text: front matter, what was trained, recipe, data, results, evaluation, how to load it."""
    parts = [_front_matter(card), CARD_MARKER, "", f"# {card.run_name}", "", _intro(card), ""]
    parts += _training_table(card) + _data_section(card) + _results_section(card)
    if card.eval_markdown:
        parts += ["## Evaluation", "", _demote_headings(card.eval_markdown.strip()), ""]
    parts += _usage_section(card)
    if card.recipe_toml.strip():
        parts += ["## Recipe", "", "The resolved recipe of this run (file paths are those of the machine it trained on):", "",
                  "```toml", card.recipe_toml.strip(), "```", ""]
    return "\n".join(parts)


def _front_matter(card: CardInputs) -> str:
    tags = ["qlora4080", "lora", *(["qlora"] if card.load_in_4bit else []), card.method, "trl",
            *(["merged"] if card.merged else [])]
    lines = ["---"]
    if card.hub_base_model:
        lines.append(f"base_model: {json.dumps(card.hub_base_model)}")
    lines.append(f"library_name: {'transformers' if card.merged else 'peft'}")
    lines.append("pipeline_tag: text-generation")
    if card.license:
        lines.append(f"license: {json.dumps(card.license)}")
    lines += ["tags:", *(f"- {tag}" for tag in tags), "---"]
    return "\n".join(lines)


def _intro(card: CardInputs) -> str:
    base = f"[{card.hub_base_model}](https://huggingface.co/{card.hub_base_model})" if card.hub_base_model else f"`{card.base_model}`"
    what = ("The LoRA adapter of this run merged into the 16-bit weights of" if card.merged
            else "A LoRA adapter for")
    text = f"{what} {base}, trained with qlora4080 by {_method_text(card.method)}."
    if card.base_model in BUILTIN_BASES:
        text += (f" It was trained on qlora4080's built-in copy of the base (`{card.base_model}`: the Q4_1 GGUF of "
                 f"{card.hub_base_model} de-quantized to fp32), so on the original weights it behaves close to, "
                 "not exactly as, in training.")
    return text


def _training_table(card: CardInputs) -> list[str]:
    recipe = _parse(card.recipe_toml)
    lora, training = _table(recipe, "lora"), _table(recipe, "training")
    rows = [("method", card.method), ("base model", f"`{card.base_model}`"),
            ("base weights in training", "4-bit NF4 (QLoRA)" if card.load_in_4bit else "16/32-bit (LoRA)")]
    if lora:
        modules = lora.get("target_modules")
        shown = ", ".join(map(str, modules)) if isinstance(modules, list) else modules
        rows.append(("LoRA", f"r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, modules: {shown}"))
    if training:
        schedule = f"lr {training.get('learning_rate')} ({training.get('scheduler')})"
        batch = f"batch {training.get('batch_size')} x grad-accum {training.get('grad_accum')}, seed {training.get('seed')}"
        rows.append(("optimization", f"{schedule}, {batch}"))
    if card.versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in card.versions.items() if k != "python")))
    return ["## Training", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), ""]


def _data_section(card: CardInputs) -> list[str]:
    lines = ["## Data", ""]
    if card.data_note:
        lines += [card.data_note, ""]
    if card.data:
        lines += ["| data | from | records | |", "|---|---|---:|---|"]
        lines += [f"| {d.name} | `{d.where}` | {'-' if d.records is None else f'{d.records:,}'} | {d.detail} |" for d in card.data]
        lines.append("")
    tokens, trained = card.summary.get("dataset_tokens"), card.summary.get("dataset_trained_tokens")
    if isinstance(tokens, int) and isinstance(trained, int):
        lines += [f"Training split: {tokens:,} tokens, {trained:,} of them trained (carrying loss)."]
        seen, seen_trained = card.summary.get("tokens_seen"), card.summary.get("trained_tokens_seen")
        if isinstance(seen, int) and isinstance(seen_trained, int):
            lines[-1] += f" Seen in training: {seen:,} tokens, {seen_trained:,} trained."
        lines.append("")
    return lines


def _results_section(card: CardInputs) -> list[str]:
    s = card.summary
    rows = [("steps", s.get("steps")), ("first training loss", s.get("first_loss")), ("final training loss", s.get("last_loss")),
            ("eval loss (validation split)", s.get("eval_loss")), ("eval perplexity (assistant tokens)", s.get("eval_perplexity")),
            # grpo: the mean total reward of the sampled answers, first and last logged steps
            ("first mean reward", s.get("first_reward")), ("final mean reward", s.get("last_reward")),
            ("mean reward on the validation prompts", s.get("eval_reward")),
            ("wall time (s)", s.get("wall_seconds")), (f"peak memory, GiB ({s.get('peak_memory_kind', 'memory')})", s.get("peak_memory_gib"))]
    shown = [(name, f"{value:.4g}" if isinstance(value, float) else str(value)) for name, value in rows if value is not None]
    shown += _early_stopping_rows(s)
    if not shown:
        return []
    return ["## Results", "", "| | |", "|---|---:|", *(f"| {k} | {v} |" for k, v in shown), ""]


def _early_stopping_rows(summary: Mapping[str, object]) -> list[tuple[str, str]]:
    """With early stopping the weights are the best evaluation's, not the last step's: the card says which step."""
    rows = []
    if summary.get("stopped_early") is True:
        step = summary.get("stopped_at_step", summary.get("steps"))
        rows.append(("stopped early", f"at step {step}: the validation loss had stopped improving"))
    best = summary.get("best_checkpoint")
    if isinstance(best, Mapping) and isinstance(best.get("step"), int) and isinstance(best.get("eval_loss"), (int, float)):
        rows.append(("weights from", f"step {best['step']}, the best evaluation (eval loss {best['eval_loss']:.4g})"))
    return rows


def _usage_section(card: CardInputs) -> list[str]:
    base = card.hub_base_model or card.base_model
    note = "" if card.hub_base_model else "  # the local base model this run trained on"
    if card.merged:
        load = [f'model = AutoModelForCausalLM.from_pretrained("{card.load_from}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{card.load_from}")  # with the chat template used in training']
        imports = ["from transformers import AutoModelForCausalLM, AutoTokenizer"]
    else:
        load = [f'base = AutoModelForCausalLM.from_pretrained("{base}"){note}',
                f'model = PeftModel.from_pretrained(base, "{card.load_from}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{card.load_from}")  # with the chat template used in training']
        imports = ["from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer"]
    code = [*imports, "", *load, "", 'messages = [{"role": "user", "content": "Hello!"}]',
            "inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, return_tensors=\"pt\")",
            "output = model.generate(**inputs, max_new_tokens=128)",
            'print(tokenizer.decode(output[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True))']
    local = card.load_from if not _is_hub_repo(card.load_from) else card.load_from.rsplit("/", 1)[-1]
    chat = ["```bash"]
    if _is_hub_repo(card.load_from):
        chat.append(f"hf download {card.load_from} --local-dir {local}")
    chat += [f"qlora4080 chat {local}", "```"]
    return ["## How to use", "", "With transformers and peft:" if not card.merged else "With transformers:", "",
            "```python", *code, "```", "", "With qlora4080 (a streaming chat; `--prompt` answers once):", "", *chat, ""]


def _demote_headings(markdown: str) -> str:
    """eval.md's own '# Evaluation' would outrank the card's title: its headings go two levels down."""
    lines = markdown.splitlines()
    if lines and lines[0].strip() == "# Evaluation":
        lines = lines[1:]
    return "\n".join(f"##{line}" if line.startswith("#") else line for line in lines).strip()


def _parse(recipe_toml: str) -> dict[str, object]:
    try:
        return loads_toml(recipe_toml)
    except TOMLDecodeError:
        return {}


def _table(data: Mapping[str, object], name: str) -> dict[str, object]:
    value = data.get(name)
    return value if isinstance(value, dict) else {}


def _is_hub_repo(text: str) -> bool:
    return bool(_HUB_ID.fullmatch(text)) and not Path(text).expanduser().exists()


# ---- gathering the inputs from a checkpoint ----

def card_for_checkpoint(checkpoint: Path, *, load_from: str | None = None, merged: bool = False,
                        with_eval: bool = True, meta: CheckpointMeta | None = None) -> str:
    """The card of a checkpoint folder; `meta` stands in for its qlora4080.json while `train` is saving it.

    `load_from` is where readers will load it from (a hub repo), `merged` says it is the merged model.
    """
    meta = meta or CheckpointMeta.load(checkpoint)
    if meta is None:
        raise QloraError(f"{checkpoint} is not a qlora4080 checkpoint (no qlora4080.json)",
                         hint="pass checkpoints/<run> as written by `qlora4080 train`")
    recipe_toml = _recipe_text(checkpoint / RECIPE_SNAPSHOT)
    recipe = _parse(recipe_toml)
    hub_base, license_id = base_model_facts(meta.base_model)
    data, note = data_lines(recipe)
    return build_model_card(CardInputs(
        run_name=checkpoint.name, base_model=meta.base_model, method=meta.method, recipe_toml=home_as_tilde(recipe_toml),
        load_from=load_from or str(checkpoint), hub_base_model=hub_base, license=license_id,
        load_in_4bit=meta.load_in_4bit, merged=merged, data=data, data_note=note,
        summary=meta.summary,
        eval_markdown=_eval_markdown(recipe, checkpoint.name) if with_eval else None,
        versions={k: v for k, v in meta.versions.items() if k in ("qlora4080", "transformers", "trl", "peft", "torch")},
    ))


def _recipe_text(snapshot: Path) -> str:
    """The recipe snapshot's text; "" when it is missing or damaged (the card then leaves the recipe out)."""
    try:
        text = snapshot.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
    return text if _parse(text) else ""


def base_model_facts(name: str) -> tuple[str | None, str | None]:
    """(hub id, license) of a base model, as far as this machine knows; the license from the model's own card."""
    if name in BUILTIN_BASES:
        return BUILTIN_BASES[name]
    local = Path(name).expanduser()
    hub_id = name if _HUB_ID.fullmatch(name) and not local.exists() else None
    readme: object = local / CARD_FILE if local.is_dir() else None
    if hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache

            readme = try_to_load_from_cache(hub_id, CARD_FILE)  # only what a download already cached: no network
        except Exception:  # noqa: BLE001  a card is written without the license rather than not at all
            readme = None
    return hub_id, _card_license(Path(readme)) if isinstance(readme, (str, Path)) else None


def _card_license(readme: Path) -> str | None:
    try:
        from huggingface_hub import metadata_load

        value = (metadata_load(readme) or {}).get("license")
    except Exception:  # noqa: BLE001  an unreadable or odd card: no license rather than no card
        return None
    return value if isinstance(value, str) and value else None


def _eval_markdown(recipe: Mapping[str, object], run_name: str) -> str | None:
    runs_dir = _table(recipe, "output").get("runs_dir", "runs")
    path = Path(str(runs_dir)) / run_name / "eval.md"
    try:
        return home_as_tilde(path.read_text(encoding="utf-8")) if path.is_file() else None  # it names the data file
    except (OSError, UnicodeDecodeError):
        return None


def home_as_tilde(text: str) -> str:
    """Published text (the card, the uploaded metadata) need not show the account's home folder: /home/me/data -> ~/data."""
    home = str(Path.home())
    return text.replace(home + "/", "~/") if len(home) > 1 else text


def _method_text(method: str) -> str:
    """How the card names the training: the method's own wording, or its name for one this version does not know."""
    from .methods.registry import METHODS

    return METHODS[method].card_text if method in METHODS else method
