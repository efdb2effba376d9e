"""scripts/torch-index, which scripts/setup asks for the PyTorch build: the newest CUDA build
the NVIDIA driver runs, PyPI's torch without a driver, and the user's choice over both. The
driver is a stand-in `nvidia-smi` on PATH; NVML is kept out by pointing PYTHON nowhere."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "torch-index"
INDEX = "https://download.pytorch.org/whl"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def torch_index(tmp_path: Path, smi_header: str | None, **env: str) -> tuple[str, str]:
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    smi = bindir / "nvidia-smi"  # None: one that fails, as a missing one does (a GPU host has one)
    body = "exit 127" if smi_header is None else f"echo '{smi_header}'"
    smi.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    smi.chmod(0o755)
    full = {k: v for k, v in os.environ.items() if not k.startswith("SDTUI_TORCH")}
    full.update(
        PATH=f"{bindir}{os.pathsep}{full.get('PATH', '')}", PYTHON=str(tmp_path / "no-python")
    )
    full.update(env)
    out = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, env=full, timeout=30, check=True
    )
    return out.stdout.strip(), out.stderr.strip()


def header(cuda: str) -> str:
    return f"| NVIDIA-SMI 580.65.06    Driver Version: 580.65.06      CUDA Version: {cuda}     |"


@pytest.mark.parametrize(
    ("cuda", "build"),
    [
        ("13.1", "cu130"),
        ("13.0", "cu130"),
        ("12.9", "cu128"),
        ("12.8", "cu128"),
        ("12.6", "cu126"),
        ("12.4", "cu126"),
        ("11.8", "cpu"),
        ("10.2", "cpu"),
    ],
)
def test_the_newest_build_the_driver_runs(tmp_path: Path, cuda: str, build: str) -> None:
    args, why = torch_index(tmp_path, header(cuda))
    assert args == f"--index-url {INDEX}/{build}"
    assert f"CUDA {cuda}" in why
    if build == "cpu":
        assert "update the driver" in why


@pytest.mark.parametrize(
    "smi", [None, "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."]
)
def test_without_a_working_driver_pypi_as_before(tmp_path: Path, smi: str | None) -> None:
    args, why = torch_index(tmp_path, smi)
    assert args == ""
    assert "no NVIDIA driver" in why


def test_the_users_choice_wins(tmp_path: Path) -> None:
    assert torch_index(tmp_path, header("12.8"), SDTUI_TORCH_INDEX="pypi")[0] == ""
    mine = "https://download.pytorch.org/whl/cu126"
    assert torch_index(tmp_path, header("13.0"), SDTUI_TORCH_INDEX=mine)[0] == f"--index-url {mine}"
