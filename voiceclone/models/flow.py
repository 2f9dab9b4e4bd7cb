"""CosyVoice3 token-to-mel flow: pre-lookahead conv, x2 repeat, conditional flow matching with a DiT."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from voiceclone.errors import ModelError
from voiceclone.models.dit import DiT, DiTConfig
from voiceclone.models.network import PinnedDtype, load_assigned

NOISE_SEED = 0
ESTIMATOR_PREFIX = "decoder.estimator."


@dataclass
class FlowConfig:
    """CausalMaskedDiffWithDiT settings from the yaml `flow:` block."""

    vocab_size: int = 6561
    input_size: int = 80
    output_size: int = 80
    spk_embed_dim: int = 192
    token_mel_ratio: int = 2
    pre_lookahead_len: int = 3
    pre_lookahead_channels: int = 1024
    n_timesteps: int = 10
    inference_cfg_rate: float = 0.7
    t_scheduler: str = "cosine"
    noise_frames: int = 15000
    dit: DiTConfig = field(default_factory=DiTConfig)


@functools.cache
def fixed_noise(channels: int, frames: int) -> torch.Tensor:
    """The reference's `rand_noise` (1, channels, frames): the first normal draw after seeding 0; built once."""
    generator = torch.Generator().manual_seed(NOISE_SEED)
    return torch.randn(1, channels, frames, generator=generator, device="cpu")  # even under a meta device context


class FixedNoise(PinnedDtype):
    """The solver's starting noise `table` (1, channels, frames), float32 whatever dtype the flow runs in."""

    def __init__(self, channels: int, frames: int):
        super().__init__()
        self.register_buffer("table", fixed_noise(channels, frames), persistent=False)


