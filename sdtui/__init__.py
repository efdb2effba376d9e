"""sdtui: Stable Diffusion from a keyboard-only terminal UI."""

__version__ = "0.1.0"
