"""CosyVoice2 token-to-mel flow: token embedding, upsampling conformer encoder, CFM with the causal U-Net."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from voiceclone.models.conformer import ConformerConfig, UpsampleConformerEncoder
from voiceclone.models.flow import FixedNoise, FlowCheckpoint, euler_times, guided_euler
from voiceclone.models.unet import CausalUNet, UNetConfig


@dataclass
class Flow2Config:
    """CausalMaskedDiffWithXvec settings from the yaml `flow:` block."""

    vocab_size: int = 6561
    input_size: int = 512
    output_size: int = 80
    spk_embed_dim: int = 192
    token_mel_ratio: int = 2
    pre_lookahead_len: int = 3
    n_timesteps: int = 10
    inference_cfg_rate: float = 0.7
    t_scheduler: str = "cosine"
    noise_frames: int = 15000
    encoder: ConformerConfig = field(default_factory=ConformerConfig)
    estimator: UNetConfig = field(default_factory=UNetConfig)


class Flow2(FlowCheckpoint):
    """CausalMaskedDiffWithXvec: speech tokens + prompt mel + speaker embedding -> 80-band log-mel."""

    def __init__(self, config: Flow2Config):
        super().__init__()
        self.config = config
        self.input_embedding = nn.Embedding(config.vocab_size, config.input_size)
        self.spk_embed_affine_layer = nn.Linear(config.spk_embed_dim, config.output_size)
        self.encoder = UpsampleConformerEncoder(config.encoder)
        self.encoder_proj = nn.Linear(config.encoder.output_size, config.output_size)
        self.estimator = CausalUNet(config.estimator)
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

        `streaming` uses the encoder's and the estimator's chunk attention masks; `finalize=False` keeps each row's
        last `pre_lookahead_len` tokens as lookahead context only (ratio * (len(tokens_i) - lookahead) frames).
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
        kept = lens - (0 if finalize else lookahead)
        frames = ratio * int(kept.max())
        if frames > self.config.noise_frames:
            raise ValueError(f"{frames} mel frames exceed the fixed noise table ({self.config.noise_frames})")
        ids = nn.utils.rnn.pad_sequence(rows, batch_first=True).clamp(min=0)
        token_mask = torch.arange(ids.shape[1], device=device) < lens.unsqueeze(1)
        x = self.input_embedding(ids) * token_mask.unsqueeze(-1)
        mu = self.encoder_proj(self.encoder(x, lens, kept, streaming)).transpose(1, 2)
        cond = torch.zeros(len(rows), self.config.output_size, frames, dtype=dtype, device=device)
        for i, feat in enumerate(prompt_feats):
            cond[i, :, : feat.shape[0]] = feat.to(device, dtype).T
        mask = torch.arange(frames, device=device) < ratio * kept.unsqueeze(1)
        spks = self.spk_embed_affine_layer(F.normalize(embeddings.to(device).float(), dim=1).to(dtype))

        mel = self.solve(mu, mask, spks, cond, streaming)
        kept_frames = (ratio * kept).tolist()
        return [mel[i, :, ratio * len(p) : kept_frames[i]].contiguous() for i, p in enumerate(prompt_tokens)]

    def solve(
        self, mu: torch.Tensor, mask: torch.Tensor, spks: torch.Tensor, cond: torch.Tensor, streaming: bool = False
    ) -> torch.Tensor:
        """Euler solver from the fixed noise with classifier-free guidance; returns x(1) (B, 80, T) float32."""
        batch, _, frames = mu.shape
        cfg = self.config
        noise = self.noise.table[:, :, :frames].expand(batch, -1, -1)
        times, steps = euler_times(cfg.n_timesteps, cfg.t_scheduler)
        times = times.to(mu.device)
        mu_in = torch.cat((mu, torch.zeros_like(mu)))
        spks_in = torch.cat((spks, torch.zeros_like(spks)))
        cond_in = torch.cat((cond, torch.zeros_like(cond)))
        mask_in = torch.cat((mask, mask))

        def velocity(x: torch.Tensor, step: int) -> torch.Tensor:
            x_in = x.to(mu.dtype).repeat(2, 1, 1)
            return self.estimator(x_in, mask_in, mu_in, times[step], spks_in, cond_in, streaming)

        return guided_euler(velocity, noise, steps.to(mu.device), cfg.inference_cfg_rate)
