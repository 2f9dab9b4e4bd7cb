"""Wav files with soundfile and numpy: header facts, decoding, atomic writing, and the statistics the report and
`check-durations` use; the prompt limits every stage checks against (`prompt_problem`)."""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from voiceclone.errors import UsageError
from voiceclone.files import atomic_write, first_line

MIN_PROMPT_RATE = 16000  # the reference front end refuses prompts sampled below this
MAX_PROMPT_SECONDS = 30.0  # the speech tokenizer cannot take longer prompts
MIN_PROMPT_SECONDS = 0.04  # one 25 Hz speech token; under ~30 ms the flow mel's reflect padding fails
MAX_PROMPT_RATE = 384000  # the highest rate audio interfaces record at
RESAMPLE_RATES = (16000, 24000)  # the front end resamples prompts to these (speech tokens and speaker; flow mel)
MAX_RESAMPLE_TAPS = 1 << 22  # filter elements (16 MB) torchaudio's resampler may build for one rate
SILENT_PROMPT_DBFS = -60.0  # a prompt whose peak is below this holds no voice to clone
SILENCE_DBFS = -50.0  # a 10 ms window whose RMS is below this level counts as silence
SILENCE_WINDOW_S = 0.010
CLIP_LEVEL = 0.999  # |x| at or above this counts as clipped
WAV_SUBTYPES = {"pcm16": "PCM_16", "float": "FLOAT"}


class AudioError(UsageError):
    """An audio file that cannot be read or used (names the file)."""


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of an audio file (nothing decoded)."""

    sample_rate: int
    frames: int
    channels: int
    duration_s: float
    subtype: str = ""


def audio_info(path: str | Path) -> AudioInfo:
    """Sample rate, length, channel count and sample format from the file header only."""
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types for unreadable files
        raise AudioError(f"{path}: cannot read audio header: {first_line(exc)}") from exc
    duration = info.frames / info.samplerate if info.samplerate > 0 else 0.0
    return AudioInfo(info.samplerate, info.frames, info.channels, duration, info.subtype)


def resample_taps(rate: int, target: int) -> int:
    """Elements of the filter torchaudio's `Resample(rate, target)` builds: grows with the reduced ratio's terms."""
    g = math.gcd(rate, target)
    return (target // g) * (rate // g)


def prompt_rate_problem(rate: int) -> str | None:
    """Why a prompt's sample rate is unusable (too low, absurdly high, or too costly to resample), or None."""
    if rate < MIN_PROMPT_RATE:
        return f"sample rate {rate} Hz is under {MIN_PROMPT_RATE} Hz"
    if rate > MAX_PROMPT_RATE:
        return f"sample rate {rate} Hz is over {MAX_PROMPT_RATE} Hz"
    for target in RESAMPLE_RATES:
        if resample_taps(rate, target) > MAX_RESAMPLE_TAPS:
            return f"sample rate {rate} Hz cannot be resampled to {target} Hz cheaply (use a common rate)"
    return None


def sample_problem(path: str | Path, blocksize: int = 1 << 16) -> str | None:
    """Why a prompt's samples are unusable (NaN/infinite, or silent: peak under SILENT_PROMPT_DBFS), or None.
    Read in blocks, so memory stays bounded whatever the file's length."""
    peak = 0.0
    for block in sf.blocks(str(path), blocksize=blocksize, dtype="float32", always_2d=True):
        if not np.isfinite(block).all():
            return "audio has NaN or infinite samples"
        if block.size:
            peak = max(peak, float(np.abs(block).max()))
    if peak < 10.0 ** (SILENT_PROMPT_DBFS / 20.0):
        level = f"{20.0 * math.log10(peak):.1f} dBFS" if peak > 0 else "all zero"
        return f"audio is silent (peak {level}, under {SILENT_PROMPT_DBFS:.0f} dBFS)"
    return None


def prompt_problem(path: str | Path) -> str | None:
    """Why an audio file cannot be a prompt, or None. The header is checked first (rate, length); only then are the
    samples read, to refuse NaN, infinity or silence. Raises AudioError when unreadable."""
    info = audio_info(path)
    if info.frames <= 0:
        return "audio has no samples"
    problem = prompt_rate_problem(info.sample_rate)
    if problem:
        return problem
    if info.duration_s > MAX_PROMPT_SECONDS:
        return f"{info.duration_s:.1f} s is over the {MAX_PROMPT_SECONDS:.0f} s prompt limit"
    if info.duration_s < MIN_PROMPT_SECONDS:
        return f"{info.duration_s * 1000:.1f} ms is under the {MIN_PROMPT_SECONDS * 1000:.0f} ms prompt minimum"
    try:
        return sample_problem(path)
    except Exception as exc:  # soundfile raises several types for undecodable data
        raise AudioError(f"{path}: cannot decode audio: {first_line(exc)}") from exc


