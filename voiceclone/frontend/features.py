"""Prompt features in torch, equal to the reference's: resampling, whisper log-mel (speech tokenizer input), Kaldi
fbank (speaker embedding input) and the Matcha mel the flow is prompted with."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import librosa
import torch
import torchaudio.compliance.kaldi as kaldi
import torchaudio.transforms

from voiceclone.io.audio import MIN_PROMPT_RATE, AudioError, read_audio

FEATURE_RATE = 16000  # whisper log-mel and Kaldi fbank (speech tokenizer, speaker embedding) run at 16 kHz


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
    if sample_rate < MIN_PROMPT_RATE:
        raise AudioError(f"{path}: sample rate {sample_rate} Hz is below the minimum of {MIN_PROMPT_RATE} Hz")
    mono = torch.from_numpy(data).mean(dim=0, keepdim=True)
    return resample(mono, sample_rate, target_sr)


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
        mel = _mel_basis(FEATURE_RATE, n_fft, n_mels, 0.0, None) @ power
        log_spec = torch.clamp(mel, min=1e-10).log10()
        log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
        return (log_spec + 4.0) / 4.0


def kaldi_fbank_cmn(wav16k: torch.Tensor) -> torch.Tensor:
    """80-bin Kaldi fbank (dither 0, other Kaldi defaults) of a 16 kHz wave minus its time mean -> `(T, 80)`."""
    with torch.no_grad():
        feats = kaldi.fbank(wav16k.reshape(1, -1), num_mel_bins=80, dither=0.0, sample_frequency=FEATURE_RATE)
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
