"""Print a pip constraint that holds torch at the release this Python already has.

    python requirements/torch_pin.py > torch-pin.txt
    pip install -c requirements/lock.txt -c torch-pin.txt -e ".[gpu]"

Without it, a package that asks for a newer torch (xformers, torchvision) would
make pip replace a working CUDA build with whatever the index serves. Prints
nothing when torch is not installed, so the constraint file is then empty.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    print(f"torch=={version('torch')}")
except PackageNotFoundError:
    pass
