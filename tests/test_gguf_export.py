"""`export --gguf`: llama.cpp's converter writes the GGUF, llama.cpp itself proves it, nothing needs CUDA.

The tiny trained adapter (conftest) is exported through the CLI; the checks llama.cpp runs are then made to
fail on purpose (a training template the GGUF does not carry), which must stop the export and leave the
earlier export in place. The real demo model is exported in test_cli.py's end-to-end test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_generate_export import run

from qlora4080.export import read_meta
from qlora4080.gguf_check import GgufMismatch, verify_gguf
from qlora4080.gguf_export import GGUF_RECORD, export_gguf
from qlora4080.quantized_agreement import validation_prompts


@pytest.fixture(scope="module")
def q8_export(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("gguf") / "tiny-gguf"
    done = run("export", str(tiny_checkpoint), "--gguf", "q8_0", "--gguf-dir", str(folder))
    assert done.returncode == 0, done.stderr + done.stdout
    assert "verified with llama.cpp on 8 test prompts" in done.stdout
    assert "the merged model's greedy answers get the same log-probabilities within" in done.stdout
    return folder


def test_q8_0_export_is_checked_by_llama_cpp_and_recorded(q8_export, tiny_checkpoint):
    files = sorted(p.name for p in q8_export.iterdir())
    assert files == ["Modelfile", GGUF_RECORD, f"{tiny_checkpoint.name}-q8_0.gguf"]  # no merged folder, no scratch
    assert not list(q8_export.parent.glob(".*partial*"))
    record = json.loads((q8_export / GGUF_RECORD).read_text())
    check = record["verification"]
    assert check["template_renders_identically"] and check["tokenizes_identically"]
    assert check["greedy_tokens_compared"] == 16 and check["logprob_difference_nats"]["tokens"] > 8
    assert check["logprob_difference_nats"]["mean"] <= check["tolerance_nats"]["mean"] == 0.1
    assert "<|im_end|>" in check["end_of_turn"] and check["add_bos"] is False
    assert record["quant"] == "q8_0" and record["converter"] == "0.1.1"
    with (q8_export / f"{tiny_checkpoint.name}-q8_0.gguf").open("rb") as gguf:
        assert gguf.read(4) == b"GGUF"
    modelfile = (q8_export / "Modelfile").read_text()
    assert modelfile.startswith(f"FROM ./{tiny_checkpoint.name}-q8_0.gguf\n") and 'PARAMETER stop "<|im_end|>"' in modelfile


def test_a_render_llama_cpp_does_not_reproduce_stops_the_export_and_keeps_the_old_one(q8_export, tiny_checkpoint, tmp_path):
    merged = tmp_path / "merged"
    assert run("export", str(tiny_checkpoint), "--merged", str(merged)).returncode == 0
    gguf = next(q8_export.glob("*.gguf"))
    prompts = validation_prompts(read_meta(tiny_checkpoint))[:2]
    template = merged / "chat_template.jinja"
    original = template.read_text()
    template.write_text(original + "{% if add_generation_prompt %}Sure:{% endif %}")  # training renders more
    with pytest.raises(GgufMismatch, match=r"prompt 1: the GGUF's chat template renders differently from character \d+"):
        verify_gguf(gguf, merged, prompts, "q8_0")

    # transformers gives a template every special token (unk_token...), llama.cpp only bos_token and eos_token:
    # a template that uses another one converts fine and renders differently in llama.cpp.
    template.write_text(original + "{% if add_generation_prompt %}{{ unk_token }}{% endif %}")
    target = tmp_path / "earlier"
    shutil.copytree(q8_export, target)
    before = sorted(p.name for p in target.iterdir())
    with pytest.raises(GgufMismatch, match="'<|endoftext|>', GGUF ''"):
        export_gguf(tiny_checkpoint, target, "q8_0", overwrite=True, merged_dir=merged)
    assert sorted(p.name for p in target.iterdir()) == before  # the earlier export is untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # and no scratch folder is left


def test_no_verify_is_recorded_and_k_quants_report_their_agreement(tiny_checkpoint, tmp_path):
    skipped = run("export", str(tiny_checkpoint), "--gguf", "f16", "--gguf-dir", str(tmp_path / "f16"), "--no-verify")
    assert skipped.returncode == 0, skipped.stderr
    assert "not checked with llama.cpp: skipped (--no-verify)" in skipped.stdout
    assert json.loads((tmp_path / "f16" / GGUF_RECORD).read_text())["verification"] == "skipped (--no-verify)"

    k_quant = run("export", str(tiny_checkpoint), "--gguf", "q4_k_m", "--gguf-dir", str(tmp_path / "q4"))
    assert k_quant.returncode == 0, k_quant.stderr + k_quant.stdout
    record = json.loads((tmp_path / "q4" / GGUF_RECORD).read_text())
    check = record["verification"]
    assert record["quant"] == "q4_k_m" and check["logprob_difference_nats"]["worst"] <= check["tolerance_nats"]["worst"] == 3.0
    assert f"tokens on {check['greedy_agreement']} prompts" in k_quant.stdout
    assert sorted(p.name for p in (tmp_path / "q4").iterdir()) == ["Modelfile", GGUF_RECORD, f"{tiny_checkpoint.name}-q4_k_m.gguf"]


def test_a_gguf_that_computes_another_model_is_refused(q8_export, tiny_checkpoint, tmp_path):
    """Same template, same tokens, other weights: the log-probabilities of the merged model's answers give it away."""
    from safetensors.torch import load_file, save_file

    merged = tmp_path / "merged"
    assert run("export", str(tiny_checkpoint), "--merged", str(merged)).returncode == 0
    gguf = next(q8_export.glob("*.gguf"))
    prompts = validation_prompts(read_meta(tiny_checkpoint))
    assert verify_gguf(gguf, merged, prompts, "q8_0")["logprob_difference_nats"]["mean"] <= 0.1
    weights = load_file(merged / "model.safetensors")
    norm = next(name for name in weights if name.endswith("model.norm.weight"))
    weights[norm] = weights[norm] * 3  # sharper logits: every answer token's probability moves
    save_file(weights, merged / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(GgufMismatch, match=r"nats"):
        verify_gguf(gguf, merged, prompts, "q8_0")
