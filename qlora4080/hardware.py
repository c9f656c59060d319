"""The only place that asks torch (and the OS) about devices and memory."""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Hardware:
    device: str
    """"cuda" or "cpu"."""
    gpu_name: str | None = None
    gpu_total_bytes: int | None = None
    bf16_supported: bool = False
    cpu_count: int = 1
    ram_total_bytes: int | None = None

    @property
    def is_cuda(self) -> bool:
        return self.device == "cuda"

    def describe(self) -> str:
        if self.is_cuda:
            total = f"{self.gpu_total_bytes / 2**30:.1f} GiB" if self.gpu_total_bytes else "?"
            return f"CUDA: {self.gpu_name} ({total}), bf16 {'yes' if self.bf16_supported else 'no'}"
        ram = f", {self.ram_total_bytes / 2**30:.0f} GiB RAM" if self.ram_total_bytes else ""
        return f"CPU only: {self.cpu_count} cores{ram}"


def detect() -> Hardware:
    import torch

    cpus = os.cpu_count() or 1
    ram = _ram_total()
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return Hardware(
            device="cuda",
            gpu_name=props.name,
            gpu_total_bytes=props.total_memory,
            bf16_supported=torch.cuda.is_bf16_supported(),
            cpu_count=cpus,
            ram_total_bytes=ram,
        )
    return Hardware(device="cpu", cpu_count=cpus, ram_total_bytes=ram)


def has_module(name: str) -> bool:
    """Installed, without importing it (importing unsloth patches transformers)."""
    return importlib.util.find_spec(name) is not None


def _ram_total() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def process_rss_bytes() -> int | None:
    """Resident memory of this process (Linux /proc; None elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_bytes() -> int | None:
    """Highest resident memory of this process so far (Linux reports KiB)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    except (ImportError, OSError):
        return None


def memory_snapshot(hardware: Hardware) -> dict[str, int]:
    """Bytes: on CUDA allocated / reserved / peak (allocated) / peak reserved / used on the card / card total; on CPU rss / peak rss."""
    if hardware.is_cuda:
        import torch

        free, total = torch.cuda.mem_get_info()  # the driver's view, includes other processes and the context
        return {
            "allocated": torch.cuda.memory_allocated(),
            "reserved": torch.cuda.memory_reserved(),
            "peak": torch.cuda.max_memory_allocated(),
            "peak_reserved": torch.cuda.max_memory_reserved(),
            "card_used": total - free,
            "card_total": total,
        }
    snapshot = {}
    rss, peak = process_rss_bytes(), peak_rss_bytes()
    if rss:
        snapshot["rss"] = rss
    if peak:
        snapshot["peak"] = peak
    return snapshot


def describe_memory(snapshot: dict[str, int]) -> str:
    gib = lambda key: f"{snapshot[key] / 2**30:.2f}"
    if "card_total" in snapshot:
        return (f"GPU {gib('allocated')} alloc / {gib('reserved')} reserved / {gib('peak')} peak, "
                f"card {gib('card_used')} of {gib('card_total')} GiB")
    if "rss" in snapshot:
        return f"RAM {gib('rss')} GiB (peak {gib('peak')} GiB)" if "peak" in snapshot else f"RAM {gib('rss')} GiB"
    return "memory: n/a"
