"""A standard install works: the wheel built from this tree holds every bundled file, installs
into a fresh tool environment (what `uv tool install sdtui` and `pipx install sdtui` make), and
its `sdtui` command makes an image on the demo model.

The tool environment is a new venv whose only link to this one is a .pth line to this venv's
site-packages, so torch and the other dependencies are found installed (nothing is downloaded:
``--no-index``) while sdtui itself comes from the wheel, not from this checkout."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

import sdtui

ROOT = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.install]


def _copy_source(dest: Path) -> None:
    """What a source distribution would hold: a build in a copy never sees this checkout's
    stale build/ folder."""
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(
        ROOT / "sdtui", dest / "sdtui", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )


def _build_wheel(tmp_path: Path) -> Path:
    pytest.importorskip("setuptools", reason="the [test] extra installs the build backend")
    src = tmp_path / "src"
    src.mkdir()
    _copy_source(src)
    out = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-q",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    (wheel,) = out.glob("sdtui-*.whl")
    return wheel


def _bundled_files() -> set[str]:
    """Every file under sdtui/ that is not Python: configs, the CLIP vocabulary, the TUI's CSS."""
    return {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "sdtui").rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_wheel(tmp_path_factory.mktemp("wheel"))


def test_the_wheel_holds_the_package_data_the_license_and_one_version(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = _bundled_files() - names
    assert not missing, f"not in the wheel: {sorted(missing)}"
    assert "sdtui/engine/assets/bpe_simple_vocab_16e6.txt.gz" in names
    assert f"sdtui-{sdtui.__version__}.dist-info/licenses/LICENSE" in names
    assert wheel.name.startswith(f"sdtui-{sdtui.__version__}-py3-none-any")
    meta = zipfile.ZipFile(wheel).read(f"sdtui-{sdtui.__version__}.dist-info/METADATA").decode()
    assert f"\nVersion: {sdtui.__version__}\n" in meta
    assert "\nRequires-Python: >=3.11\n" in meta
    assert "\nLicense-Expression: MIT\n" in meta
    entry = (
        zipfile.ZipFile(wheel)
        .read(f"sdtui-{sdtui.__version__}.dist-info/entry_points.txt")
        .decode()
    )
    assert "sdtui = sdtui.cli:main" in entry


def test_a_tool_install_of_the_wheel_runs_sdtui(
    wheel: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    tool = tmp_path / "tool"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(tool)], check=True, timeout=120
    )
    bindir = tool / ("Scripts" if os.name == "nt" else "bin")
    python = bindir / ("python.exe" if os.name == "nt" else "python")
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    here = sysconfig.get_paths()["purelib"]  # this venv's: torch, diffusers, textual, ...
    Path(purelib, "sdtui-test-deps.pth").write_text(here + "\n", encoding="utf-8")

    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "Downloading" not in installed.stdout

    run_env = {k: v for k, v in env.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    sdtui_cmd = bindir / ("sdtui.exe" if os.name == "nt" else "sdtui")
    version = subprocess.run(
        [str(sdtui_cmd), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env=run_env,
        cwd=tmp_path,
    )
    assert version.stdout.strip() == f"sdtui {sdtui.__version__}", version.stdout + version.stderr

    where = subprocess.run(
        [str(python), "-c", "import sdtui; print(sdtui.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        env=run_env,
        cwd=tmp_path,
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(tool), f"sdtui came from {where}, not from the wheel"

    made = subprocess.run(
        [
            str(sdtui_cmd),
            "generate",
            "--demo",
            "a cat",
            "--no-daemon",
            "--steps",
            "2",
            "--size",
            "64x64",
            "--seed",
            "7",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=run_env,
        cwd=tmp_path,
    )
    assert made.returncode == 0, made.stdout + made.stderr
    (png,) = re.findall(r"^(/.*\.png)$", made.stdout, re.M)
    assert Path(png).is_file() and Path(png).is_relative_to(Path(env["SDTUI_HOME"]))
    assert Path(png).name.endswith("-7.png")
