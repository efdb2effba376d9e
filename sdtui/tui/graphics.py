"""Which way this terminal can draw images, decided once before ``App.run()``.

textual-image asks the terminal what it supports (and its cell size in pixels) by writing
escape sequences and reading the replies from stdin. That only works before Textual owns
stdin, so :func:`probe` runs first and imports textual-image there.

textual-image's own choice is not enough for us:

- kitty older than 0.28 answers the kitty graphics query but cannot draw the Unicode
  placeholder characters textual-image places images with (kitty 0.26.5 on Debian 12 shows
  boxes). XTVERSION (``CSI > 0 q``) tells the version.
- WezTerm and Konsole answer the kitty query too but do not draw the placeholders either;
  WezTerm draws Sixel.
- Inside tmux the kitty protocol only gets through with ``allow-passthrough on`` (and a
  textual-image that wraps its sequences for tmux, which 0.12 does not).

Every decision lives in :func:`choose_mode`, a pure function of what the terminal said and
the environment, so tests feed it fake replies.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from textual.widget import Widget

MODES: tuple[str, ...] = ("auto", "kitty", "sixel", "halfcell", "unicode", "none")
# kitty 0.28.0 added the Unicode placeholders (U+10EEEE) textual-image draws TGP images with
KITTY_PLACEHOLDER_VERSION: tuple[int, ...] = (0, 28, 0)
PROBE_TIMEOUT_S = 0.15
DEFAULT_MODE = "halfcell"  # what widgets use when probe() never ran: draws on any terminal

_XTVERSION_QUERY = "\x1b[>0q"
_DA1_QUERY = "\x1b[c"
# a 1x1 RGB image, query only (a=q): kitty answers OK without storing anything
_TGP_QUERY = "\x1b_Gi=31,s=1,v=1,a=q,t=d,f=24;AAAA\x1b\\"
_DA1_REPLY = re.compile(r"\x1b\[\?([0-9;]*)c")
_XTVERSION_REPLY = re.compile(r"(?:\x1bP|\x90)>\|(.*?)(?:\x1b\\|\x07|\x9c)", re.DOTALL)
_TGP_REPLY = re.compile(r"\x1b_G([^\x1b]*)\x1b\\")
_NAME_VERSION = re.compile(r"^\s*([^\s(]+)(?:\s*\(\s*([^)]*?)\s*\)|\s+(\S+))?")


@dataclass(frozen=True)
class GraphicsChoice:
    """The image mode the UI uses, and why (shown in the status bar / log)."""

    mode_used: str
    reason: str


@dataclass(frozen=True)
class TerminalReplies:
    """What the terminal answered to the probe (all replies read in one round trip)."""

    answered: bool = False  # the primary device attributes reply (every terminal sends one) came
    xtversion: tuple[str, str] | None = None  # (name, version) of the terminal itself
    sixel: bool = False  # "4" among the primary device attributes
    tgp: bool = False  # kitty graphics query answered OK


# -- parsing (pure) ---------------------------------------------------------------------------


def parse_xtversion(reply: str) -> tuple[str, str] | None:
    """``DCS > | kitty(0.26.5) ST`` -> ``("kitty", "0.26.5")``.

    Also takes the text between ``>|`` and ST on its own, and the ``name version`` form
    (``WezTerm 20240203-110809-5046fc22``, ``tmux 3.4``). None when there is no reply.
    """
    if not reply:
        return None
    match = _XTVERSION_REPLY.search(reply)
    body = match.group(1) if match else reply
    if "\x1b" in body:
        return None
    found = _NAME_VERSION.match(body)
    if not found or not found.group(1):
        return None
    return found.group(1), (found.group(2) or found.group(3) or "").strip()


def parse_replies(buffer: str) -> TerminalReplies:
    """Everything one probe round trip brought back, in any order.

    When more than one XTVERSION reply came (tmux answers for itself, the outer terminal
    through passthrough), the one that is not tmux's wins.
    """
    da1 = _DA1_REPLY.search(buffer)
    versions = [parse_xtversion(m.group(0)) for m in _XTVERSION_REPLY.finditer(buffer)]
    named = [v for v in versions if v is not None]
    outer = [v for v in named if v[0].lower() != "tmux"]
    xtversion = next(iter(outer or named), None)
    tgp = any(body.rsplit(";", 1)[-1] == "OK" for body in _TGP_REPLY.findall(buffer))
    sixel = da1 is not None and "4" in da1.group(1).split(";")
    return TerminalReplies(answered=da1 is not None, xtversion=xtversion, sixel=sixel, tgp=tgp)


def parse_version(text: str) -> tuple[int, ...] | None:
    """``"0.26.5"`` -> ``(0, 26, 5)``; None when it does not start with a number."""
    parts = re.findall(r"\d+", text.split("-")[0]) if text else []
    return tuple(int(p) for p in parts) if parts else None


def identify_terminal(xtversion: tuple[str, str] | None, env: Mapping[str, str]) -> tuple[str, str]:
    """(kind, version): kind is kitty, ghostty, wezterm, iterm2, foot, xterm, konsole,
    windows-terminal, or the lower-cased XTVERSION name, or "unknown".

    XTVERSION wins (it comes from the terminal even over SSH); environment variables are
    hints for when it did not answer or tmux answered instead.
    """
    if xtversion and xtversion[0].lower() != "tmux":
        name = xtversion[0].lower()
        for kind in ("kitty", "ghostty", "wezterm", "iterm2", "foot", "xterm", "konsole"):
            if name.startswith(kind):
                return kind, xtversion[1]
        return name, xtversion[1]
    program = env.get("TERM_PROGRAM", "")
    program_version = env.get("TERM_PROGRAM_VERSION", "")
    term = env.get("TERM", "")
    if env.get("KITTY_WINDOW_ID") or term == "xterm-kitty":
        return "kitty", ""
    if program == "ghostty" or term == "xterm-ghostty":
        return "ghostty", program_version
    if program == "WezTerm" or env.get("WEZTERM_PANE"):
        return "wezterm", program_version if program == "WezTerm" else ""
    if program == "iTerm.app" or env.get("ITERM_SESSION_ID"):
        return "iterm2", program_version if program == "iTerm.app" else ""
    if term.startswith("foot"):
        return "foot", ""
    if env.get("WT_SESSION"):
        return "windows-terminal", ""
    if env.get("KONSOLE_VERSION"):
        return "konsole", env.get("KONSOLE_VERSION", "")
    return "unknown", ""


# -- the decision (pure) ----------------------------------------------------------------------


def _sixel_or_halfcell(sixel: bool, why: str) -> GraphicsChoice:
    if sixel:
        return GraphicsChoice("sixel", f"{why}: using Sixel")
    return GraphicsChoice("halfcell", f"{why}: using half-cell blocks")


def choose_mode(
    requested: str = "auto",
    *,
    replies: TerminalReplies | None = None,
    env: Mapping[str, str] | None = None,
    is_tty: bool = True,
    tmux_passthrough: bool | None = None,
    tmux_wrapping: bool = True,
    platform: str = sys.platform,
) -> GraphicsChoice:
    """Pick the image mode.

    ``replies`` is what the terminal answered (None: not asked); ``tmux_passthrough`` is
    tmux's ``allow-passthrough`` (None: unknown); ``tmux_wrapping`` says whether the
    installed textual-image wraps kitty sequences for tmux passthrough. On Windows the
    terminal is not asked (the console has no termios to read its replies with): Windows
    Terminal, known by ``WT_SESSION``, draws Sixel since 1.22; another console gets blocks.
    """
    if requested not in MODES:
        raise ValueError(f"unknown image mode {requested!r}: use one of {', '.join(MODES)}")
    if requested != "auto":
        return GraphicsChoice(requested, f"image mode {requested} was asked for")
    if not is_tty:
        return GraphicsChoice("unicode", "not a terminal: using unicode shading")
    env = env or {}
    replies = replies or TerminalReplies()
    in_tmux = bool(env.get("TMUX")) or bool(
        replies.xtversion and replies.xtversion[0].lower() == "tmux"
    )
    kind, version_text = identify_terminal(replies.xtversion, env)
    where = f"{kind} {version_text}".strip()
    if kind == "unknown" and in_tmux:
        where = "inside tmux (the terminal behind it did not say what it is)"

    if platform == "win32" and not replies.answered and replies.xtversion is None:
        if kind == "windows-terminal":
            return GraphicsChoice(
                "sixel",
                "Windows Terminal (WT_SESSION; not probed on Windows): using Sixel "
                "(Windows Terminal 1.22 or later draws it; set the image mode to halfcell "
                "if images do not show)",
            )
        return GraphicsChoice(
            "halfcell",
            "a Windows console that is not Windows Terminal (not probed on Windows): "
            "using half-cell blocks (Windows Terminal draws Sixel images)",
        )
    if not replies.answered and replies.xtversion is None:
        return GraphicsChoice(
            "halfcell",
            "the terminal did not answer the graphics probe in time (slow link?): "
            "using half-cell blocks (set the image mode to pick one)",
        )

    if kind in ("kitty", "ghostty"):
        version = parse_version(version_text)
        if kind == "kitty" and version is not None and version < KITTY_PLACEHOLDER_VERSION:
            return _sixel_or_halfcell(
                replies.sixel,
                f"kitty {version_text} is older than 0.28 and cannot draw the image "
                "placeholders (upgrade kitty for full-resolution images)",
            )
        if in_tmux:
            blockers = []
            if tmux_passthrough is False:
                blockers.append(
                    "allow-passthrough is off (run `tmux set -g allow-passthrough on` "
                    "for full-resolution images)"
                )
            if not tmux_wrapping:
                blockers.append(
                    "this textual-image does not pass kitty graphics through tmux "
                    "(textual-image >= 0.13 does)"
                )
            if blockers:
                return _sixel_or_halfcell(replies.sixel, "inside tmux, " + " and ".join(blockers))
            note = "" if version is not None else " (kitty version unknown behind tmux)"
            return GraphicsChoice("kitty", f"{kind} through tmux passthrough{note}: kitty graphics")
        if replies.tgp or replies.xtversion is not None:
            return GraphicsChoice("kitty", f"{where}: kitty graphics")
        return _sixel_or_halfcell(replies.sixel, f"{where} did not answer the kitty graphics query")

    if kind in ("wezterm", "konsole"):
        # both answer the kitty query but do not draw textual-image's Unicode placeholders
        return _sixel_or_halfcell(replies.sixel, f"{where}")
    if kind in ("iterm2", "foot", "windows-terminal", "xterm"):
        if kind == "xterm" and not replies.sixel:
            return GraphicsChoice(
                "halfcell",
                f"{where} without Sixel (start it as `xterm -ti vt340` for Sixel): "
                "using half-cell blocks",
            )
        return _sixel_or_halfcell(replies.sixel, where)

    # unknown terminal: what textual-image itself would pick (Sixel, then kitty graphics)
    if replies.sixel:
        return GraphicsChoice("sixel", f"{where}: the terminal reports Sixel")
    if replies.tgp and not in_tmux:
        return GraphicsChoice("kitty", f"{where}: the terminal answered the kitty graphics query")
    return GraphicsChoice("halfcell", f"{where}: no graphics protocol answered: half-cell blocks")


# -- talking to the terminal --------------------------------------------------------------------


def _tmux_wrap(sequence: str) -> str:
    return "\x1bPtmux;" + sequence.replace("\x1b", "\x1b\x1b") + "\x1b\\"


def query_terminal(
    timeout: float = PROBE_TIMEOUT_S, *, in_tmux: bool = False, passthrough: bool = True
) -> TerminalReplies:
    """Ask XTVERSION, kitty graphics and primary device attributes in one round trip.

    The device attributes reply comes last (every terminal answers it, in order), so reading
    stops as soon as it arrives; otherwise after ``timeout`` seconds. Needs stdin and stdout
    to be the terminal; returns "no answer" anywhere else.
    """
    if sys.platform == "win32":  # pragma: no cover - the UI runs on the GPU box
        return TerminalReplies()
    import termios
    import tty
    from select import select

    stdin, stdout = sys.__stdin__, sys.__stdout__
    if stdin is None or stdout is None or not (stdin.isatty() and stdout.isatty()):
        return TerminalReplies()
    fd = stdin.fileno()
    query = _XTVERSION_QUERY
    if in_tmux:
        # The outer terminal's own answers, when passthrough lets them out. No bare kitty
        # query: tmux has no kitty graphics, and it takes an APC sequence (ESC _ ... ESC \)
        # as the pane's title, which then read "Gi=31,s=1,...".
        if passthrough:
            query += _tmux_wrap(_XTVERSION_QUERY) + _tmux_wrap(_TGP_QUERY)
    else:
        query += _TGP_QUERY
    query += _DA1_QUERY
    buffer = b""
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        return TerminalReplies()
    try:
        tty.setcbreak(fd, termios.TCSANOW)
        stdout.write(query)
        stdout.flush()
        deadline = time.monotonic() + timeout
        while not _DA1_REPLY.search(buffer.decode("latin-1")):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            readable, _, _ = select([fd], [], [], left)
            if not readable:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            buffer += chunk
        if not _DA1_REPLY.search(buffer.decode("latin-1")):
            # replies that come later would reach Textual as keystrokes: drop what is queued
            termios.tcflush(fd, termios.TCIFLUSH)
    except OSError:
        pass
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, saved)
    return parse_replies(buffer.decode("utf-8", errors="replace"))


def tmux_allow_passthrough() -> bool | None:
    """tmux's ``allow-passthrough`` (True for ``on``/``all``); None when tmux cannot say."""
    try:
        done = subprocess.run(
            ["tmux", "show", "-gv", "allow-passthrough"],
            capture_output=True,
            text=True,
            timeout=1.0,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    value = done.stdout.strip().lower()
    if done.returncode == 0 and value:
        return value in ("on", "all")
    if "invalid option" in done.stderr or "unknown option" in done.stderr:
        return True  # tmux before 3.3 had no such option and always passed DCS through
    return None


def textual_image_wraps_tmux() -> bool:
    """Whether the installed textual-image wraps its kitty sequences for tmux passthrough."""
    try:
        return importlib.util.find_spec("textual_image._tmux") is not None
    except (ImportError, ValueError):
        return False


class _NotATerminal:
    """``sys.__stdout__`` as textual-image's import sees it: not a terminal."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _prepare_textual_image() -> None:
    """Import textual-image and let it ask the terminal for its cell size now, while nothing
    else reads stdin.

    textual-image 0.12 also asks the terminal, on import, which protocol it supports (sixel,
    then kitty: up to ~0.2 s waiting for replies that often never come, before the first
    frame). sdtui never uses that answer: ``probe`` decided the mode and
    ``image_widget_class`` names the class. So that import sees a stdout that is not a
    terminal, and skips the questions."""
    if "textual_image.renderable" not in sys.modules:
        real = sys.__stdout__
        sys.__stdout__ = _NotATerminal(real)  # type: ignore[assignment,misc]
        try:
            import textual_image.renderable  # noqa: F401
        finally:
            sys.__stdout__ = real  # type: ignore[misc]
    import textual_image.widget  # noqa: F401  (0.12 asks the cell size on import)
    from textual_image._terminal import get_cell_size

    get_cell_size()  # >= 0.13 probes lazily: fill its cache before Textual starts


# -- the process-wide choice --------------------------------------------------------------------

_choice: GraphicsChoice | None = None


def probe(mode: str = "auto", *, timeout: float = PROBE_TIMEOUT_S) -> GraphicsChoice:
    """Decide the image mode for this run. Call it before ``App.run()``.

    ``mode`` is the user's setting (auto|kitty|sixel|halfcell|unicode|none). The terminal
    is only queried for "auto", only when stdin and stdout are a terminal, and for at most
    ``timeout`` seconds (a slow SSH link falls back to half-cell blocks).
    """
    global _choice
    if mode not in MODES:
        raise ValueError(f"unknown image mode {mode!r}: use one of {', '.join(MODES)}")
    env = dict(os.environ)
    stdin, stdout = sys.__stdin__, sys.__stdout__
    is_tty = bool(stdin and stdout and stdin.isatty() and stdout.isatty())
    in_tmux = bool(env.get("TMUX"))
    replies: TerminalReplies | None = None
    passthrough: bool | None = None
    if mode == "auto" and is_tty and sys.platform != "win32":
        passthrough = tmux_allow_passthrough() if in_tmux else None
        replies = query_terminal(timeout, in_tmux=in_tmux, passthrough=passthrough is not False)
    choice = choose_mode(
        mode,
        replies=replies,
        env=env,
        is_tty=is_tty,
        tmux_passthrough=passthrough,
        tmux_wrapping=textual_image_wraps_tmux(),
    )
    if choice.mode_used != "none":
        try:
            _prepare_textual_image()
        except Exception as e:  # a broken terminal must not keep the app from starting
            choice = GraphicsChoice("none", f"textual-image failed to start ({e}): paths only")
    _choice = choice
    return choice


def set_mode(mode: str, reason: str = "set by the app") -> GraphicsChoice:
    """Use ``mode`` without asking the terminal (tests, or a setting changed at run time)."""
    global _choice
    if mode not in MODES or mode == "auto":
        raise ValueError(f"unknown image mode {mode!r}: use one of {', '.join(MODES[1:])}")
    _choice = GraphicsChoice(mode, reason)
    return _choice


def current_choice() -> GraphicsChoice:
    """The choice :func:`probe` made (half-cell blocks when it never ran)."""
    return _choice or GraphicsChoice(DEFAULT_MODE, "image mode not probed: half-cell blocks")


def current_mode() -> str:
    return current_choice().mode_used


def image_widget_class(mode: str | None = None) -> type[Widget] | None:
    """The textual-image widget class for ``mode`` (default: the current one); None for
    "none" (show paths only)."""
    mode = mode or current_mode()
    if mode == "none":
        return None
    from textual_image.widget import HalfcellImage, SixelImage, TGPImage, UnicodeImage

    classes: dict[str, type[Widget]] = {
        "kitty": TGPImage,
        "sixel": SixelImage,
        "halfcell": HalfcellImage,
        "unicode": UnicodeImage,
    }
    if mode not in classes:
        raise ValueError(f"unknown image mode {mode!r}: use one of {', '.join(MODES[1:])}")
    return classes[mode]


def cell_pixels() -> tuple[int, int]:
    """Pixels per terminal cell (width, height) as textual-image measured them."""
    try:
        from textual_image._terminal import get_cell_size

        size = get_cell_size()
        return max(1, size.width), max(1, size.height)
    except Exception:
        return 10, 20
