"""Helpers of bench/gpu_check.py, one part of the check per module.

None of them imports torch, transformers or unsloth at import time: a case
that runs on unsloth must import unsloth before any of those (see
backend_case.py), so every heavy import waits inside a function.
"""
