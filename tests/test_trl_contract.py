"""Every private hook of trl / transformers that qlora4080 overrides, writes or patches still means what we assume.

qlora4080 leans on private seams of the locked trl (1.15) and transformers (5.x): its trainers override
`_prepare_dataset`, `_load_from_checkpoint`, `_save_checkpoint` and `tokenize_row`, write the SFT trainer's
`_total_train_tokens` and `_metrics`, and compat.py swaps `trl.trainer.utils._ChunkedLogProbFunction`.
A private name that is renamed, re-signed or no longer called fails nothing: the override is simply
never called (or called with other arguments) and training goes on doing something else: TRL
re-tokenizing the pairs qlora4080 tokenized, a resume that keeps the untrained adapter, a CPU step dying
in a Triton kernel. So when a pin moves, this test fails first, naming the hook and what to check in our code.

Only inspect and ast on classes and source: no model, no training, a few seconds on a CPU.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import os
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from stack_lock import REPO

from qlora4080.preference.trainer import COMPLETION_COLUMNS, PAIR_COLUMNS
from qlora4080.training.token_counting import tokens_in

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # importing trl.experimental (ORPO) prints a notice otherwise

PACKAGE = REPO / "qlora4080"


# ---- reading the libraries ----

def resolve(dotted: str) -> Any:
    """'trl.DPOTrainer.__init__' -> the object: the longest importable module prefix, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            found = getattr(found, name)  # AttributeError: the library no longer has it
        return found
    raise ImportError(dotted)


def source_of(dotted: str) -> str:
    found = resolve(dotted)
    return inspect.getsource(found.fget if isinstance(found, property) else found)


def named_parameters(function: Callable[..., Any]) -> list[tuple[str, object]]:
    """(name, default) of a method's parameters after self; inspect.Parameter.empty where there is no default."""
    return [(p.name, p.default) for p in list(inspect.signature(function).parameters.values())[1:]]


def shown(parameters: list[tuple[str, object]]) -> str:
    return "(" + ", ".join(name if default is inspect.Parameter.empty else f"{name}={default!r}"
                           for name, default in parameters) + ")"


def _only_forwards(function: Callable[..., Any]) -> bool:
    kinds = [p.kind for p in list(inspect.signature(function).parameters.values())[1:]]
    return kinds == [inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD]


def defining(owner: type, name: str) -> tuple[type, Callable[..., Any]]:
    """The class in owner's MRO whose `name` really takes the arguments, past trl's `(*args, **kwargs)` wrappers
    (SFTTrainer.training_step and friends add a context manager and pass everything on)."""
    for klass in owner.__mro__:
        function = vars(klass).get(name)
        if function is None:
            continue
        if not _only_forwards(function):
            return klass, function
        assert f"super().{name}(*args, **kwargs)" in inspect.getsource(function), (
            f"{klass.__qualname__}.{name}(*args, **kwargs) no longer passes its arguments on to the parent's: "
            "read what it does with them before trusting the parent's signature")
    raise AssertionError(f"{owner.__qualname__} has no {name}")


# ---- the hooks ----

@dataclass(frozen=True)
class Hook:
    symbol: str
    """The library's owner.name."""
    ours: str
    """Where qlora4080 overrides, writes or patches it."""
    check: str
    """What to check in our code when the library changed."""
    parameters: tuple[str, ...] | None = None
    """A method's parameters after self, in order; None for an attribute."""
    defaults: tuple[tuple[str, object], ...] = ()
    """Defaults our override relies on."""
    used_in: tuple[tuple[str, str], ...] = ()
    """(library function, text its source must contain): where the library calls, sets or reads it."""

    @property
    def owner(self) -> str:
        return self.symbol.rsplit(".", 1)[0]

    @property
    def name(self) -> str:
        return self.symbol.rsplit(".", 1)[1]


LOAD_CALLERS = (("transformers.Trainer.train", "self._load_from_checkpoint(resume_from_checkpoint)"),
                ("transformers.Trainer._prepare_for_training", "self._load_from_checkpoint(resume_from_checkpoint, self.model_wrapped)"))

