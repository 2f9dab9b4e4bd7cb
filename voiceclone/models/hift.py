"""Causal HiFT vocoder (CosyVoice3): float64 F0 predictor, harmonic source, iSTFT head."""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from voiceclone.errors import ModelError
from voiceclone.models.flow import FlowConfig
from voiceclone.models.hift_layers import (
    F0_LOOK_AHEAD,
    F0Predictor,
    PaddedConv1d,
    ResBlock,
    UpsampleConv1d,
    fold_weight_norm,
)
from voiceclone.models.network import PinnedDtype, load_assigned

FLOW_NOISE_CHANNELS = 80  # the reference draws the flow's fixed noise as randn(1, 80, frames)


@dataclass
class HiFTConfig:
    """CausalHiFTGenerator settings from the yaml `hift:` block."""

    in_channels: int = 80
    base_channels: int = 512
    nb_harmonics: int = 8
    sampling_rate: int = 24000
    nsf_alpha: float = 0.1
    nsf_sigma: float = 0.003
    nsf_voiced_threshold: float = 10.0
    upsample_rates: tuple[int, ...] = (8, 5, 3)
    upsample_kernel_sizes: tuple[int, ...] = (16, 11, 7)
    istft_n_fft: int = 16
    istft_hop_len: int = 4
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    source_resblock_kernel_sizes: tuple[int, ...] = (7, 7, 11)
    source_resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    lrelu_slope: float = 0.1
    audio_limit: float = 0.99
    conv_pre_look_right: int = 4
    f0_num_class: int = 1
    f0_in_channels: int = 80
    f0_cond_channels: int = 512
    noise_samples: int = 7_200_000

    @property
    def samples_per_frame(self) -> int:
        """Output samples per mel frame: prod(upsample_rates) * istft hop (480)."""
        return math.prod(self.upsample_rates) * self.istft_hop_len


# ---------------------------------------------------------------------------------------------------------------------
# The construction-time noise table


def _consume_uniform(generator: torch.Generator, *shapes: tuple[int, ...]) -> None:
    """Advance `generator` as uniform default inits of tensors of these shapes do (one 32-bit draw per element)."""
    for shape in shapes:
        torch.empty(shape, device="cpu").uniform_(generator=generator)


def _generator_at_hift_tables(config: HiFTConfig, flow: FlowConfig) -> torch.Generator:
    """A CPU generator in the state the reference's global one has when SineGen2 draws `rand_ini`.

    The reference seeds 0 in the flow's CFM constructor, draws the flow noise, then default-initialises the flow's
    token embedding and speaker projection and the F0 predictor (weight-normed convs, then the classifier).
    """
    g = torch.Generator(device="cpu").manual_seed(0)
    torch.randn(1, FLOW_NOISE_CHANNELS, flow.noise_frames, generator=g, device="cpu")
    torch.empty(flow.vocab_size, flow.input_size, device="cpu").normal_(generator=g)
    _consume_uniform(g, (flow.output_size, flow.spk_embed_dim), (flow.output_size,))
    cond = config.f0_cond_channels
    _consume_uniform(g, (cond, config.f0_in_channels, F0_LOOK_AHEAD + 1), (cond,))
    for _ in range(4):
        _consume_uniform(g, (cond, cond, 3), (cond,))
    _consume_uniform(g, (config.f0_num_class, cond), (config.f0_num_class,))
    return g


class SineNoiseTable:
    """The fixed `sine_waves` table, drawn lazily: rows are appended in draw order the first time they are needed.

    CPU uniform draws are serial, so any prefix equals the same rows of the full reference table; memory grows with
    the longest utterance seen (36 bytes per sample) instead of 259 MB up front.
    """

    def __init__(self, config: HiFTConfig, flow: FlowConfig):
        self.limit = config.noise_samples
        self._generator = _generator_at_hift_tables(config, flow)
        torch.rand(config.nb_harmonics + 1, generator=self._generator, device="cpu")  # rand_ini
        self._rows = torch.empty(0, config.nb_harmonics + 1, device="cpu")  # even under a meta device context
        self._lock = threading.Lock()

    def head(self, n: int) -> Tensor:
        """The first `n` rows (n, H) as float32 on the CPU."""
        if n > self.limit:
            raise ModelError(f"HiFT noise table covers {self.limit} samples; an utterance needs {n} (split the text)")
        with self._lock:
            have = self._rows.shape[0]
            if n > have:
                rows = torch.empty(min(self.limit, max(n, 2 * have)), self._rows.shape[1], device="cpu")
                rows[:have] = self._rows
                rows[have:].uniform_(generator=self._generator)
                self._rows = rows
            return self._rows[:n]


