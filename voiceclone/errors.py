"""Errors the command line turns into one line on stderr and a distinct exit code."""

from __future__ import annotations


class VoiceCloneError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = 1


class UsageError(VoiceCloneError):
    """Bad flags or an unusable combination of them."""

    exit_code = 2


class ManifestError(VoiceCloneError):
    """A problem in a manifest, located by file, line and field."""

    exit_code = 2

    def __init__(self, path: str, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field, self.message = str(path), line, field, message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {field}: {message}" if field else f"{where}: {message}")


class NonFiniteError(VoiceCloneError):
    """A stage produced NaN or infinite values for a row: that row fails, the run goes on."""

    exit_code = 1


class ModelError(VoiceCloneError):
    """A model directory, file or resource is missing or inconsistent."""

    exit_code = 3


class DeviceError(VoiceCloneError):
    """The requested device (or a feature that needs it) is unavailable."""

    exit_code = 4