HOOKS = [
    Hook("trl.DPOTrainer._prepare_dataset", "preference/trainer.py QloraDPOTrainer._prepare_dataset",
         "our pairs arrive tokenized (prompt_ids/chosen_ids/rejected_ids) and must skip TRL's tokenization: find where "
         "trl 'prepares' a DPO dataset now and override that instead",
         parameters=("dataset", "processing_class", "args", "dataset_name"),
         used_in=(("trl.DPOTrainer.__init__", "self._prepare_dataset("), ("trl.DPOTrainer.evaluate", "self._prepare_dataset("))),
    Hook("trl.KTOTrainer._prepare_dataset", "methods/kto.py QloraKTOTrainer._prepare_dataset",
         "KTO rows arrive tokenized (prompt_ids/completion_ids/label) and must skip TRL's tokenization: find where trl "
         "'prepares' a KTO dataset now and override that instead",
         parameters=("dataset", "processing_class", "args", "dataset_name"),
         used_in=(("trl.KTOTrainer.__init__", "self._prepare_dataset("), ("trl.KTOTrainer.evaluate", "self._prepare_dataset("))),
    Hook("trl.DPOTrainer._load_from_checkpoint", "preference/trainer.py ResumesBesideReference._load_from_checkpoint",
         "a resumed DPO run must reload the trained adapter beside TRL's 'ref' copy: find what loads checkpoint weights "
         "on resume now and hook that",
         parameters=("resume_from_checkpoint", "model"), defaults=(("model", None),), used_in=LOAD_CALLERS),
    Hook("trl.KTOTrainer._load_from_checkpoint", "preference/trainer.py ResumesBesideReference (in methods/kto.py QloraKTOTrainer)",
         "a resumed KTO run must reload the trained adapter beside TRL's 'ref' copy: find what loads checkpoint weights "
         "on resume now and hook that",
         parameters=("resume_from_checkpoint", "model"), defaults=(("model", None),), used_in=LOAD_CALLERS),
    Hook("trl.experimental.orpo.ORPOTrainer.tokenize_row", "preference/trainer.py QloraORPOTrainer.tokenize_row",
         "rows from tokens.orpo_columns carry chosen_labels and must pass through untouched: find where ORPO tokenizes "
         "rows now (or whether it moved out of trl.experimental) and override that",
         parameters=("feature", "model"), defaults=(("model", None),),
         used_in=(("trl.experimental.orpo.ORPOTrainer.__init__", "map(self.tokenize_row"),
                  ("trl.experimental.orpo.ORPOTrainer.tokenize_row", 'batch["chosen_labels"]'))),
    Hook("transformers.Trainer.training_step",
         "training/token_counting.py CountsTokens (in the SFT, DPO, ORPO and KTO trainers)",
         "the panel's token counters are summed in training_step, which calls super() positionally: keep our "
         "signature and the super() call in step with the library's",
         parameters=("model", "inputs", "num_items_in_batch"), defaults=(("num_items_in_batch", None),),
         used_in=(("transformers.Trainer._run_epoch", "self.training_step(model, inputs, num_items_in_batch)"),)),
    Hook("trl.SFTTrainer.compute_loss", "training/trainer.py CountingSFTTrainer.compute_loss",
         "our compute_loss pops packed_tokens, then runs TRL's fused loss (GPU) or transformers' own (CPU, "
         "Trainer.compute_loss called directly) and sets use_cache=False 'as trl does'",
         parameters=("model", "inputs", "return_outputs", "num_items_in_batch"),
         defaults=(("return_outputs", False), ("num_items_in_batch", None)),
         used_in=(("trl.SFTTrainer.compute_loss", 'inputs["use_cache"] = False'),
                  ("transformers.Trainer.training_step", "self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)"))),
    Hook("transformers.Trainer.compute_loss", "training/trainer.py CountingSFTTrainer.compute_loss (the CPU path)",
         "on a CPU our compute_loss skips SFTTrainer's fused loss and calls Trainer.compute_loss with keywords",
         parameters=("model", "inputs", "return_outputs", "num_items_in_batch"),
         defaults=(("return_outputs", False), ("num_items_in_batch", None))),
    Hook("transformers.Trainer._save_checkpoint", "training/checkpoint_saving.py SafeCheckpointSaving._save_checkpoint",
         "checkpoints are staged by pointing args.output_dir at a staging folder around the parent's _save_checkpoint: "
         "find what writes checkpoint-N now and whether it still reads args.output_dir",
         parameters=("model", "trial"),
         used_in=(("transformers.Trainer._maybe_log_save_evaluate", "self._save_checkpoint(model, trial)"),)),
    Hook("trl.SFTTrainer._total_train_tokens", "training/trainer.py CountingSFTTrainer.compute_loss",
         "with packing, our compute_loss replaces TRL's count (the sum of a 4-D mask) by packed_tokens: find TRL's token "
         "counter now, or the num_tokens metric goes back to nonsense (or our getattr(..., None) silently skips the fix)",
         used_in=(("trl.SFTTrainer.__init__", "self._total_train_tokens = 0"),
                  ("trl.SFTTrainer.compute_loss", "self._total_train_tokens +="),
                  ("trl.SFTTrainer.compute_loss", 'self._metrics[mode]["num_tokens"] = [self._total_train_tokens]'))),
    Hook("trl.SFTTrainer._metrics", "training/trainer.py CountingSFTTrainer.compute_loss",
         'we write self._metrics["train"]["num_tokens"] = [count]: TRL must still keep per-mode lists it averages in log()',
         used_in=(("trl.SFTTrainer.__init__", 'self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}'),
                  ("trl.SFTTrainer.log", "self._metrics[mode].items()"),
                  ("trl.SFTTrainer.log", "sum(val) / len(val)"))),
    Hook("trl.KTOTrainer.calculate_KL", "methods/kto.py QloraKTOTrainer._prepare_dataset (reads it)",
         "our KTO _prepare_dataset reads self.calculate_KL and then builds KL_completion_ids itself, as TRL does "
         "(methods/kto.py _with_mismatched_answers): find what decides the KL term now and how TRL pairs the answers",
         used_in=(("trl.KTOTrainer.__init__", "self.calculate_KL = "),
                  # methods/kto.py _check_recipe asks for batch_size >= 2 exactly when this holds
                  ("trl.KTOTrainer.__init__", 'calculate_kl = args.loss_type not in ["apo_zero_unpaired"]'),
                  ("trl.KTOTrainer._prepare_dataset", "if self.calculate_KL:"),
                  ("trl.KTOTrainer._prepare_dataset",
                   'examples["KL_completion_ids"] = [examples["completion_ids"][-1]] + examples["completion_ids"][:-1]'),
                  ("trl.KTOTrainer._prepare_dataset", "batched=True, batch_size=args.per_device_train_batch_size"))),
    Hook("trl.trainer.utils._ChunkedLogProbFunction", "training/compat.py ensure_log_prob_kernel (replaces it)",
         "the per-token log-prob kernel is swapped for DeviceLogProbs so CPU tensors avoid Triton: find where trl "
         "looks the kernel up now and patch that name, or DPO/KTO fail on a CPU ('NoneType' has no attribute 'apply')",
         used_in=(("trl.trainer.utils.add_fused_lm_head", "_ChunkedLogProbFunction.apply("),
                  ("trl.DPOTrainer.__init__", "add_fused_lm_head("),
                  ("trl.KTOTrainer.__init__", "add_fused_lm_head("),
                  ("trl.GRPOTrainer.__init__", "add_fused_lm_head("))),
    Hook("trl.GRPOTrainer._generate", "methods/grpo.py QloraGRPOTrainer._generate",
         "we count a training step's tokens from what _generate returns first: prompt ids, then answer ids, one list per "
         "answer: find where GRPO generates now and what it returns",
         parameters=("prompts",),
         used_in=(("trl.GRPOTrainer._generate", "return prompt_ids, completion_ids, "),
                  ("trl.GRPOTrainer._generate_and_score_completions", "= self._generate(prompts)"))),
    Hook("trl.GRPOTrainer._calculate_rewards", "methods/grpo.py QloraGRPOTrainer._calculate_rewards",
         "we keep the first answer of a step with its rewards (row 0 of the answers x rewards tensor it returns) for "
         "the sample line of train.log: find where GRPO scores answers now",
         parameters=("inputs", "prompts", "completions", "completion_ids_list"),
         used_in=(("trl.GRPOTrainer._generate_and_score_completions",
                   "rewards_per_func = self._calculate_rewards(inputs, prompts, completions, completion_ids_list)"),
                  ("trl.GRPOTrainer._calculate_rewards", "return rewards_per_func"))),
    Hook("trl.GRPOTrainer.log", "methods/grpo.py QloraGRPOTrainer.log",
         "before TRL averages self._metrics we drop the metrics no answer scored (all NaN, which TRL would log as None): "
         "TRL must still average per-mode lists of floats in log()",
         parameters=("logs", "start_time"), defaults=(("start_time", None),),
         used_in=(("trl.GRPOTrainer.__init__", 'self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}'),
                  ("trl.GRPOTrainer.log", "valid = [v for v in val if not math.isnan(v)]"))),
    Hook("trl.GRPOTrainer.reward_func_names", "methods/grpo.py QloraGRPOTrainer.log (reads it)",
         "the sample line names each reward as TRL logs it (rewards/<name>/mean)",
         used_in=(("trl.GRPOTrainer.__init__", "self.reward_func_names = "),)),
    Hook("trl.GRPOTrainer.eos_token_ids", "methods/grpo.py _stop_on_end_of_turn (sets generation_config.eos_token_id)",
         "answers stop, and count as finished, on the model's generation_config EOS ids, which we set to the chat "
         "template's end of turn: find where GRPO takes its stop tokens now",
         used_in=(("trl.GRPOTrainer.__init__", "eos_token_ids = model.generation_config.eos_token_id"),
                  ("trl.GRPOTrainer.__init__", "self.eos_token_ids = eos_token_ids"))),
    Hook("transformers.PreTrainedConfig._name_or_path", "builtin_models.py _convert (writes it)",
         "the converted built-in model's config is given its hub id through _name_or_path: use the public name_or_path",
         used_in=(("transformers.PreTrainedConfig.__post_init__", "self._name_or_path = "),
                  ("transformers.PreTrainedConfig.name_or_path", 'getattr(self, "_name_or_path", None)'))),
]


