"""Where the daemon lives: a 0700 folder of the user's holding the socket, the authkey
(0600), the single-instance lock and a small status file.

The folder is ``$SDTUI_RUNTIME_DIR``, else ``$XDG_RUNTIME_DIR/sdtui`` (a per-user tmpfs on
systemd machines), else a per-machine folder in the state folder (a home shared over NFS
must not see another machine's socket). The job queue itself lives in the state folder: it
must survive a reboot, which ``$XDG_RUNTIME_DIR`` does not.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import socket
import stat
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdtui.config import state_dir
from sdtui.errors import UserError
from sdtui.jobstore import QUEUE_FILE

# sun_path holds 108 bytes on Linux, 104 on macOS: longer paths go to a short alias
MAX_SOCKET_PATH = 100
WINDOWS = sys.platform == "win32"


def _uid() -> int:
    return os.getuid() if hasattr(os, "getuid") else 0


def runtime_dir() -> Path:
    env = os.environ.get("SDTUI_RUNTIME_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg and Path(xdg).is_dir():
        return Path(xdg) / "sdtui"
    return state_dir() / f"daemon-{socket.gethostname() or 'localhost'}"


@dataclass(frozen=True)
class DaemonPaths:
    """Every file of one daemon. Tests and ``--no-daemon`` use their own folder."""

    folder: Path
    queue: Path

    @classmethod
    def default(cls) -> DaemonPaths:
        return cls(runtime_dir(), state_dir() / QUEUE_FILE)

    @property
    def key(self) -> Path:
        return self.folder / "daemon.key"

    @property
    def lock(self) -> Path:
        return self.folder / "daemon.lock"

    @property
    def info(self) -> Path:
        return self.folder / "daemon.json"

    @property
    def address(self) -> str:
        """The Listener/Client address: a socket path (POSIX) or a pipe name (Windows)."""
        if WINDOWS:  # pragma: no cover - named pipes are machine-wide: one name per user
            tag = hashlib.sha256(str(self.folder).encode()).hexdigest()[:12]
            return rf"\\.\pipe\sdtui-{os.environ.get('USERNAME', 'user')}-{tag}"
        path = self.folder / "daemon.sock"
        if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
            return str(path)
        # a deep home folder: the socket goes to a short alias named after the folder
        tag = hashlib.sha256(os.fsencode(self.folder)).hexdigest()[:16]
        return str(Path(tempfile.gettempdir()) / f"sdtui-{_uid()}" / f"{tag}.sock")

    @property
    def family(self) -> str:
        return "AF_PIPE" if WINDOWS else "AF_UNIX"

    # -- the folder and its files, owned by this user and private ----------------------------

    def ensure_folder(self) -> None:
        """Create the folder 0700 (and the socket alias's), or refuse one that another user
        owns or others can open."""
        folders = [self.folder]
        if not WINDOWS and Path(self.address).parent != self.folder:
            folders.append(Path(self.address).parent)
        for folder in folders:
            try:
                folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as e:
                raise UserError(
                    f"cannot create the daemon folder {folder} ({e.strerror or e}): set "
                    "SDTUI_RUNTIME_DIR to a folder of yours"
                ) from None
            check_private(folder)

    def write_key(self) -> bytes:
        """A fresh authkey for a starting daemon, readable by this user only."""
        key = secrets.token_bytes(32)
        tmp = self.key.with_name(f".{self.key.name}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, key)
        finally:
            os.close(fd)
        os.replace(tmp, self.key)
        return key

    def read_key(self) -> bytes | None:
        try:
            check_owned(self.key)
            return self.key.read_bytes()
        except FileNotFoundError:
            return None

    def write_info(self, info: dict[str, Any]) -> None:
        tmp = self.info.with_name(f".{self.info.name}.{os.getpid()}")
        tmp.write_text(json.dumps(info, indent=1), encoding="utf-8")
        os.replace(tmp, self.info)

    def read_info(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.info.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def remove_socket(self) -> None:
        if WINDOWS:  # pragma: no cover
            return
        try:
            st = os.lstat(self.address)
        except FileNotFoundError:
            return
        if stat.S_ISSOCK(st.st_mode) and st.st_uid == _uid():
            os.unlink(self.address)


def check_private(folder: Path) -> None:
    """The daemon's folder must be this user's, and closed to everyone else."""
    if WINDOWS:  # pragma: no cover - the profile folder's ACLs do this job
        return
    st = os.lstat(folder)
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{folder} is not a folder: remove it, or set SDTUI_RUNTIME_DIR")
    if st.st_uid != _uid():
        raise UserError(
            f"the daemon folder {folder} belongs to another user (uid {st.st_uid}): refusing "
            "to use it; set SDTUI_RUNTIME_DIR to a folder of yours"
        )
    if st.st_mode & 0o077:
        os.chmod(folder, 0o700)


def check_owned(path: Path | str) -> None:
    """A socket or key file made by another user is never trusted."""
    if WINDOWS:  # pragma: no cover
        return
    st = os.lstat(path)
    if st.st_uid != _uid():
        raise UserError(
            f"{path} belongs to another user (uid {st.st_uid}): refusing to connect to it; "
            "set SDTUI_RUNTIME_DIR to a folder of yours"
        )


def wake_readers(conn: Any) -> None:
    """Shut down the socket under ``conn`` so a thread blocked in ``conn.recv()`` wakes at
    once with EOF, before the connection is closed. Closing alone would leave that thread
    reading a file descriptor number the process may hand to its next connection, where it
    would steal that connection's bytes. (Windows' named pipes have no socket: nothing to do;
    closing a pipe wakes its reader there.)"""
    if WINDOWS:
        return
    with contextlib.suppress(OSError, ValueError, TypeError):
        sock = socket.socket(fileno=os.dup(conn.fileno()))  # a second handle on the socket
        try:
            sock.shutdown(socket.SHUT_RDWR)
        finally:
            sock.close()
