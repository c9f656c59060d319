"""Recipe validation: good files load; every bad input names file, line, key and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import DEMO_RECIPE, REPO
from pydantic import ValidationError

from qlora4080.errors import QloraError
from qlora4080.recipe import load_recipe, parse_override


def _write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "train.jsonl").write_text('{"messages": []}\n', encoding="utf-8")
    path = tmp_path / "r.toml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """\
[model]
name = "builtin:smollm2-135m-instruct"
max_seq_len = 256

[data]
train = "train.jsonl"

[training]
learning_rate = 2e-4
"""


def test_bundled_recipes_load():
    for path in sorted((REPO / "recipes").glob("*.toml")):
        recipe = load_recipe(path)
        assert recipe.model.name


def test_demo_recipe_values_and_relative_data_paths():
    recipe = load_recipe(DEMO_RECIPE)
    assert recipe.model.name == "builtin:smollm2-135m-instruct"
    assert recipe.resolve_path(recipe.data.train) == DEMO_RECIPE.parent / "data" / "json_cards" / "train.jsonl"
    assert recipe.lora.r == 16 and recipe.lora.alpha == 32


def test_defaults_fill_missing_sections(tmp_path):
    recipe = load_recipe(_write(tmp_path, GOOD))
    assert recipe.lora.target_modules == "all-linear"
    assert recipe.training.batch_size == 2 and recipe.training.grad_accum == 8
    assert recipe.output.checkpoints_dir == "checkpoints"


def test_unknown_key_names_line_and_close_match(tmp_path):
    path = _write(tmp_path, GOOD.replace("learning_rate = 2e-4", "learning_rat = 2e-4"))
    with pytest.raises(QloraError) as info:
        load_recipe(path)
    error = info.value
    assert "unknown key 'learning_rat' in [training]" in error.message
    assert error.where == f"{path}:9"
    assert "did you mean 'learning_rate'?" in error.hint


def test_unknown_section(tmp_path):
    with pytest.raises(QloraError) as info:
        load_recipe(_write(tmp_path, GOOD + "\n[trainig]\nepochs = 2\n"))
    assert "unknown section [trainig]" in info.value.message
    assert "did you mean 'training'?" in info.value.hint


def test_bad_type_names_key_and_value(tmp_path):
    path = _write(tmp_path, GOOD.replace("max_seq_len = 256", 'max_seq_len = "long"'))
    with pytest.raises(QloraError) as info:
        load_recipe(path)
    assert 'model.max_seq_len = "long"' in info.value.message
    assert info.value.where == f"{path}:3"


def test_bad_choice_lists_allowed_values(tmp_path):
    path = _write(tmp_path, GOOD.replace("max_seq_len = 256", 'max_seq_len = 256\nbackend = "vllm"'))
    with pytest.raises(QloraError) as info:
        load_recipe(path)
    assert "'auto', 'hf' or 'unsloth'" in info.value.message


def test_out_of_range_value(tmp_path):
    with pytest.raises(QloraError) as info:
        load_recipe(_write(tmp_path, GOOD.replace("learning_rate = 2e-4", "learning_rate = -1")))
    assert "training.learning_rate = -1" in info.value.message


@pytest.mark.parametrize(("override", "words"), [
    ("training.max_steps=0", "trains nothing"),  # HF read 0 as unset and trained one step, "step 1/0"
    ("training.batch_size=1000000000000", "less than or equal to 4096"),
    ("training.grad_accum=1000000000000", "less than or equal to 65536"),
    ("training.epochs=inf", "finite"),
])
def test_absurd_training_sizes_are_refused_by_key(tmp_path, override, words):
    with pytest.raises(QloraError) as info:
        load_recipe(_write(tmp_path, GOOD), [override])
    assert info.value.where == f"--set {override.split('=')[0]}" and words in info.value.message, info.value.message


@pytest.mark.parametrize(("override", "shown"), [
    ("training.seed=true", "training.seed = true: Input should be a valid integer"),  # was taken as seed 1
    ('model.load_in_4bit="yes"', 'model.load_in_4bit = "yes": Input should be a valid boolean'),
    ("lora.r=8.5", "lora.r = 8.5: Input should be a valid integer"),
    ('training.max_steps="10"', 'training.max_steps = "10": Input should be a valid integer'),
])
def test_values_of_another_type_are_refused_not_converted(tmp_path, override, shown):
    with pytest.raises(QloraError) as info:
        load_recipe(_write(tmp_path, GOOD), [override])
    assert info.value.message == shown


def test_missing_required_key(tmp_path):
    with pytest.raises(QloraError) as info:
        load_recipe(_write(tmp_path, GOOD.replace('train = "train.jsonl"', 'validation = "train.jsonl"')))
    assert info.value.message == '[data] needs train = "file.jsonl" or at least one [[data.sources]]'


def test_invalid_toml_reports_line(tmp_path):
    with pytest.raises(QloraError) as info:
        load_recipe(_write(tmp_path, GOOD.replace("max_seq_len = 256", "max_seq_len = ")))
    assert "not valid TOML" in info.value.message and "line 3" in info.value.message


def test_missing_data_file(tmp_path):
    path = _write(tmp_path, GOOD.replace("train.jsonl", "nope.jsonl"))
    with pytest.raises(QloraError) as info:
        load_recipe(path)
    assert "data.train file not found" in info.value.message
    assert info.value.where == f"{path}:6"


def test_unknown_builtin_model(tmp_path):
    with pytest.raises(QloraError) as info:
        load_recipe(_write(tmp_path, GOOD.replace("smollm2-135m-instruct", "gpt5")))
    assert "unknown built-in model" in info.value.message
    assert "builtin:smollm2-135m-instruct" in info.value.hint


def test_missing_recipe_file(tmp_path):
    with pytest.raises(QloraError, match="recipe file not found"):
        load_recipe(tmp_path / "absent.toml")


def test_overrides_apply_with_toml_types(tmp_path):
    recipe = load_recipe(
        _write(tmp_path, GOOD),
        ["training.learning_rate=1e-4", "training.max_steps=7", "lora.target_modules=[\"q_proj\",\"v_proj\"]", "training.scheduler=linear"],
    )
    assert recipe.training.learning_rate == 1e-4
    assert recipe.training.max_steps == 7
    assert recipe.lora.target_modules == ["q_proj", "v_proj"]
    assert recipe.training.scheduler == "linear"


def test_override_errors_point_at_the_flag(tmp_path):
    with pytest.raises(QloraError) as info:
        load_recipe(_write(tmp_path, GOOD), ["training.lr=1e-4"])
    assert info.value.where == "--set"
    assert info.value.message == "--set training.lr=1e-4: unknown key 'lr' in [training]"
    with pytest.raises(QloraError) as info:
        load_recipe(_write(tmp_path, GOOD), ["training.batch_size=0"])
    assert info.value.where == "--set training.batch_size"


@pytest.mark.parametrize("bad", ["training.lr", "lr=1", "a.b.c=1"])
def test_malformed_override(bad):
    with pytest.raises(QloraError):
        parse_override(bad)


def test_run_name_must_be_a_safe_folder_name(tmp_path):
    with pytest.raises(QloraError, match="run_name"):
        load_recipe(_write(tmp_path, GOOD), ["output.run_name=../escape"])


def test_snapshot_round_trips_with_absolute_paths(tmp_path):
    recipe = load_recipe(_write(tmp_path, GOOD))
    snapshot = tmp_path / "elsewhere" / "recipe.toml"
    snapshot.parent.mkdir()
    snapshot.write_text(recipe.to_toml(), encoding="utf-8")
    again = load_recipe(snapshot)
    assert again.model_dump() == {**recipe.model_dump(), "data": {**recipe.model_dump()["data"], "train": str(tmp_path / "train.jsonl")}}


def test_bad_train_on_and_format_list_the_choices(tmp_path):
    with pytest.raises(QloraError) as info:
        load_recipe(_write(tmp_path, GOOD.replace('train = "train.jsonl"', 'train = "train.jsonl"\ntrain_on = "everything"')))
    assert info.value.message == "data.train_on = \"everything\": Input should be 'assistant', 'last_assistant' or 'all'"
    assert info.value.where.endswith("r.toml:7")
    sources = GOOD.replace('[data]\ntrain = "train.jsonl"', '[data]\n\n[[data.sources]]\npath = "train.jsonl"\nformat = "csv"')
    with pytest.raises(QloraError) as info:
        load_recipe(_write(tmp_path, sources))
    assert info.value.message == ("[[data.sources]] #1 format = \"csv\": Input should be 'auto', 'messages', 'sharegpt', 'alpaca', "
                                  "'prompt_completion', 'columns', 'cmath', 'mawps', 'emoji', 'pairs', 'feedback' or 'prompts'")
    assert info.value.where.endswith("r.toml:9")


def test_train_on_and_formats_are_the_data_layers_own():
    from typing import get_args

    from qlora4080.data.vocabulary import FORMATS, TRAIN_ON_CHOICES
    from qlora4080.recipe import DataSection, SourceSection

    assert get_args(DataSection.model_fields["train_on"].annotation) == TRAIN_ON_CHOICES
    from qlora4080.recipe import declared_methods

    formats = {fmt for method in declared_methods().values() for fmt in method.formats}
    assert formats == {*FORMATS, "pairs", "feedback", "prompts"}  # every format is some method's, declared by the method
    with pytest.raises(ValidationError, match="Input should be 'auto', 'messages'"):
        SourceSection.model_validate({"path": "x.jsonl", "format": "csv"})


def test_overrides_as_a_mapping(tmp_path):
    recipe = load_recipe(_write(tmp_path, GOOD), {"training.max_steps": 7, "lora.target_modules": ["q_proj"]})
    assert recipe.training.max_steps == 7 and recipe.lora.target_modules == ["q_proj"]
    with pytest.raises(QloraError, match="must be section.key"):
        load_recipe(_write(tmp_path, GOOD), {"max_steps": 7})


def test_quoted_and_dotted_keys_are_found_on_their_line(tmp_path):
    text = '"model".name = "builtin:smollm2-135m-instruct"\n\n[data]\n"train" = "train.jsonl"\n\'valid_ratio\' = 0.9\n'
    with pytest.raises(QloraError) as info:
        load_recipe(_write(tmp_path, text))
    assert info.value.message.startswith("data.valid_ratio = 0.9") and info.value.where.endswith("r.toml:5")
    with pytest.raises(QloraError) as info:
        load_recipe(_write(tmp_path, text.replace('"model".name', 'model.nmae')))
    assert "unknown key 'nmae' in [model] (line 1)" in info.value.message


def test_snapshot_keeps_any_text_exactly(tmp_path):
    odd = 'pool \\"A\\"\\nsecond line \\\\ caf\u00e9'  # TOML escapes: quotes, a newline, a backslash
    text = GOOD.replace('[data]\ntrain = "train.jsonl"', f'[data]\n\n[[data.sources]]\npath = "train.jsonl"\nname = "{odd}"\n'
                                                         'columns = {user = "question", "odd key" = "x"}\ntags = ["json", "\u00e9"]')
    recipe = load_recipe(_write(tmp_path, text))
    assert recipe.data.sources[0].name == 'pool "A"\nsecond line \\ caf\u00e9'
    snapshot = tmp_path / "elsewhere" / "recipe.toml"
    snapshot.parent.mkdir()
    snapshot.write_text(recipe.to_toml(), encoding="utf-8")
    again = load_recipe(snapshot)
    assert again.data.sources[0] == recipe.data.sources[0].model_copy(update={"path": str(tmp_path / "train.jsonl")})
