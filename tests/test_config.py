"""Settings: defaults < TOML file < environment < flags; the A1111 folder layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdtui.config import Settings, load_settings, save_settings
from sdtui.errors import UserError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch, tmp_path):
    for var in (
        "SDTUI_A1111_DIR",
        "SDTUI_MODELS_DIR",
        "SDTUI_OUTPUTS_DIR",
        "SDTUI_MODEL",
        "SDTUI_DEVICE",
        "SDTUI_MEMORY_MODE",
        "SDTUI_GRAPHICS",
        "SDTUI_FAST_PATH",
        "SDTUI_EMBEDDINGS_DIR",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SDTUI_HOME", str(tmp_path / "home"))


def test_defaults_use_the_a1111_layout_under_sdtui_home(tmp_path):
    s = load_settings(tmp_path / "none.toml")
    assert s.checkpoints == tmp_path / "home" / "models" / "Stable-diffusion"
    assert s.outputs == tmp_path / "home" / "outputs"
    assert s.embeddings == tmp_path / "home" / "embeddings"
    assert s.styles_file == tmp_path / "home" / "styles.csv"
    assert (s.device, s.memory_mode, s.graphics, s.fast_path) == ("auto", "auto", "auto", "auto")


def test_an_a1111_install_supplies_models_embeddings_and_outputs(tmp_path):
    webui = tmp_path / "stable-diffusion-webui"
    (webui / "models" / "Stable-diffusion").mkdir(parents=True)
    s = load_settings(tmp_path / "none.toml", a1111_dir=webui)
    assert s.checkpoints == webui / "models" / "Stable-diffusion"
    assert s.outputs == webui / "outputs" and s.embeddings == webui / "embeddings"
    # a separate outputs folder still wins
    s2 = load_settings(tmp_path / "none.toml", a1111_dir=webui, outputs_dir=tmp_path / "out")
    assert s2.outputs == tmp_path / "out" and s2.models == webui / "models"
    # A1111's styles.csv sits in the webui folder (its data dir), whatever moves the outputs
    assert s.styles_file == s2.styles_file == webui / "styles.csv"
    s3 = load_settings(tmp_path / "none.toml", models_dir=tmp_path / "m")
    assert s3.styles_file == tmp_path / "home" / "styles.csv"


def test_file_then_environment_then_flags(tmp_path, monkeypatch):
    cfg = tmp_path / "config.toml"
    cfg.write_text('models_dir = "/from/file"\nmemory_mode = "low"\ndevice = "cpu"\n')
    s = load_settings(cfg)
    assert s.models == Path("/from/file") and s.memory_mode == "low" and s.device == "cpu"
    monkeypatch.setenv("SDTUI_MEMORY_MODE", "lowest")
    monkeypatch.setenv("SDTUI_MODELS_DIR", "/from/env")
    s = load_settings(cfg)
    assert s.models == Path("/from/env") and s.memory_mode == "lowest"
    s = load_settings(cfg, models_dir=Path("/from/flag"), memory_mode="normal")
    assert s.models == Path("/from/flag") and s.memory_mode == "normal"


def test_save_then_load_round_trips(tmp_path):
    cfg = tmp_path / "sub" / "config.toml"
    s = Settings(models_dir=tmp_path / "m", default_model="v1-5", memory_mode="low")
    save_settings(s, cfg)
    assert "memory_mode" in cfg.read_text()
    assert load_settings(cfg) == s


@pytest.mark.parametrize(
    "text, words",
    [
        ("memory_mode = 'tiny'\n", ["memory mode", "auto, normal, low, lowest"]),
        ("colour = 'red'\n", ["unknown setting 'colour'", "models_dir"]),
        ("models_dir = \n", ["not valid TOML", "fix or delete"]),
    ],
)
def test_a_bad_settings_file_says_what_and_where(tmp_path, text, words):
    cfg = tmp_path / "config.toml"
    cfg.write_text(text)
    with pytest.raises(UserError) as e:
        load_settings(cfg)
    for w in words:
        assert w in e.value.message


def test_a_missing_a1111_folder_is_named(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_settings(tmp_path / "none.toml", a1111_dir=tmp_path / "nope")


def test_auto_picks_the_apple_gpu_on_apple_silicon(monkeypatch) -> None:
    """--device auto: every NVIDIA GPU, else on a Mac with Apple silicon its GPU (torch's
    "mps"), else the CPU; mps and cpu can be named. Not tried on a Mac: the platform is
    faked here (no Mac in CI), the choice is what is tested."""
    from sdtui import config
    from sdtui.ipc import daemon

    monkeypatch.setattr(daemon, "visible_gpus", lambda: [])
    monkeypatch.setattr(daemon, "apple_silicon", lambda: True)
    assert [d.name for d in daemon.resolve_devices(Settings(device="auto"))] == ["mps"]
    assert daemon.resolve_devices(Settings(device="mps"))[0].engine_device == "mps"
    assert [d.name for d in daemon.resolve_devices(Settings(device="cpu"))] == ["cpu"]
    monkeypatch.setattr(daemon, "apple_silicon", lambda: False)
    assert [d.name for d in daemon.resolve_devices(Settings(device="auto"))] == ["cpu"]
    monkeypatch.setattr(daemon, "visible_gpus", lambda: ["0"])
    monkeypatch.setattr(daemon, "apple_silicon", lambda: True)
    assert [d.name for d in daemon.resolve_devices(Settings(device="auto"))] == ["cuda:0"]
    assert config.valid_device("mps") and not config.valid_device("metal")
    monkeypatch.setattr(config.sys, "platform", "darwin")
    monkeypatch.setattr(config.platform, "machine", lambda: "arm64")
    assert config.apple_silicon()
    monkeypatch.setattr(config.platform, "machine", lambda: "x86_64")
    assert not config.apple_silicon()


def test_mps_asked_for_without_an_apple_gpu_says_so() -> None:
    torch = pytest.importorskip("torch")
    if torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")
    from sdtui.engine.models import _check_device

    with pytest.raises(UserError) as err:
        _check_device("mps")
    assert "Apple" in str(err.value) and "cpu" in str(err.value)
