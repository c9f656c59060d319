"""One `qlora4080` command in a process whose CUDA allocator holds no more than a smaller card would, and its peaks.

    python bench/gpu_check/capped_cli.py --cap-gib 16 --report peaks.json -- train recipes/qwen3_4b_emoji.toml ...

The recipe cases of bench/gpu_check.py run the CLI through this, so "fits a
16 GB card" is measured on a larger one: the allocator is limited before
anything loads (measure.apply_vram_cap), and when the command ends, however it
ends, the process's peak allocated and reserved memory and the allocator
settings go to --report as JSON. On a CPU the cap does nothing and the peaks
are null; the command runs the same.
"""

from __future__ import annotations

import argparse
import atexit
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/, for the gpu_check package

from gpu_check import measure  # after the path above


def write_peaks(report: Path, cap: dict[str, Any], started: float) -> None:
    import torch

    cuda = torch.cuda.is_available()
    try:
        peaks: dict[str, Any] = measure.peak_memory(cuda)
    except Exception as exc:  # noqa: BLE001  (a CUDA error that ended the command must not lose the rest)
        peaks = {"peak_memory_error": f"{type(exc).__name__}: {exc}"[:500]}
    found = {**cap, **peaks, "alloc_conf_at_exit": measure.alloc_conf(), "process_seconds": round(time.monotonic() - started, 1)}
    report.write_text(json.dumps(found), encoding="utf-8")


def main(argv: list[str]) -> None:
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cap-gib", type=float, default=0.0, help="the card to fit (0: no cap)")
    parser.add_argument("--report", type=Path, required=True, help="JSON file for the peaks, written at exit")
    args = parser.parse_args(argv[:split])
    started = time.monotonic()
    cap = {**measure.apply_vram_cap(args.cap_gib), "alloc_conf_at_start": measure.alloc_conf()}
    atexit.register(write_peaks, args.report, cap, started)
    from qlora4080.cli import app

    app(args=argv[split + 1:], prog_name="qlora4080")


if __name__ == "__main__":
    main(sys.argv[1:])