@pytest.mark.parametrize("hook", HOOKS, ids=lambda hook: hook.symbol)
def test_the_library_still_has_the_hook(hook: Hook) -> None:
    where = f"{hook.symbol} (ours: {hook.ours})"
    try:
        owner = resolve(hook.owner)
    except (ImportError, AttributeError) as error:
        pytest.fail(f"{where}: {hook.owner} is gone ({error}); {hook.check}")
    if hook.parameters is not None:
        assert hasattr(owner, hook.name), f"{where}: {hook.owner} has no {hook.name} any more; {hook.check}"
        klass, method = defining(owner, hook.name) if inspect.isclass(owner) else (owner, getattr(owner, hook.name))
        found = named_parameters(method)
        assert [name for name, _ in found] == list(hook.parameters), (
            f"{where}: {klass.__qualname__}.{hook.name} now takes {[name for name, _ in found]}, "
            f"our override takes {list(hook.parameters)}; {hook.check}")
        for name, default in hook.defaults:
            assert dict(found)[name] == default, (
                f"{where}: the default of {name} is now {dict(found)[name]!r}, we rely on {default!r}; {hook.check}")
    elif inspect.ismodule(owner):
        assert hook.name in vars(owner), f"{where}: {hook.owner} no longer defines {hook.name}; {hook.check}"
    for function, text in hook.used_in:
        try:
            text_of_function = source_of(function)
        except AttributeError as error:
            pytest.fail(f"{where}: {function} is gone ({error}); {hook.check}")
        assert text in text_of_function, f"{where}: {function} no longer contains `{text}`; {hook.check}"