_noise_tables: dict[tuple, SineNoiseTable] = {}
_noise_tables_lock = threading.Lock()


def sine_noise_table(config: HiFTConfig, flow: FlowConfig) -> SineNoiseTable:
    """The process-wide table for these configs (shared by every HiFT whose RNG-relevant dims match)."""
    key = (
        config.nb_harmonics,
        config.noise_samples,
        config.f0_num_class,
        config.f0_in_channels,
        config.f0_cond_channels,
        flow.vocab_size,
        flow.input_size,
        flow.spk_embed_dim,
        flow.output_size,
        flow.noise_frames,
    )
    with _noise_tables_lock:
        if key not in _noise_tables:
            _noise_tables[key] = SineNoiseTable(config, flow)
        return _noise_tables[key]


class HarmonicSource(PinnedDtype):
    """SourceModuleHnNSF with the causal SineGen2: harmonic sines from frame-rate F0 plus fixed noise, tanh(Linear).

    Float32 whatever the vocoder's dtype, as in the reference. The noise table is drawn on first use
    (`sine_noise_table(config, flow)`)."""

    def __init__(self, config: HiFTConfig, flow: FlowConfig):
        super().__init__()
        self.config, self.flow = config, flow
        self.l_linear = nn.Linear(config.nb_harmonics + 1, 1)

    def forward(self, f0: Tensor) -> Tensor:
        """F0 per frame (B, T) float32 -> excitation (B, T * samples_per_frame) float32.

        The reference upsamples F0 to samples, downsamples the per-sample phase increments linearly (reading two
        samples of the same frame) and upsamples the phase back with nearest, so the sines are constant within a frame
        and are computed here per frame; the sample-rate noise goes through the (linear) merge layer once per call.
        """
        cfg, up = self.config, self.config.samples_per_frame
        harmonics = torch.arange(1, cfg.nb_harmonics + 2, dtype=f0.dtype, device=f0.device)
        rad = (f0[..., None] * harmonics / cfg.sampling_rate) % 1
        phase = torch.cumsum(rad, dim=1) * 2 * math.pi * up
        sines = torch.sin(phase) * cfg.nsf_alpha
        uv = (f0 > cfg.nsf_voiced_threshold).to(f0.dtype)
        noise_amp = uv * cfg.nsf_sigma + (1 - uv) * cfg.nsf_alpha / 3
        w, b = self.l_linear.weight, self.l_linear.bias
        harmonic = F.linear(sines * uv[..., None], w).squeeze(-1)
        n_samples = f0.shape[1] * up
        noise = F.linear(sine_noise_table(cfg, self.flow).head(n_samples), w.cpu()).squeeze(-1).to(f0.device)
        merged = harmonic.repeat_interleave(up, dim=1) + noise_amp.repeat_interleave(up, dim=1) * noise
        return torch.tanh(merged + b)


# ---------------------------------------------------------------------------------------------------------------------
# The vocoder


