"""vram.py's byte terms against the bytes real models hold, as a table for docs/benchmarks.md.

    .venv/bin/python bench/memory_terms.py [--out bench/results/memory_terms.json]

The same measurement as tests/test_vram_measured.py (which fails past 5%), with the numbers kept: the built-in
SmolLM2-135M (real weights, 30 layers) with torch AdamW and 8-bit AdamW, and one-decoder-layer random-weight
models of each bundled family from its real configuration, with 8-bit AdamW. CPU, bitsandbytes' CPU backend.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def main() -> None:
    from test_vram_measured import FAMILIES, errors, estimated, one_layer_model
    from transformers import AutoTokenizer

    from qlora4080 import architectures as A
    from qlora4080.builtin_models import resolve_builtin
    from qlora4080.memory_terms import measure_training_bytes

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "memory_terms.json")
    args = parser.parse_args()
    builtin = resolve_builtin("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(builtin)
    rows = []
    for optimizer in ("adamw_torch", "adamw_8bit"):
        rows.append(("smollm2-135m (30 layers, real weights)", optimizer, estimated(A.SMOLLM2_135M, optimizer),
                     measure_training_bytes(str(builtin), optimizer)))
    for family, (arch, config_class, extra) in FAMILIES.items():
        one_layer = dataclasses.replace(arch, layers=1)
        with tempfile.TemporaryDirectory() as folder:
            model_dir = one_layer_model(Path(folder), one_layer, config_class, extra, tokenizer)
            rows.append((f"{family} (1 layer, random)", "adamw_8bit", estimated(one_layer, "adamw_8bit"),
                         measure_training_bytes(model_dir, "adamw_8bit")))
    report = [{"model": model, "optimizer": optimizer, "estimated": estimate, "measured": measured,
               "error": errors(estimate, measured)} for model, optimizer, estimate, measured in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
    for row in report:
        print(row["model"], row["optimizer"])
        for term, error in row["error"].items():
            print(f"   {term:55s} measured {row['measured'][term] / 2**20:10.2f} MiB  estimate {error:+.2%}")


if __name__ == "__main__":
    main()
