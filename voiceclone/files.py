"""File utilities: atomic file writes (no symlink followed, temp names nobody can pre-plant), atomic folder builds,
sha256 digests, and the first line of an exception for one-line errors."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import re
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from voiceclone.errors import UsageError

TEMP_SUFFIX = ".voiceclone-tmp"
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{16}" + re.escape(TEMP_SUFFIX) + "$")
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})  # disk full, quota, file size limit (ulimit -f)
_os_write = os.write  # every byte this tool writes to a file goes through here (tests inject faults)


def temp_name_for(path: Path) -> Path:
    """A fresh, unguessable temp name beside `path` that only this tool makes (see `is_temp_name`)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}{TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    """Whether `name` is a temp file name this tool made (a killed run may leave one behind)."""
    return _TEMP_NAME.match(name) is not None


def _symlink_error(path: Path) -> UsageError:
    return UsageError(f"{path}: is a symbolic link; voiceclone never reads or writes its files through links")


def open_nofollow(path: Path, flags: int, mode: int = 0o666) -> int:
    """`os.open` that refuses a symbolic link at `path` (UsageError naming it) instead of following it."""
    try:
        return os.open(path, flags | _NOFOLLOW | _CLOEXEC, mode)
    except OSError as exc:
        if os.path.islink(path):
            raise _symlink_error(path) from None
        raise exc


def read_bytes_nofollow(path: Path) -> bytes | None:
    """The bytes of a regular file, None when it does not exist; a symlink raises UsageError."""
    try:
        fd = open_nofollow(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read()


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of `data` to `fd`; a full disk raises OSError (ENOSPC, EDQUOT or EFBIG), never a short write."""
    view = memoryview(data)
    while view:
        view = view[_os_write(fd, view) :]


def no_space(exc: BaseException) -> bool:
    """Whether an error says the disk (or quota, or file size limit) is full."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


def atomic_write(path: str | Path, fill: Callable[[BinaryIO], None]) -> None:
    """Call `fill(handle)` on an in-memory file, then write its bytes atomically (see `atomic_write_bytes`); the
    encoder never meets a failing disk, so a full one is an OSError (ENOSPC), not the encoder's own error."""
    buffer = io.BytesIO()
    fill(buffer)
    atomic_write_bytes(path, buffer.getvalue())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a new exclusive temp file beside `path`, fsync, then rename it over `path`.

    The temp file is created with O_EXCL and O_NOFOLLOW under a random name, so nothing planted is written through;
    the rename replaces a symlink at `path` itself, never its target. On any error the temp file is removed."""
    path = Path(path)
    tmp = temp_name_for(path)
    fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)  # the umask applies, as for a plain open
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def build_folder(dst: Path, fill: Callable[[Path], None], replace: bool = False) -> None:
    """Build a folder atomically: `fill(tmp)` writes into a new empty temp sibling of `dst`, which is then renamed to
    `dst`; a failure leaves nothing behind. Files get the folder's mode (the umask applies).

    Without `replace` the rename fails (OSError) when a non-empty `dst` exists, e.g. when a concurrent builder won;
    with it an existing `dst` is swapped out and removed."""
    tmp = temp_name_for(dst)
    tmp.mkdir()  # unlike mkdtemp, honours the umask
    try:
        fill(tmp)
        file_mode = tmp.stat().st_mode & 0o666
        for path in tmp.rglob("*"):
            if path.is_file():
                path.chmod(file_mode)
        if replace and dst.exists():
            old = temp_name_for(dst)
            os.replace(dst, old)
            os.replace(tmp, dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