class HiFT(nn.Module):
    """CosyVoice3 CausalHiFTGenerator: mel (80 x T) -> 24 kHz waveform (T * 480 samples).

    `.to(dtype)` sets the dtype of the convolution stack (float32, bfloat16 or float16); the F0 predictor stays
    float64 and the source, STFT and iSTFT run in float32, as in the reference. `flow` is the flow's config: its
    dimensions decide where the reference's generator stands when it draws the noise table of the source
    (`HarmonicSource`); a subclass with another source (HiFT2) needs none.
    """

    def __init__(self, config: HiFTConfig, flow: FlowConfig | None = None):
        super().__init__()
        self.config, self.flow = config, flow
        with torch.device("meta"):  # no default init (no global RNG draw): every weight comes from a checkpoint
            self._build(config)
        self.to_empty(device=torch.get_default_device())  # stays on meta when built under torch.device("meta")
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.fill_(1.0 if name.endswith(".alpha") else 0.0)
        self.requires_grad_(False)

    def _build(self, cfg: HiFTConfig) -> None:
        ch, rates = cfg.base_channels, cfg.upsample_rates
        stft_channels = cfg.istft_n_fft + 2
        if self.flow is None:
            raise ValueError("the CosyVoice3 HiFT needs the flow's config (its noise table depends on it)")
        self.m_source = HarmonicSource(cfg, self.flow)
        look_right = cfg.conv_pre_look_right
        self.conv_pre = PaddedConv1d(cfg.in_channels, ch, look_right + 1, pad=(0, look_right))
        self.ups = nn.ModuleList(
            UpsampleConv1d(ch // 2**i, ch // 2 ** (i + 1), k, u)
            for i, (u, k) in enumerate(zip(rates, cfg.upsample_kernel_sizes, strict=True))
        )
        self.source_downs = nn.ModuleList()
        self.source_resblocks = nn.ModuleList()
        for i, (k, d) in enumerate(
            zip(cfg.source_resblock_kernel_sizes, cfg.source_resblock_dilation_sizes, strict=True)
        ):
            stride = math.prod(rates[i + 1 :])  # STFT frame rate -> rate after upsample stage i
            kernel = 2 * stride if stride > 1 else 1
            down = PaddedConv1d(
                stft_channels, ch // 2 ** (i + 1), kernel, pad=(stride - 1, 0), stride=stride, weight_normed=False
            )
            self.source_downs.append(down)
            self.source_resblocks.append(ResBlock(ch // 2 ** (i + 1), k, d))
        self.resblocks = nn.ModuleList(
            ResBlock(ch // 2 ** (i + 1), k, d)
            for i in range(len(rates))
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True)
        )
        self.conv_post = PaddedConv1d(ch // 2 ** len(rates), stft_channels, 7, pad=(6, 0))
        self.f0_predictor = F0Predictor(cfg.f0_in_channels, cfg.f0_cond_channels, cfg.f0_num_class)

    # -- checkpoint keys ------------------------------------------------------------------------------------------

    def _official_layout(self) -> dict[str, tuple[str, str]]:
        """hift.pt key -> (our parameter name, role): role "g"/"v" for weight-norm halves, "tensor" otherwise."""
        layout = {}
        for module_name, module in self.named_modules():
            prefix = f"{module_name}." if module_name else ""
            if getattr(module, "weight_normed", False):
                layout[f"{prefix}bias"] = (f"{prefix}bias", "tensor")
                layout[f"{prefix}parametrizations.weight.original0"] = (f"{prefix}weight", "g")
                layout[f"{prefix}parametrizations.weight.original1"] = (f"{prefix}weight", "v")
            else:
                layout.update(
                    {prefix + leaf: (prefix + leaf, "tensor") for leaf, _ in module.named_parameters(recurse=False)}
                )
        return layout

    def official_state_dict(self) -> dict[str, Tensor]:
        """Float32 CPU tensors keyed as hift.pt in the parametrizations form (g = ||w|| per output channel, v = w)."""
        params = dict(self.named_parameters())
        out = {}
        for key, (name, role) in self._official_layout().items():
            p = params[name].detach().to("cpu", torch.float32)
            if role == "g":
                out[key] = p.double().flatten(1).norm(dim=1).float().view(-1, *([1] * (p.dim() - 1)))
            else:
                out[key] = p.clone()
        return out

    def load_official_state_dict(self, sd: dict[str, Tensor]) -> None:
        """Load hift.pt tensors (either weight-norm form, optional `generator.` prefix), folding weight norm; strict."""
        load_assigned(self, self.state_dict_from_official(sd))

    def state_dict_from_official(self, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """Our state dict from hift.pt's tensors, checked, weight norm folded (see `load_official_state_dict`)."""
        legacy = {".weight_g": ".parametrizations.weight.original0", ".weight_v": ".parametrizations.weight.original1"}
        tensors, origin = {}, {}
        for file_key, value in sd.items():
            key = file_key.removeprefix("generator.")
            for old, new in legacy.items():
                if key.endswith(old):
                    key = key[: -len(old)] + new
            tensors[key], origin[key] = value, file_key
        layout = self._official_layout()
        params = dict(self.named_parameters())
        for key, value in tensors.items():
            if key not in layout:
                raise ModelError(f"hift.pt: unexpected key {origin[key]}")
            name, role = layout[key]
            shape = params[name].shape
            expected = (shape[0],) + (1,) * (len(shape) - 1) if role == "g" else tuple(shape)
            if tuple(value.shape) != expected:
                raise ModelError(f"hift.pt: {origin[key]} has shape {list(value.shape)}, expected {list(expected)}")
        for key in layout:
            if key not in tensors:
                raise ModelError(f"hift.pt: missing key {key}")
        own = {}
        for key, (name, role) in layout.items():
            if role == "g":
                v = tensors[key.replace("original0", "original1")]
                own[name] = fold_weight_norm(tensors[key], v, params[name].dtype)
            elif role == "tensor":
                own[name] = tensors[key]
        return own

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the convolution stack."""
        return self.conv_pre.weight.dtype

    # -- inference ------------------------------------------------------------------------------------------------

    def predict_f0(self, mel: Tensor) -> Tensor:
        """F0 in Hz (B, T) float64 from mels (B, 80, T); frames past a row's end must be zero (the look-ahead)."""
        return self.f0_predictor(mel)

    def excitation(self, f0: Tensor) -> Tensor:
        """The harmonic-plus-noise source (B, T * 480) float32 from F0 per frame (B, T)."""
        return self.m_source(f0.float())

    def _window(self, device: torch.device) -> Tensor:
        return torch.hann_window(self.config.istft_n_fft, periodic=True, dtype=torch.float64).float().to(device)

    def _source_stft(self, source: Tensor, window: Tensor) -> Tensor:
        """Real and imaginary STFT parts (18, frames) of one row's excitation, reflect-padded at both ends."""
        n_fft, hop = self.config.istft_n_fft, self.config.istft_hop_len
        spec = torch.stft(source, n_fft, hop, n_fft, window=window, center=True, return_complex=True)
        return torch.cat([spec.real, spec.imag], dim=0)

    def decode(self, mel: Tensor, source_stft: Tensor) -> Tensor:
        """Convolution stack: mel (B, 80, T) and source STFT (B, 18, 120T+1) -> iSTFT coefficients (B, 18, 120T+1)."""
        x = self.conv_pre(mel)
        n_kernels = len(self.config.resblock_kernel_sizes)
        for i, up in enumerate(self.ups):
            x = up(F.leaky_relu(x, self.config.lrelu_slope))
            if i == len(self.ups) - 1:
                x = F.pad(x, (1, 0), mode="reflect")
            x = x + self.source_resblocks[i](self.source_downs[i](source_stft))
            blocks = self.resblocks[i * n_kernels : (i + 1) * n_kernels]
            xs = blocks[0](x)
            for block in blocks[1:]:
                xs = xs + block(x)
            x = xs / n_kernels
        return self.conv_post(F.leaky_relu(x)).float()

    def _istft(self, coefficients: Tensor, window: Tensor) -> Tensor:
        """One row's (18, frames) coefficients -> waveform: exp magnitude (max 100), sin phase, inverse STFT."""
        n_fft, hop = self.config.istft_n_fft, self.config.istft_hop_len
        bins = n_fft // 2 + 1
        magnitude = torch.exp(coefficients[:bins]).clip(max=1e2)
        phase = torch.sin(coefficients[bins:])
        spec = torch.complex(magnitude * torch.cos(phase), magnitude * torch.sin(phase))
        return torch.istft(spec, n_fft, hop, n_fft, window=window, center=True)

    @torch.inference_mode()
    def inference(self, mels: list[Tensor], finalize: bool = True) -> list[Tensor]:
        """Waveforms (T_i * 480,) for mels (80, T_i); each row equals its batch-1 result.

        Rows are zero-padded to the longest, which is exactly the right context the causal stack sees at the end of a
        row; the STFT and iSTFT, whose reflect padding and window normalisation depend on the row end, run per row.
        With `finalize=False` (a streaming chunk) the samples that still depend on future frames are dropped:
        (T_i - 8) * 480 samples remain (3 frames of F0 look-ahead, 4 of `conv_pre`, one trailing frame).
        """
        cfg, up = self.config, self.config.samples_per_frame
        if not mels:
            return []
        lengths = [m.shape[-1] for m in mels]
        lost_frames = 0 if finalize else F0_LOOK_AHEAD + cfg.conv_pre_look_right + 1
        if min(lengths) <= lost_frames:
            raise ValueError(f"HiFT needs mels longer than {lost_frames} frames here, got {min(lengths)}")
        device = mels[0].device
        mel = torch.zeros(len(mels), cfg.in_channels, max(lengths), dtype=mels[0].dtype, device=device)
        for i, m in enumerate(mels):
            mel[i, :, : lengths[i]] = m
        source = self.excitation(self.predict_f0(mel))
        window = self._window(device)
        stft_frames = [t * up // cfg.istft_hop_len + 1 for t in lengths]
        source_stft = torch.zeros(len(mels), cfg.istft_n_fft + 2, max(stft_frames), device=device)
        for i, t in enumerate(lengths):
            source_stft[i, :, : stft_frames[i]] = self._source_stft(source[i, : t * up], window)
        coefficients = self.decode(mel.to(self.compute_dtype), source_stft.to(self.compute_dtype))
        speech = []
        for i, t in enumerate(lengths):
            wave = self._istft(coefficients[i, :, : stft_frames[i]], window)[: (t - lost_frames) * up]
            speech.append(wave.clamp(-cfg.audio_limit, cfg.audio_limit))
        return speech
