"""Audio in and out: wav I/O, resampling, and the prompt features (whisper log-mel, Kaldi fbank, mel)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch
import torchaudio.compliance.kaldi as kaldi
import torchaudio.transforms

from voiceclone.errors import UsageError
from voiceclone.files import atomic_write, first_line

MIN_SAMPLE_RATE = 16000
SILENCE_DBFS = -50.0  # a 10 ms window whose RMS is below this level counts as silence
SILENCE_WINDOW_S = 0.010
CLIP_LEVEL = 0.999  # |x| at or above this counts as clipped
WAV_SUBTYPES = {"pcm16": "PCM_16", "float": "FLOAT"}


class AudioError(UsageError):
    """An audio file that cannot be read or used (names the file)."""


@dataclass
class MelConfig:
    """The yaml `feat_extractor:` block (Matcha-style mel of the flow prompt)."""

    n_fft: int = 1920
    num_mels: int = 80
    sampling_rate: int = 24000
    hop_size: int = 480
    win_size: int = 1920
    fmin: float = 0.0
    fmax: float | None = None
    center: bool = False


@dataclass(frozen=True)
class AudioInfo:
    """Header facts of an audio file (nothing decoded)."""

    sample_rate: int
    frames: int
    channels: int
    duration_s: float


# ---------------------------------------------------------------------------------------------------------------------
# Reading and resampling


def audio_info(path: str | Path) -> AudioInfo:
    """Sample rate, length and channel count from the file header only."""
    try:
        info = sf.info(str(path))
    except Exception as exc:  # soundfile raises several types for unreadable files
        raise AudioError(f"{path}: cannot read audio header: {first_line(exc)}") from exc
    return AudioInfo(info.samplerate, info.frames, info.channels, info.frames / info.samplerate)


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode a file to float32 `(channels, N)` in [-1, 1] (PCM16 becomes x / 32768) and its sample rate."""
    try:
        data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise AudioError(f"{path}: cannot decode audio: {first_line(exc)}") from exc
    return np.ascontiguousarray(data.T), sample_rate


@functools.lru_cache(maxsize=16)
def _resampler(orig_sr: int, target_sr: int) -> torchaudio.transforms.Resample:
    return torchaudio.transforms.Resample(orig_sr, target_sr)


def resample(wav: torch.Tensor, orig_sr: int, target_sr: int) -> torch.Tensor:
    """Resample with `torchaudio.transforms.Resample` (the reference's resampler, bit for bit)."""
    if orig_sr == target_sr:
        return wav
    with torch.no_grad():
        return _resampler(orig_sr, target_sr)(wav)


def load_mono(path: str | Path, target_sr: int) -> torch.Tensor:
    """The reference's `load_wav`: channel mean, refuse rates below 16 kHz, resample -> float32 `(1, N)`."""
    data, sample_rate = read_audio(path)
    if sample_rate < MIN_SAMPLE_RATE:
        raise AudioError(f"{path}: sample rate {sample_rate} Hz is below the minimum of {MIN_SAMPLE_RATE} Hz")
    mono = torch.from_numpy(data).mean(dim=0, keepdim=True)
    return resample(mono, sample_rate, target_sr)


# ---------------------------------------------------------------------------------------------------------------------
# Features


@functools.lru_cache(maxsize=8)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> torch.Tensor:
    """Slaney mel filterbank (librosa defaults), cached by every parameter that shapes it."""
    return torch.from_numpy(librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax))


@functools.lru_cache(maxsize=8)
def _hann(size: int) -> torch.Tensor:
    return torch.hann_window(size)


def whisper_log_mel(wav16k: torch.Tensor, n_mels: int = 128) -> torch.Tensor:
    """openai-whisper's log-mel of a 16 kHz wave `(*, N)` -> `(*, n_mels, N // 160)`."""
    n_fft, hop = 400, 160
    with torch.no_grad():
        stft = torch.stft(wav16k, n_fft, hop, window=_hann(n_fft), return_complex=True)
        power = stft[..., :-1].abs() ** 2
        mel = _mel_basis(16000, n_fft, n_mels, 0.0, None) @ power
        log_spec = torch.clamp(mel, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        return (log_spec + 4.0) / 4.0


def kaldi_fbank_cmn(wav16k: torch.Tensor) -> torch.Tensor:
    """80-bin Kaldi fbank (dither 0, other Kaldi defaults) of a 16 kHz wave minus its time mean -> `(T, 80)`."""
    with torch.no_grad():
        feats = kaldi.fbank(wav16k.reshape(1, -1), num_mel_bins=80, dither=0.0, sample_frequency=16000)
        return feats - feats.mean(dim=0, keepdim=True)


def matcha_mel(wav: torch.Tensor, cfg: MelConfig) -> torch.Tensor:
    """Matcha-TTS log-mel (the flow prompt feature) of `(*, N)` at `cfg.sampling_rate` -> `(*, num_mels, T)`."""
    pad = (cfg.n_fft - cfg.hop_size) // 2
    with torch.no_grad():
        padded = torch.nn.functional.pad(wav.reshape(-1, 1, wav.shape[-1]), (pad, pad), mode="reflect").squeeze(1)
        spec = torch.stft(
            padded,
            cfg.n_fft,
            hop_length=cfg.hop_size,
            win_length=cfg.win_size,
            window=_hann(cfg.win_size),
            center=cfg.center,
            pad_mode="reflect",
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        spec = torch.view_as_real(spec)
        magnitude = torch.sqrt(spec.pow(2).sum(-1) + 1e-9)
        basis = _mel_basis(cfg.sampling_rate, cfg.n_fft, cfg.num_mels, cfg.fmin, cfg.fmax)
        mel = torch.log(torch.clamp(basis @ magnitude, min=1e-5))
        return mel.reshape(*wav.shape[:-1], cfg.num_mels, -1)


# ---------------------------------------------------------------------------------------------------------------------
# Writing and statistics


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
