"""The machine: Python, torch and the card it sees, the NVIDIA driver, disk for the model cache, the hub."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ..hardware import Hardware, has_module
from .packages import FIX, FIX_GPU
from .report import Row, exception_line

GiB = 2**30
MIN_FREE_GIB = 20
SMI_SECONDS = 5.0
MIN_CAPABILITY = (7, 0)  # unsloth's (and Triton's) floor: Volta


def python_rows() -> list[Row]:
    good = sys.version_info >= (3, 10)
    return [
        Row("system", "python", "ok" if good else "fail", f"{platform.python_version()} ({sys.executable})",
            None if good else "qlora4080 needs Python 3.10 or newer"),
        Row("system", "platform", "info", platform.platform()),
    ]


@dataclass(frozen=True)
class Driver:
    """What nvidia-smi says about the first GPU; found is False when there is no nvidia-smi or it fails."""

    found: bool
    version: str = ""
    gpu: str = ""
    problem: str = ""


def nvidia_driver(timeout: float = SMI_SECONDS) -> Driver:
    """Asked of nvidia-smi, never of CUDA: it answers even when torch is a CPU build."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return Driver(False, problem="nvidia-smi not found")
    try:
        done = subprocess.run([exe, "--query-gpu=driver_version,name", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return Driver(False, problem=f"nvidia-smi failed: {exception_line(exc)}")
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        reason = (done.stderr or done.stdout).strip().splitlines()
        return Driver(False, problem=f"nvidia-smi failed: {reason[0] if reason else f'exit {done.returncode}'}")
    version, _, gpu = lines[0].partition(",")
    return Driver(True, version.strip(), gpu.strip())


def torch_rows() -> tuple[list[Row], Hardware]:
    """torch's version and CUDA build, the card it sees, and the Hardware the rest of the doctor judges by."""
    cpu_only = Hardware(device="cpu", cpu_count=os.cpu_count() or 1)
    if not has_module("torch"):
        return [Row("system", "torch", "fail", "not installed", FIX)], cpu_only
    try:
        import torch
    except Exception as exc:  # noqa: BLE001  a broken CUDA install fails here in many ways
        return [Row("system", "torch", "fail", f"does not import: {exception_line(exc)}", FIX)], cpu_only
    from ..hardware import detect

    build = f"CUDA {torch.version.cuda}" if torch.version.cuda else (
        f"ROCm {torch.version.hip}" if getattr(torch.version, "hip", None) else "CPU build")
    rows = [Row("system", "torch", "ok", f"{torch.__version__}, {build}")]
    try:
        hardware = detect()
    except Exception as exc:  # noqa: BLE001  CUDA present but unusable (driver mismatch, busy card)
        rows.append(Row("system", "GPU", "warn", f"CUDA error: {exception_line(exc)}", "check the driver with nvidia-smi"))
        hardware = cpu_only
    ram = f", {hardware.ram_total_bytes / GiB:.0f} GiB RAM" if hardware.ram_total_bytes else ""
    rows.append(Row("system", "CPU", "info", f"{hardware.cpu_count} cores{ram}"))
    driver = nvidia_driver()
    if hardware.is_cuda:
        rows += _cuda_rows(torch, hardware, driver)
    else:
        rows += _no_cuda_rows(build, driver)
    return rows, hardware


def _cuda_rows(torch: ModuleType, hardware: Hardware, driver: Driver) -> list[Row]:
    rows = [Row("system", "GPU", "ok", hardware.gpu_name or "?"),
            Row("system", "GPU memory", "ok", f"{(hardware.gpu_total_bytes or 0) / GiB:.1f} GiB")]
    try:
        capability = tuple(torch.cuda.get_device_capability(0))
    except Exception as exc:  # noqa: BLE001  a fact to show, never a reason to stop
        rows.append(Row("system", "compute capability", "info", f"unknown ({exception_line(exc)})"))
    else:
        good = capability >= MIN_CAPABILITY
        rows.append(Row("system", "compute capability", "ok" if good else "warn", ".".join(map(str, capability)),
                        None if good else "unsloth needs compute capability 7.0 or newer: use backend = \"hf\""))
    rows.append(Row("system", "bf16", "ok", "yes") if hardware.bf16_supported
                else Row("system", "bf16", "info", "no: training computes in fp16"))
    if driver.found:
        rows.append(Row("system", "driver", "ok", driver.version))
    else:
        rows.append(Row("system", "driver", "info", f"unknown ({driver.problem})"))
    return rows


def _no_cuda_rows(build: str, driver: Driver) -> list[Row]:
    if not driver.found:
        return [Row("system", "GPU", "info", f"no CUDA (torch {build})"),
                Row("system", "driver", "info", f"no CUDA ({driver.problem})")]
    # A card with a driver that torch cannot use: the commonest wrong set-up, and an easy one to fix.
    fix = (f"{FIX_GPU} on this machine (it keeps a CUDA torch), or install a CUDA build of torch"
           if build == "CPU build" else "torch sees no GPU: check CUDA_VISIBLE_DEVICES and that the driver fits this torch")
    return [Row("system", "GPU", "warn", f"no CUDA in torch ({build}), but nvidia-smi sees {driver.gpu}", fix),
            Row("system", "driver", "info", driver.version)]


def cache_rows() -> list[Row]:
    """Where models are downloaded, and the free disk there (a 7-9B model takes 5-18 GiB)."""
    try:
        from huggingface_hub import constants
    except Exception as exc:  # noqa: BLE001  a broken install is the finding
        return [Row("system", "HF cache", "warn", f"huggingface_hub does not import: {exception_line(exc)}", FIX)]
    cache = Path(constants.HF_HUB_CACHE)
    rows = [Row("system", "HF cache", "ok", str(cache)) if cache.is_dir()
            else Row("system", "HF cache", "info", f"{cache} (created on the first download)")]
    existing = cache
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        free = shutil.disk_usage(existing).free / GiB
    except OSError as exc:
        rows.append(Row("system", "free disk", "info", f"unknown ({exception_line(exc)})"))
        return rows
    if free < MIN_FREE_GIB:
        rows.append(Row("system", "free disk", "warn", f"{free:.1f} GiB on {existing}",
                        f"models and checkpoints need room: free {MIN_FREE_GIB} GiB or point HF_HOME at a bigger disk"))
    else:
        rows.append(Row("system", "free disk", "ok", f"{free:.0f} GiB on {existing}"))
    return rows


def hub_row() -> Row:
    """One connect with hub.py's short timeout: an offline machine answers in seconds."""
    from ..hub import PROBE_SECONDS, hub_host, hub_reachable

    if os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "TRUE", "YES", "ON"):  # as hub_reachable reads it
        return Row("system", "hub", "info", "HF_HUB_OFFLINE is set: only the local cache is used")
    host = hub_host()
    if hub_reachable():
        return Row("system", "hub", "ok", f"{host} reachable")
    return Row("system", "hub", "info", f"{host} does not answer within {PROBE_SECONDS:g} s",
               "local models and data still work; hub models and datasets must be in the cache")