def wav_header_frames(path: str | Path) -> int | None:
    """The frames a RIFF/WAVE file's `data` chunk header promises, or None (not such a file, or a size left open).

    libsndfile reports the frames the file holds, so a file cut short reads as a shorter one; this says what the
    writer meant."""
    block_align = None
    with open(path, "rb") as f:
        riff = f.read(12)
        if len(riff) < 12 or riff[:4] != b"RIFF" or riff[8:] != b"WAVE":
            return None
        while len(chunk := f.read(8)) == 8:
            name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
            if name == b"data":
                return size // block_align if block_align and size != 0xFFFFFFFF else None
            if name == b"fmt " and size >= 14:
                block_align = struct.unpack("<H", f.read(size)[12:14])[0]
                f.seek(size % 2, 1)
            else:
                f.seek(size + size % 2, 1)  # chunks are padded to an even length
    return None


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode a file to float32 `(channels, N)` in [-1, 1] (PCM16 becomes x / 32768) and its sample rate."""
    try:
        data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(f"{path}: cannot decode audio: {first_line(exc)}") from exc
    return np.ascontiguousarray(data.T), sample_rate


def write_wav(path: str | Path, wav: np.ndarray, sr: int, fmt: str = "pcm16") -> None:
    """Write `(N,)` or `(channels, N)` audio atomically (`files.atomic_write`: temp file, fsync, rename).

    `fmt="pcm16"` clips to [-1, 1] and stores round(x * 32767); `fmt="float"` stores float32 as is.
    """
    if fmt not in WAV_SUBTYPES:
        raise UsageError(f"unknown wav format {fmt!r} (expected one of {sorted(WAV_SUBTYPES)})")
    path = Path(path)
    frames = np.nan_to_num(np.asarray(wav, dtype=np.float32))
    frames = frames.T if frames.ndim == 2 else frames
    if fmt == "pcm16":
        frames = np.round(np.clip(frames, -1.0, 1.0) * 32767.0).astype(np.int16)
    atomic_write(path, lambda handle: sf.write(handle, frames, sr, format="WAV", subtype=WAV_SUBTYPES[fmt]))


def _silent_windows(mono: np.ndarray, window: int) -> np.ndarray:
    """One bool per `window` samples (the last window may be shorter): RMS below SILENCE_DBFS."""
    n_windows = -(-len(mono) // window)
    padded = np.zeros(n_windows * window, dtype=np.float64)
    padded[: len(mono)] = mono
    counts = np.full(n_windows, window, dtype=np.float64)
    counts[-1] = len(mono) - (n_windows - 1) * window
    rms = np.sqrt((padded.reshape(n_windows, window) ** 2).sum(axis=1) / counts)
    return rms < 10.0 ** (SILENCE_DBFS / 20.0)


def _run_length(flags: np.ndarray) -> int:
    """Number of leading True values."""
    false_at = np.flatnonzero(~flags)
    return int(false_at[0]) if len(false_at) else len(flags)


def audio_stats(wav: np.ndarray, sr: int) -> dict[str, float]:
    """Duration, peak, leading/trailing silence (10 ms windows below -50 dBFS RMS) and the clipped fraction
    (|x| >= 0.999) of `(N,)` or `(channels, N)` audio (channels are averaged for the silence measure)."""
    samples = np.asarray(wav, dtype=np.float64)
    mono = samples.mean(axis=0) if samples.ndim == 2 else samples
    n = mono.shape[-1]
    stats = {"duration_s": n / sr, "peak": 0.0, "leading_silence_s": 0.0, "trailing_silence_s": 0.0}
    stats["clipped_fraction"] = 0.0
    if n == 0:
        return stats
    window = max(1, round(SILENCE_WINDOW_S * sr))
    silent = _silent_windows(mono, window)
    leading = _run_length(silent)
    trailing = _run_length(silent[::-1])
    last_window = n - (len(silent) - 1) * window
    stats["peak"] = float(np.abs(samples).max())
    stats["leading_silence_s"] = min(leading * window, n) / sr
    stats["trailing_silence_s"] = (0 if trailing == 0 else (trailing - 1) * window + last_window) / sr
    stats["clipped_fraction"] = float((np.abs(samples) >= CLIP_LEVEL).mean())
    return stats