def euler_times(n_timesteps: int, t_scheduler: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Euler times and step sizes (n_timesteps,), float32 on the CPU; t accumulates as the reference's does."""
    t_span = torch.linspace(0, 1, n_timesteps + 1, dtype=torch.float32)
    if t_scheduler == "cosine":
        t_span = 1 - torch.cos(t_span * 0.5 * math.pi)
    times, steps = [], []
    t, dt = t_span[0], t_span[1] - t_span[0]
    for step in range(1, n_timesteps + 1):
        times.append(t)
        steps.append(dt)
        t = t + dt
        if step < n_timesteps:
            dt = t_span[step + 1] - t
    return torch.stack(times), torch.stack(steps)


def guided_euler(
    velocity: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, steps: torch.Tensor, cfg_rate: float
) -> torch.Tensor:
    """Integrate from the noise `x` with classifier-free guidance; float32 throughout (the CosyVoice2/3 CFM).

    `velocity(x, step)` returns the estimator's output for the doubled batch: the conditioned rows, then the same
    rows with mu, speaker and prompt conditions zeroed; each step moves x by (1 + cfg) v_cond - cfg v_uncond.
    """
    for step in range(len(steps)):
        v_cond, v_uncond = velocity(x, step).float().chunk(2)
        x = x + steps[step] * ((1.0 + cfg_rate) * v_cond - cfg_rate * v_uncond)
    return x


def check_keys(file: str, expected: dict[str, torch.Size], sd: dict[str, torch.Tensor]) -> None:
    """Strict key check of a checkpoint: `ModelError` names the first missing, unexpected or mis-shaped key."""
    for name in expected:
        if name not in sd:
            raise ModelError(f"{file}: missing key {name!r}")
    for name in sd:
        if name not in expected:
            raise ModelError(f"{file}: unexpected key {name!r}")
    for name, shape in expected.items():
        if sd[name].shape != shape:
            raise ModelError(f"{file}: key {name!r} has shape {tuple(sd[name].shape)}, expected {tuple(shape)}")


class PreLookaheadLayer(nn.Module):
    """Conv over each token and its `lookahead` right neighbours, then a causal conv, with a residual."""

    def __init__(self, channels_in: int, channels: int, lookahead: int):
        super().__init__()
        self.lookahead = lookahead
        self.conv1 = nn.Conv1d(channels_in, channels, lookahead + 1)
        self.conv2 = nn.Conv1d(channels, channels_in, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C); the lookahead past the end sees zeros."""
        h = F.pad(x.transpose(1, 2), (0, self.lookahead))
        h = F.leaky_relu(self.conv1(h), 0.01)
        h = self.conv2(F.pad(h, (self.conv2.kernel_size[0] - 1, 0)))
        return x + h.transpose(1, 2)


class FlowCheckpoint(nn.Module):
    """flow.pt's key layout, shared by the CosyVoice2 and 3 flows: the `estimator`'s keys (in its own official names)
    under `decoder.estimator.`, every other key as is."""

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The state dict under flow.pt's key names."""
        official = {name: tensor for name, tensor in self.state_dict().items() if not name.startswith("estimator.")}
        for name, tensor in self.estimator.official_state_dict().items():
            official[ESTIMATOR_PREFIX + name] = tensor
        return official

    def load_official_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load flow.pt's keys exactly (strict); `ModelError` names the first missing/unexpected/mis-shaped key."""
        load_assigned(self, self.state_dict_from_official(sd))

    def state_dict_from_official(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Our state dict from flow.pt's keys, checked exactly (see `load_official_state_dict`)."""
        expected = {name: tensor.shape for name, tensor in self.official_state_dict().items()}
        check_keys("flow.pt", expected, sd)
        own = {name: sd[name] for name in expected if not name.startswith(ESTIMATOR_PREFIX)}
        estimator = {n[len(ESTIMATOR_PREFIX) :]: t for n, t in sd.items() if n.startswith(ESTIMATOR_PREFIX)}
        for name, tensor in self.estimator.state_dict_from_official(estimator).items():
            own["estimator." + name] = tensor
        return own


class Flow(FlowCheckpoint):
    """CausalMaskedDiffWithDiT: speech tokens + prompt mel + speaker embedding -> 80-band log-mel."""

    def __init__(self, config: FlowConfig):
        super().__init__()
        self.config = config
        self.input_embedding = nn.Embedding(config.vocab_size, config.input_size)
        self.spk_embed_affine_layer = nn.Linear(config.spk_embed_dim, config.output_size)
        self.pre_lookahead_layer = PreLookaheadLayer(
            config.input_size, config.pre_lookahead_channels, config.pre_lookahead_len
        )
        self.estimator = DiT(config.dit)
        self.noise = FixedNoise(config.output_size, config.noise_frames)

    @torch.inference_mode()
    def inference(
        self,
        tokens: list[torch.Tensor],
        prompt_tokens: list[torch.Tensor],
        prompt_feats: list[torch.Tensor],
        embeddings: torch.Tensor,
        streaming: bool = False,
        finalize: bool = True,
    ) -> list[torch.Tensor]:
        """Mel (80, ratio * len(tokens_i)) float32 per row, prompt part removed; rows are padded and masked.

        `streaming` uses the DiT chunk attention mask; `finalize=False` keeps each row's last
        `pre_lookahead_len` tokens as lookahead context only (ratio * (len(tokens_i) - lookahead) frames).
        """
        ratio, lookahead = self.config.token_mel_ratio, self.config.pre_lookahead_len
        weight = self.input_embedding.weight
        device, dtype = weight.device, weight.dtype
        for i, (p, t, feat) in enumerate(zip(prompt_tokens, tokens, prompt_feats, strict=True)):
            if feat.shape[0] != ratio * len(p):
                raise ValueError(f"row {i}: prompt mel has {feat.shape[0]} frames, expected {ratio * len(p)}")
            if not finalize and len(t) <= lookahead:
                raise ValueError(f"row {i}: {len(t)} tokens leave none beside the {lookahead} lookahead tokens")
        rows = [torch.cat((p, t)).to(device, torch.long) for p, t in zip(prompt_tokens, tokens, strict=True)]
        lens = torch.tensor([len(r) for r in rows], device=device)
        ids = nn.utils.rnn.pad_sequence(rows, batch_first=True).clamp(min=0)
        token_mask = torch.arange(ids.shape[1], device=device) < lens.unsqueeze(1)
        x = self.input_embedding(ids) * token_mask.unsqueeze(-1)  # zeros past each row's end, as at batch 1
        if not finalize:  # each row's last tokens served only as lookahead context
            lens = lens - lookahead
        kept = [len(r) - (0 if finalize else lookahead) for r in rows]
        frames = ratio * max(kept)
        if frames > self.config.noise_frames:
            raise ValueError(f"{frames} mel frames exceed the fixed noise table ({self.config.noise_frames})")
        mu = self.pre_lookahead_layer(x)[:, : max(kept)].repeat_interleave(ratio, dim=1)
        cond = torch.zeros(len(rows), frames, self.config.output_size, dtype=dtype, device=device)
        for i, feat in enumerate(prompt_feats):
            cond[i, : feat.shape[0]] = feat.to(device, dtype)
        mask = torch.arange(frames, device=device) < ratio * lens.unsqueeze(1)
        spks = self.spk_embed_affine_layer(F.normalize(embeddings.to(device).float(), dim=1).to(dtype))

        ragged = min(kept) < max(kept)  # from the host's lengths: no device sync, no value read
        mel = self.solve(mu, mask if ragged else None, spks, cond, streaming)
        return [
            mel[i, ratio * len(p) : ratio * n].T.contiguous()
            for i, (p, n) in enumerate(zip(prompt_tokens, kept, strict=True))
        ]

    def solve(
        self,
        mu: torch.Tensor,
        mask: torch.Tensor | None,
        spks: torch.Tensor,
        cond: torch.Tensor,
        streaming: bool = False,
    ) -> torch.Tensor:
        """Euler solver from the fixed noise with classifier-free guidance; returns x(1) (B, T, 80) float32."""
        batch, frames, _ = mu.shape
        cfg = self.config
        dtype = mu.dtype
        noise = self.noise.table[0, :, :frames].T.expand(batch, -1, -1)
        times, steps = euler_times(cfg.n_timesteps, cfg.t_scheduler)
        modulations = self.estimator.modulations(times.to(mu.device))
        mu_in = torch.cat((mu, torch.zeros_like(mu)))
        spks_in = torch.cat((spks, torch.zeros_like(spks)))
        cond_in = torch.cat((cond, torch.zeros_like(cond)))
        mask_in = None if mask is None else torch.cat((mask, mask))

        def velocity(x: torch.Tensor, step: int) -> torch.Tensor:
            modulation = [m[step] for m in modulations]
            return self.estimator(x.to(dtype).repeat(2, 1, 1), mask_in, mu_in, modulation, spks_in, cond_in, streaming)

        return guided_euler(velocity, noise, steps.to(mu.device), cfg.inference_cfg_rate)
