"""Test-wide setup: never reach the Hugging Face Hub, and share one cache (one built demo
model) between every test and every subprocess a test starts."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from sdtui.engine.demo import DemoModel

# Set at import time, before any test imports huggingface_hub or spawns a child process.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
_CACHE = tempfile.mkdtemp(prefix="sdtui-test-cache-")
os.environ["SDTUI_CACHE_DIR"] = _CACHE
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def demo_model() -> DemoModel:
    """The tiny demo model (diffusers folder, .safetensors, .ckpt), built once per session."""
    from sdtui.engine.demo import ensure_demo_model  # lazy: UI-only tests never import torch

    return ensure_demo_model()