# ---- our side: every trainer class qlora4080 builds ----

def trainer_factories() -> list[str]:
    """'module:function' of every `*_trainer_class()` in the package (they build our trainer classes on demand)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.FunctionDef) and node.name.endswith("_trainer_class") and not node.args.args:
                found.append(f"{module}:{node.name}")
    return found


FACTORIES = trainer_factories()


@cache
def build(factory: str) -> type:
    module, name = factory.split(":")
    built = getattr(importlib.import_module(module), name)()
    assert inspect.isclass(built), f"{factory}() returned {built!r}, not a trainer class"
    return built


def split_mro(trainer: type) -> tuple[list[type], type]:
    """(our classes and mixins, the library trainer they sit on)."""
    ours = [klass for klass in trainer.__mro__ if klass.__module__.startswith("qlora4080")]
    library = next(klass for klass in trainer.__mro__ if klass is not object and not klass.__module__.startswith("qlora4080"))
    return ours, library


def where_defined(function: Callable[..., Any]) -> str:
    path = Path(inspect.getsourcefile(function) or "?")
    line = inspect.getsourcelines(function)[1]
    return f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{line}"


def library_sources(library: type) -> str:
    return "\n".join(inspect.getsource(inspect.getmodule(klass)) for klass in library.__mro__ if klass is not object)


def test_the_factories_are_found() -> None:
    names = {factory.split(":")[1] for factory in FACTORIES}
    assert {"counting_trainer_class", "preference_trainer_class", "orpo_trainer_class", "kto_trainer_class"} <= names, (
        f"found only {sorted(names)}: a factory was renamed; keep trainer_factories() finding every trainer class we build")


@pytest.mark.parametrize("factory", FACTORIES)
def test_our_overrides_match_the_library_and_are_in_the_table(factory: str) -> None:
    ours, library = split_mro(build(factory))
    methods_in_table = {(hook.name, hook.owner) for hook in HOOKS if hook.parameters is not None}
    sources = library_sources(library)
    for klass in ours:
        for name, value in vars(klass).items():
            if name.startswith("__"):
                continue
            if not hasattr(library, name):
                # a name of ours: the library must not use it for something else (an instance attribute, say)
                assert not re.search(rf"\bself\.{re.escape(name)}\b", sources), (
                    f"{klass.__qualname__}.{name} ({factory}): {library.__qualname__} now uses self.{name} too; rename ours")
                continue
            assert inspect.isfunction(value), (
                f"{klass.__qualname__}.{name} ({factory}) shadows {library.__qualname__}.{name}, which is not a method")
            assert any(name == hook_name and issubclass(library, resolve(owner)) for hook_name, owner in methods_in_table), (
                f"{where_defined(value)}: {klass.__qualname__}.{name} overrides {library.__qualname__}.{name}, "
                "which is not in HOOKS: add it to tests/test_trl_contract.py so a library change to it is caught")
            parent, method = defining(library, name)
            assert named_parameters(value) == named_parameters(method), (
                f"{where_defined(value)}: {klass.__qualname__}.{name}{shown(named_parameters(value))} no longer matches "
                f"{parent.__module__}.{parent.__qualname__}.{name}{shown(named_parameters(method))}: follow the library's "
                "signature (and the super() call) in our override")


@pytest.mark.parametrize("factory", FACTORIES)
def test_trainers_on_trls_fused_head_can_step_on_a_cpu(factory: str) -> None:
    """trl computes their log-probabilities through a Triton-only kernel: ours install the plain one or avoid it."""
    trainer = build(factory)
    _, library = split_mro(trainer)
    if "add_fused_lm_head(" not in inspect.getsource(library.__init__):
        return
    installs_plain_kernel = "ensure_log_prob_kernel()" in inspect.getsource(resolve(factory.replace(":", ".")))
    avoids_kernel = "fused_loss_usable(" in inspect.getsource(trainer.compute_loss)
    assert installs_plain_kernel or avoids_kernel, (
        f"{factory}: {library.__qualname__} computes log-probabilities with trl's fused LM head (a Triton kernel); "
        "call compat.ensure_log_prob_kernel() in the factory (as preference_trainer_class does) or route around it "
        "in compute_loss (as counting_trainer_class does), or a CPU run fails on its first step")


# ---- specific contracts ----

def test_checkpoints_are_written_where_safe_checkpoint_saving_stages_them() -> None:
    from transformers import Trainer
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

    from qlora4080.training.checkpoint_saving import SafeCheckpointSaving

    fix = "SafeCheckpointSaving stages a save by pointing args.output_dir at a staging folder and moves checkpoint-N out"
    assert PREFIX_CHECKPOINT_DIR == "checkpoint", f"transformers now names checkpoints {PREFIX_CHECKPOINT_DIR}-N; {fix}"
    save = inspect.getsource(Trainer._save_checkpoint)
    for text in ('checkpoint_folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"',
                 "run_dir = self._get_output_dir(trial=trial)", "os.path.join(run_dir, checkpoint_folder)",
                 "self.state.best_model_checkpoint = best_checkpoint_dir", "rotate_checkpoints("):
        assert text in save, f"Trainer._save_checkpoint no longer contains `{text}`; {fix}"
    assert "run_dir = self.args.output_dir" in inspect.getsource(Trainer._get_output_dir), (
        f"Trainer._get_output_dir no longer returns args.output_dir; {fix}")
    ours = inspect.getsource(SafeCheckpointSaving._save_checkpoint)
    call = next(node for node in ast.walk(ast.parse(textwrap.dedent(ours)))
                if isinstance(node, ast.Call) and ast.unparse(node.func) == "rotate_checkpoints")
    accepted = set(inspect.signature(rotate_checkpoints).parameters)
    assert {keyword.arg for keyword in call.keywords} <= accepted, (
        f"transformers.trainer_utils.rotate_checkpoints now takes {sorted(accepted)}; fix the call in SafeCheckpointSaving")
    for trainer in ("trl.SFTTrainer", "trl.DPOTrainer", "trl.KTOTrainer", "trl.experimental.orpo.ORPOTrainer"):
        klass, method = defining(resolve(trainer), "_save_checkpoint")
        if klass is not Trainer:  # trl's own: writes its model card into args.output_dir, then the real save
            assert "super()._save_checkpoint(model, trial)" in inspect.getsource(method), (
                f"{trainer}._save_checkpoint no longer ends in transformers' save; {fix}")


def test_the_resume_override_matches_what_transformers_loads() -> None:
    from transformers import Trainer
    from transformers.utils import ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME

    from qlora4080.preference.trainer import ADAPTER_WEIGHTS

    assert set(ADAPTER_WEIGHTS) == {ADAPTER_SAFE_WEIGHTS_NAME, ADAPTER_WEIGHTS_NAME}, (
        f"transformers saves adapters as {ADAPTER_SAFE_WEIGHTS_NAME}/{ADAPTER_WEIGHTS_NAME}: update preference/trainer.py "
        "ADAPTER_WEIGHTS, or a resume never reloads the trained adapter")
    load = inspect.getsource(Trainer._load_from_checkpoint)
    assert "if adapter_subdirs:" in load and "model.load_adapter(peft_id, subdir_name" in load, (
        "Trainer._load_from_checkpoint no longer loads only the sub-folder adapters when a checkpoint has them: re-run "
        "the DPO resume test and drop or adapt ResumesBesideReference._load_from_checkpoint")


def test_the_log_prob_kernel_patch_reaches_the_call_and_takes_its_arguments() -> None:
    trl_utils = importlib.import_module("trl.trainer.utils")
    from qlora4080.training.plain_logprobs import OPTIONAL_OUTPUTS, PlainLogProbs

    fix = "compat.ensure_log_prob_kernel replaces trl.trainer.utils._ChunkedLogProbFunction with DeviceLogProbs"
    add_head = trl_utils.add_fused_lm_head
    for trainer in ("trl.DPOTrainer", "trl.KTOTrainer"):  # they call it by a name bound to the same function
        assert vars(importlib.import_module(resolve(trainer).__module__))["add_fused_lm_head"] is add_head, (
            f"{trainer} no longer uses trl.trainer.utils.add_fused_lm_head; {fix}")
    assert add_head.__globals__ is vars(trl_utils), (
        f"add_fused_lm_head looks _ChunkedLogProbFunction up in another module now; {fix}")
    calls = [node for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(add_head))))
             if isinstance(node, ast.Call) and ast.unparse(node.func) == "_ChunkedLogProbFunction.apply"]
    ours = list(inspect.signature(PlainLogProbs.apply).parameters)  # a staticmethod: no self to drop
    assert len(calls) == 1 and not calls[0].keywords and len(calls[0].args) == len(ours), (
        f"trl now calls _ChunkedLogProbFunction.apply as {[ast.unparse(call) for call in calls]}; PlainLogProbs.apply "
        f"takes {ours}: {fix}")
    # the kernel itself (read, not imported: it needs Triton)
    kernel_file = Path(importlib.import_module("trl").__file__ or "").parent / "kernels" / "chunked_logprob.py"
    tree = ast.parse(kernel_file.read_text(encoding="utf-8"))
    kernel = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "ChunkedLogProbFunction")
    forward = next(node for node in kernel.body if isinstance(node, ast.FunctionDef) and node.name == "forward")
    assert [arg.arg for arg in forward.args.args][1:] == ours, (
        f"ChunkedLogProbFunction.forward now takes {[arg.arg for arg in forward.args.args][1:]}: give PlainLogProbs.apply "
        "the same arguments")
    kernel_outputs = next(ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                          and any(isinstance(t, ast.Name) and t.id == "OPTIONAL_OUTPUTS" for t in node.targets))
    assert tuple(kernel_outputs) == OPTIONAL_OUTPUTS, (
        f"the kernel's optional outputs are now {kernel_outputs}: update plain_logprobs.OPTIONAL_OUTPUTS and what apply returns")
    assert "log_probs, entropy, log_sum_sq_probs, mean_logits, is_top1 = (" in inspect.getsource(add_head), (
        "trl unpacks the kernel's outputs differently now: PlainLogProbs.apply must return them in trl's order")


def _row_keys(path: Path, function: str) -> set[str]:
    """The keys of the tokenized rows `function` in our `path` builds: its dict literals with a "prompt_ids" key."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    node = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function)
    found = {frozenset(key.value for key in d.keys if isinstance(key, ast.Constant))
             for d in ast.walk(node) if isinstance(d, ast.Dict)}
    rows = [keys for keys in found if "prompt_ids" in keys]
    assert len(rows) == 1, f"{path.name}:{function} builds its rows differently now; teach tests/test_trl_contract.py their keys"
    return set(rows[0])


