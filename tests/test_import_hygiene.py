"""The walls between the processes, proved (the Harlequin habit): the UI process and the
daemon never import torch and friends, and the engine and the daemon never import textual.
Each run-time check runs in a fresh interpreter, so nothing imported by another test can hide
a leak; the static contract (import-linter, pyproject.toml) also sees imports inside
functions."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "transformers", "safetensors.torch", "spandrel")
UI = ("textual", "textual_image", "rich.live")

UI_MODULES = (
    "sdtui.tui.app",
    "sdtui.tui.launch",
    "sdtui.tui.commands",
    "sdtui.tui.form_state",
    "sdtui.tui.messages",
    "sdtui.tui.catalog",
    "sdtui.tui.screens.networks",
    "sdtui.tui.screens.error_detail",
    "sdtui.cli",
)
DAEMON_MODULES = (  # the daemon process and every client's view of it: neither torch nor textual
    "sdtui.ipc.daemon",
    "sdtui.ipc.client",
    "sdtui.ipc.protocol",
    "sdtui.ipc.paths",
    "sdtui.ipc.worker_entry",
    "sdtui.jobstore",
)
ENGINE_MODULES = (
    "sdtui.engine.worker",
    "sdtui.engine.generate",
    "sdtui.engine.upscale",
    "sdtui.engine.models",
)
# torch-free although the engine uses them: the step arithmetic and upscaler names (the UI and
# the CLI count and list with them), and what the worker imports before torch loads
TORCH_FREE_MODULES = ("sdtui.steps", "sdtui.upscalers", "sdtui.engine.job", "sdtui.engine.worker")


def _imports(module: str, forbidden: tuple[str, ...]) -> list[str]:
    code = (
        "import importlib, sys\n"
        f"importlib.import_module({module!r})\n"
        f"print(' '.join(m for m in {forbidden!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    return out.stdout.split()


@pytest.mark.parametrize("module", UI_MODULES)
def test_ui_never_imports_torch(module: str) -> None:
    assert _imports(module, HEAVY) == []


def test_app_start_path_never_imports_torch() -> None:
    """Build the whole app (every widget, the form, the palette) as run_tui does."""
    code = (
        "import sys\n"
        "from sdtui.config import Settings\n"
        "from sdtui.tui.app import SdtuiApp\n"
        "from sdtui.tui.catalog import discover_catalog\n"
        "from sdtui.tui.launch import model_names, upscaler_names\n"
        "s = Settings()\n"
        "SdtuiApp(None, s, model_names=model_names(s), upscaler_names=upscaler_names(s))\n"
        "discover_catalog(s)  # what the app lists after its first frame\n"
        "import sdtui.tokens, sdtui.infotext, sdtui.gpu\n"
        "sdtui.tokens.count_tokens('a (cat:1.2)')\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.split() == []


@pytest.mark.parametrize("module", ENGINE_MODULES)
def test_engine_never_imports_textual(module: str) -> None:
    assert _imports(module, UI) == []


@pytest.mark.parametrize("module", DAEMON_MODULES)
def test_the_daemon_imports_neither_torch_nor_textual(module: str) -> None:
    assert _imports(module, HEAVY + UI) == []


@pytest.mark.parametrize("module", TORCH_FREE_MODULES)
def test_torch_free_modules_import_no_torch(module: str) -> None:
    assert _imports(module, HEAVY + UI) == []


def _import_cycles(modules: set[str], imports: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan): each is a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in imports[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for m in sorted(modules):
        if m not in index:
            visit(m)
    return cycles


def test_no_import_cycle_in_the_engine_or_the_torch_free_core() -> None:
    """Issue 14, "Cycles": no module of the engine or of the core reaches itself through its
    imports, in-function imports included (grimp reads them all, as import-linter does).
    The TUI and the CLI are left out for now (their own cycles are theirs to break)."""
    import grimp

    graph = grimp.build_graph("sdtui", cache_dir=None)
    modules = {m for m in graph.modules if not m.startswith(("sdtui.tui", "sdtui.cli"))}
    imports = {m: graph.find_modules_directly_imported_by(m) & modules for m in modules}
    cycles = _import_cycles(modules, imports)
    detail = [
        f"{a} -> {b} (line {', '.join(str(d['line_number']) for d in graph.get_import_details(importer=a, imported=b))})"
        for cycle in cycles
        for a in cycle
        for b in sorted(imports[a] & set(cycle))
    ]
    assert cycles == [], "import cycles:\n" + "\n".join(detail)


def test_the_static_import_contract_holds() -> None:
    """import-linter's contracts in pyproject.toml: engine/ alone imports torch."""
    from pathlib import Path

    lint = Path(sys.executable).with_name("lint-imports")
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([str(lint)], capture_output=True, text=True, timeout=120, cwd=root)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout
