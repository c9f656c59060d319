"""The Colab notebook is executed on the CPU against the demo recipe, so it cannot rot."""

from __future__ import annotations

import json

import nbformat
import pytest
from conftest import DEMO_RECIPE, REPO
from nbclient import NotebookClient

NOTEBOOK = REPO / "notebooks" / "qlora4080_colab.ipynb"


def test_notebook_is_what_the_builder_writes():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_notebook", REPO / "notebooks" / "build_notebook.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert json.loads(NOTEBOOK.read_text()) == module.build(), "run: python notebooks/build_notebook.py"


@pytest.mark.slow
def test_notebook_runs_end_to_end_on_the_demo_recipe(tmp_path):
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = [cell for cell in notebook.cells if "parameters" in cell.metadata.get("tags", [])]
    assert len(parameters) == 1
    parameters[0].source = f'RECIPE = {str(DEMO_RECIPE)!r}\nMAX_STEPS = 2\nRUN_NAME = "nb-test"\nREPO_DIR = {str(REPO)!r}'
    NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()

    assert (tmp_path / "checkpoints" / "nb-test" / "adapter_model.safetensors").is_file()
    assert (tmp_path / "runs" / "nb-test" / "eval.json").is_file()
    assert (tmp_path / "exports" / "nb-test" / "model.safetensors").is_file()
    printed = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.get("outputs", []))
    assert "adapter:" in printed and "same greedy answer as base + adapter: True" in printed
