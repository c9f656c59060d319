"""TOML helpers: the line a key is on, however TOML lets it be written; recipes written back exactly."""

from __future__ import annotations

import pytest

from qlora4080.toml_io import dumps_toml, find_line, loads_toml

RECIPE = '''\
# a comment line
output.run_name = "dotted-at-top"

[model]
"name" = "builtin:smollm2-135m-instruct"
'max_seq_len' = 256
chat_template = """
name = "not a key: inside a multi-line string"
"""
lora.r = 4

[ data ]  # spaces inside the brackets
train = "t.jsonl"
target = [
  "a",
  "b",
]

[[data.sources]]
path = "a.jsonl"

[[ data . sources ]]  # the second pool
"pth" = "b.jsonl"

["training"]
epochs = 2
'''


@pytest.mark.parametrize(("section", "key", "index", "line"), [
    ("output", "run_name", None, 2),  # a dotted key outside any table
    ("output", "", None, 2),  # ...is also where its table starts
    ("model", "name", None, 5),  # a quoted key
    ("model", "max_seq_len", None, 6),  # a literal-quoted key
    ("model", "chat_template", None, 7),  # the value runs over three lines; `name = ` inside it is text
    ("model", "lora", None, 10),  # a dotted key inside a table
    ("data", "train", None, 13),
    ("data", "target", None, 14),  # a multi-line array: the line of its key
    ("data", "", None, 12),  # the header, written with spaces
    ("data.sources", "path", 0, 20),
    ("data.sources", "pth", 1, 23),
    ("data.sources", "", 1, 22),
    ("data.sources", "missing", 1, 22),  # a key that is not there: its table's line
    ("training", "epochs", None, 26),  # a quoted table name
])
def test_find_line_follows_toml_not_regexes(section, key, index, line):
    assert find_line(RECIPE, section, key, index=index) == line


def test_find_line_of_what_is_not_there():
    assert find_line(RECIPE, "lora") is None  # `lora.r` lives inside [model], not at the top
    assert find_line(RECIPE, "data.sources", "path", index=5) is None
    assert find_line(RECIPE, "model", "nmae") == 4  # the table's header, the best place to add the key


def test_a_windows_recipe_keeps_its_line_numbers():
    assert find_line(RECIPE.replace("\n", "\r\n"), "data.sources", "pth", index=1) == 23


def test_dumps_writes_tables_arrays_of_tables_and_inline_tables():
    data = {
        "model": {"name": "builtin:smollm2-135m-instruct", "max_seq_len": 256, "load_in_4bit": False},
        "lora": {"target_modules": ["q_proj", "v_proj"], "dropout": 0.05},
        "data": {"train_on": "assistant", "sources": [
            {"path": "a.jsonl", "columns": {"user": "question", "odd key": "x"}, "weight": 2.0, "tags": []},
            {"hub": "org/set", "columns": {}},
        ]},
        "training": {"learning_rate": 2e-4, "max_steps": -1},
    }
    text = dumps_toml(data)
    assert loads_toml(text) == data
    assert "[[data.sources]]" in text and 'columns = {user = "question", "odd key" = "x"}' in text
    assert "[data.sources.columns]" not in text  # a mapping inside a table stays inline, as people write it


@pytest.mark.parametrize("value", ['say "hi"', "back\\slash", "two\nlines", "tab\there", "caf\u00e9 \U0001f600", "\x00\x1f", "'"])
def test_dumps_escapes_every_string(value):
    text = dumps_toml({"model": {"chat_template": value}})
    assert loads_toml(text) == {"model": {"chat_template": value}}