def _signature_columns(trainer: str) -> set[str]:
    from types import SimpleNamespace

    probe = SimpleNamespace(_signature_columns=None, _is_vision_dataset=False)
    resolve(trainer)._set_signature_columns_if_needed(probe)
    return set(probe._signature_columns)


def test_dpo_takes_the_pairs_we_tokenized() -> None:
    from trl.trainer.dpo_trainer import DataCollatorForPreference

    columns = _row_keys(PACKAGE / "preference" / "tokens.py", "tokenize_pair")
    assert columns == {"prompt_ids", "chosen_ids", "rejected_ids"}, f"tokenize_pair now returns {sorted(columns)}"
    kept = _signature_columns("trl.DPOTrainer")
    assert columns <= kept, (
        f"DPOTrainer keeps only the columns {sorted(kept)} (remove_unused_columns): our pairs {sorted(columns)} would be dropped")
    batch = DataCollatorForPreference(pad_token_id=0)([{"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]}])
    # CountsTokens.training_step counts these two (COMPLETION_COLUMNS)
    assert int(batch["attention_mask"].sum()) == 9 and int(batch["completion_mask"].sum()) == 3, (
        f"DPO's collator now returns {sorted(batch)}: COMPLETION_COLUMNS (preference/trainer.py) name attention_mask "
        "and completion_mask for the panel's token counts")
    assert tokens_in(batch, COMPLETION_COLUMNS) == (9, 3)


def test_orpo_takes_the_rows_orpo_columns_writes() -> None:
    from datasets import Dataset
    from trl.data_utils import maybe_apply_chat_template, maybe_extract_prompt
    from trl.experimental.utils import DPODataCollatorWithPadding

    from qlora4080.preference.tokens import orpo_columns

    row = orpo_columns(Dataset.from_list([{"prompt_ids": [1, 2, 3], "chosen_ids": [4, 5], "rejected_ids": [6]}]))[0]
    assert "chosen_labels" in row, "orpo_columns no longer writes chosen_labels: QloraORPOTrainer.tokenize_row keys on it"
    # ORPOTrainer.__init__ maps these two over the rows before tokenize_row: they must leave ours alone
    assert maybe_extract_prompt(dict(row)) == row, "trl's maybe_extract_prompt now changes our tokenized ORPO rows"
    assert maybe_apply_chat_template(dict(row), None) == row, "trl's maybe_apply_chat_template now changes our ORPO rows"
    init = inspect.getsource(resolve("trl.experimental.orpo.ORPOTrainer.__init__"))
    assert "DPODataCollatorWithPadding(" in init, "ORPOTrainer's default collator changed: re-check orpo_columns' columns"
    batch = DPODataCollatorWithPadding(pad_token_id=0)([row])
    for side in ("chosen", "rejected"):  # CountsTokens.training_step counts these (PAIR_COLUMNS)
        assert {f"{side}_input_ids", f"{side}_attention_mask", f"{side}_labels"} <= set(batch), (
            f"ORPO's collator now returns {sorted(batch)}: PAIR_COLUMNS (preference/trainer.py) and orpo_columns expect "
            f"{side}_input_ids/_attention_mask/_labels")
    assert int(batch["chosen_attention_mask"].sum()) == 5 and int((batch["chosen_labels"] != -100).sum()) == 2
    assert tokens_in(batch, PAIR_COLUMNS) == (5 + 4, 2 + 1)


def test_kto_takes_pre_tokenized_rows_and_decides_the_kl_term_before_preparing_them() -> None:
    from trl.trainer.kto_trainer import DataCollatorForUnpairedPreference

    written = _row_keys(PACKAGE / "methods" / "feedback_records.py", "tokenize_feedback")
    assert written == {"prompt_ids", "completion_ids", "label"}, f"tokenize_feedback now writes {sorted(written)}"
    columns = {*written, "KL_completion_ids"}  # QloraKTOTrainer._prepare_dataset adds it when calculate_KL
    kept = _signature_columns("trl.KTOTrainer")
    assert columns <= kept, f"KTOTrainer keeps only the columns {sorted(kept)} (remove_unused_columns), not all of {sorted(columns)}"
    rows = [{"prompt_ids": [1, 2], "completion_ids": [3, 4, 5], "label": True, "KL_completion_ids": [6]},
            {"prompt_ids": [7], "completion_ids": [8], "label": False, "KL_completion_ids": [3, 4, 5]}]
    batch = DataCollatorForUnpairedPreference(pad_token_id=0)(rows)
    expected = {"input_ids", "attention_mask", "completion_mask", "KL_input_ids", "KL_attention_mask", "KL_completion_mask",
                "label"}
    assert expected <= set(batch), f"KTO's collator now returns {sorted(batch)}, not {sorted(expected)}"
    # CountsTokens.training_step counts the policy's batch only (the KL_ one trains nothing)
    assert int(batch["attention_mask"].sum()) == 7 and int(batch["completion_mask"].sum()) == 4
    assert tokens_in(batch, COMPLETION_COLUMNS) == (7, 4)
    from trl import KTOConfig

    strategy = next(field.default for field in dataclasses.fields(KTOConfig) if field.name == "train_sampling_strategy")
    assert strategy == "sequential", (
        f"KTOConfig's train_sampling_strategy now defaults to {strategy!r}: the KL term pairs each answer with the other "
        "prompts of its batch in dataset order, so build_kto_config must now pass train_sampling_strategy='sequential'")
    init = inspect.getsource(resolve("trl.KTOTrainer.__init__"))
    assert init.index("self.calculate_KL = ") < init.index("self._prepare_dataset("), (
        "KTOTrainer.__init__ now calls _prepare_dataset before it sets self.calculate_KL: our override cannot read it there")
