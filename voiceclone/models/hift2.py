"""CosyVoice2 HiFT vocoder: centred convs, transposed-conv upsampling, SineGen2 noise from each row's generator."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from voiceclone.models.hift import HiFT, HiFTConfig
from voiceclone.models.hift_layers import F0Predictor, PaddedConv1d, ResBlock
from voiceclone.models.network import PinnedDtype


class TransposedConv1d(nn.ConvTranspose1d):
    """ConvTranspose1d whose weight is a weight-norm pair in hift.pt (g over the input-channel axis)."""

    weight_normed = True


class NoisySineSource(PinnedDtype):
    """SourceModuleHnNSF with the non-causal SineGen2: harmonic sines plus Gaussian noise, merged by tanh(Linear).

    The sines are those of the reference: per-frame phase increments (the linear downsampling reads two equal
    samples of each frame), their cumulative phase, linearly upsampled to samples. The noise is drawn from the row's
    generator exactly as the reference draws it from the global one: `rand(1, H)` (the initial phases, which never
    reach the output), the (1, L, H) noise in the channel-major memory order of the reference's tensor, then an
    unused (1, L, 1) normal draw. Float32 whatever the vocoder's dtype.
    """

    def __init__(self, config: HiFTConfig):
        super().__init__()
        self.config = config
        self.l_linear = nn.Linear(config.nb_harmonics + 1, 1)

    def forward(self, f0: Tensor, generator: torch.Generator | None) -> Tensor:
        """F0 per frame (T,) float32 of one row -> excitation (T * samples_per_frame,) float32.

        generator None: the noise is zero (the reference with its noise draws replaced by zeros).
        """
        cfg, up = self.config, self.config.samples_per_frame
        harmonics = cfg.nb_harmonics + 1
        samples = f0.shape[0] * up
        rad = (f0[:, None] * torch.arange(1, harmonics + 1, dtype=f0.dtype, device=f0.device) / cfg.sampling_rate) % 1
        phase = torch.cumsum(rad, dim=0) * 2 * math.pi
        phase = F.interpolate((phase.T * up)[None], scale_factor=float(up), mode="linear")[0]  # (H, samples)
        sines = torch.sin(phase) * cfg.nsf_alpha
        uv = (f0 > cfg.nsf_voiced_threshold).float().repeat_interleave(up)
        noise_amp = uv * cfg.nsf_sigma + (1 - uv) * cfg.nsf_alpha / 3
        waves = sines * uv
        if generator is not None:
            torch.rand(1, harmonics, generator=generator)
            noise = torch.empty_strided((1, samples, harmonics), (harmonics * samples, 1, samples))
            noise = noise.normal_(generator=generator)[0].T.to(f0.device)  # (H, samples), contiguous
            torch.empty(1, samples, 1).normal_(generator=generator)
            waves = waves + noise_amp * noise
        w, b = self.l_linear.weight, self.l_linear.bias
        return torch.tanh(F.linear(waves.T, w, b)).squeeze(-1)


class HiFT2(HiFT):
    """CosyVoice2 HiFTGenerator: mel (80 x T) -> 24 kHz waveform (T * 480 samples), float32 F0 predictor.

    The checkpoint layout (both weight-norm forms) and the STFT helpers are HiFT's. Rows are batched: every conv
    output is zeroed past its row's end, so the centred convs see the zeros a batch-1 call pads with, and each row
    equals its batch-1 result.
    """

    def _build(self, cfg: HiFTConfig) -> None:
        ch, rates = cfg.base_channels, cfg.upsample_rates
        stft_channels = cfg.istft_n_fft + 2
        self.m_source = NoisySineSource(cfg)
        self.conv_pre = PaddedConv1d(cfg.in_channels, ch, 7, pad=(3, 3))
        self.ups = nn.ModuleList(
            TransposedConv1d(ch // 2**i, ch // 2 ** (i + 1), k, u, padding=(k - u) // 2)
            for i, (u, k) in enumerate(zip(rates, cfg.upsample_kernel_sizes, strict=True))
        )
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (k, d) in enumerate(
            zip(cfg.source_resblock_kernel_sizes, cfg.source_resblock_dilation_sizes, strict=True)
        ):
            stride = math.prod(rates[i + 1 :])  # STFT frame rate -> rate after upsample stage i
            kernel, pad = (2 * stride, stride // 2) if stride > 1 else (1, 0)
            down = PaddedConv1d(stft_channels, ch // 2 ** (i + 1), kernel, (pad, pad), stride, weight_normed=False)
            self.source_downs.append(down)
            self.source_resblocks.append(ResBlock(ch // 2 ** (i + 1), k, d, causal=False))
        self.resblocks = nn.ModuleList(
            ResBlock(ch // 2 ** (i + 1), k, d, causal=False)
            for i in range(len(rates))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True)
        )
        self.conv_post = PaddedConv1d(ch // 2 ** len(rates), stft_channels, 7, pad=(3, 3))
        self.f0_predictor = F0Predictor(
            cfg.f0_in_channels, cfg.f0_cond_channels, cfg.f0_num_class, causal=False, dtype=torch.float32
        )

    @staticmethod
    def _mask(lengths: Sequence[int], size: int, like: Tensor) -> Tensor:
        """(B, 1, size) 1/0 mask of each row's first lengths[i] positions, in `like`'s dtype and device."""
        valid = torch.arange(size, device=like.device) < torch.tensor(lengths, device=like.device)[:, None]
        return valid.unsqueeze(1).to(like.dtype)

    def decode(self, mel: Tensor, source_stft: Tensor, lengths: Sequence[int] | None = None) -> Tensor:
        """Convolution stack: mel (B, 80, T) and source STFT (B, 18, 120T+1) -> iSTFT coefficients (B, 18, 120T+1).

        Both inputs are zero past each row's end; `lengths` (frames per row) masks every stage (None: all full).
        """
        lengths = [mel.shape[-1]] * len(mel) if lengths is None else lengths
        x = self.conv_pre(mel) * self._mask(lengths, mel.shape[-1], mel)
        n_kernels, scale = len(self.config.resblock_kernel_sizes), 1
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, self.config.lrelu_slope))
            scale *= self.config.upsample_rates[i]
            extra = 0
            if i == len(self.ups) - 1:
                x, extra = F.pad(x, (1, 0), mode="reflect"), 1
            mask = self._mask([t * scale + extra for t in lengths], x.shape[-1], x)
            x = x * mask
            x = x + self.source_resblocks[i](self.source_downs[i](source_stft) * mask, mask)
            blocks = self.resblocks[i * n_kernels : (i + 1) * n_kernels]
            xs = blocks[0](x, mask)
            for block in blocks[1:]:
                xs = xs + block(x, mask)
            x = xs / n_kernels
        return self.conv_post(F.leaky_relu(x)).float()

    @torch.inference_mode()
    def inference(self, mels: list[Tensor], generators: Sequence[torch.Generator | None] | None = None) -> list[Tensor]:
        """Waveforms (T_i * 480,) for mels (80, T_i); each row equals its batch-1 result.

        Row i's source noise comes from generators[i] (the reference's global generator after the LM draws);
        None, or a None entry: no noise.
        """
        cfg, up = self.config, self.config.samples_per_frame
        if not mels:
            return []
        generators = [None] * len(mels) if generators is None else list(generators)
        if len(generators) != len(mels):
            raise ValueError(f"{len(generators)} generators for {len(mels)} mels")
        lengths = [m.shape[-1] for m in mels]
        device = mels[0].device
        mel = torch.zeros(len(mels), cfg.in_channels, max(lengths), dtype=mels[0].dtype, device=device)
        window = self._window(device)
        stft_frames = [t * up // cfg.istft_hop_len + 1 for t in lengths]
        source_stft = torch.zeros(len(mels), cfg.istft_n_fft + 2, max(stft_frames), device=device)
        for i, m in enumerate(mels):
            mel[i, :, : lengths[i]] = m
            # one row at a time: the sine phase sums F0 over the whole row and magnifies its last bit, which a
            # batched conv may round differently than the reference's batch-1 conv
            f0 = self.predict_f0(m[None])[0].float()
            source_stft[i, :, : stft_frames[i]] = self._source_stft(self.m_source(f0, generators[i]), window)
        coefficients = self.decode(mel.to(self.compute_dtype), source_stft.to(self.compute_dtype), lengths)
        speech = []
        for i, t in enumerate(lengths):
            wave = self._istft(coefficients[i, :, : stft_frames[i]], window)[: t * up]
            speech.append(wave.clamp(-cfg.audio_limit, cfg.audio_limit))
        return speech
