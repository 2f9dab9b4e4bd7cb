"""CosyVoice2/3 speech-token language model: the network, its prefix layout, stop ids and generation bounds.

Decoding (sampling, the KV-cache slots, continuous batching) lives in `voiceclone.engine.decoding`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from voiceclone.errors import ModelError
from voiceclone.models.linear import Linear
from voiceclone.models.network import load_assigned
from voiceclone.models.qwen2 import Qwen2, Qwen2Config

OFFICIAL_QWEN_PREFIX = "llm.model.model."
OFFICIAL_LM_HEAD = "llm.model.lm_head.weight"
PREFIX_SPECIALS = 2  # the sos and task_id rows around the text in a prefix
# CosyVoice3's FSQ silent/breath speech tokens: after more than MAX_SILENT_RUN in a row, further ones are not passed to
# the flow (the reference's CosyVoice3Model; CosyVoice2 has no such rule).
SILENT_TOKENS = frozenset({1, 2, 28, 29, 55, 248, 494, 2241, 2242, 2322, 2323})
MAX_SILENT_RUN = 5


@dataclass
class LMConfig:
    """Speech-LM settings: the speech vocabulary, its special rows and the sampling recipe.

    CosyVoice3: sos and task_id are rows of the speech table, `llm_decoder` has no bias. CosyVoice2
    (`sos_task_embedding`): they are the two rows of a separate `llm_embedding` table, the decoder has a bias and
    3 extra rows (stop ids 6561-6563).
    """

    qwen: Qwen2Config = field(default_factory=Qwen2Config)
    speech_token_size: int = 6561
    extra_tokens: int = 200
    top_p: float = 0.8
    top_k: int = 25
    win_size: int = 10
    tau_r: float = 0.1
    min_token_text_ratio: float = 2.0
    max_token_text_ratio: float = 20.0
    decoder_bias: bool = False
    sos_task_embedding: bool = False

    @property
    def vocab_out(self) -> int:
        return self.speech_token_size + self.extra_tokens

    @property
    def sos(self) -> int:
        return self.speech_token_size

    @property
    def task_id(self) -> int:
        return self.speech_token_size + 2

    @property
    def first_stop_id(self) -> int:
        """Every output id from here to `vocab_out - 1` ends a generation."""
        return self.speech_token_size


def _ids(values: Sequence[int] | Tensor, device: torch.device) -> Tensor:
    return torch.as_tensor(values, dtype=torch.long).flatten().to(device)


def _official_key(name: str) -> str:
    return OFFICIAL_QWEN_PREFIX + name.removeprefix("llm.") if name.startswith("llm.") else name


class CosyVoice3LM(nn.Module):
    """Qwen2 backbone between a speech-token embedding table and a speech-token output layer (CosyVoice2 and 3)."""

    def __init__(self, config: LMConfig):
        super().__init__()
        self.config = config
        if config.sos_task_embedding:  # registered first: llm.pt's key order
            self.llm_embedding = nn.Embedding(2, config.qwen.hidden_size)
        self.llm = Qwen2(config.qwen)
        self.llm_decoder = Linear(config.qwen.hidden_size, config.vocab_out, bias=config.decoder_bias)
        self.speech_embedding = nn.Embedding(config.vocab_out, config.qwen.hidden_size)

    # ---- checkpoint layout -------------------------------------------------------------------------------------

    def load_official_state_dict(self, sd: dict[str, Tensor]) -> None:
        """Load llm.pt keys as saved (`llm.model.model.*`, `llm_decoder.*`, `speech_embedding.*`), strictly.

        The tied `llm.model.lm_head.weight` is only shape-checked: it is never computed nor kept.
        """
        load_assigned(self, self.state_dict_from_official(sd))

    def state_dict_from_official(self, sd: dict[str, Tensor]) -> dict[str, Tensor]:
        """Our state dict from llm.pt's keys, checked exactly (see `load_official_state_dict`)."""
        own = self.state_dict()
        by_official = {_official_key(name): name for name in own}
        embed_shape = own["llm.embed_tokens.weight"].shape
        for key, value in sd.items():
            if key == OFFICIAL_LM_HEAD:
                if value.shape != embed_shape:
                    raise ModelError(f"llm.pt: {key} has shape {tuple(value.shape)}, expected {tuple(embed_shape)}")
                continue
            if key not in by_official:
                raise ModelError(f"llm.pt: unexpected key {key!r}")
            expected = own[by_official[key]].shape
            if value.shape != expected:
                raise ModelError(f"llm.pt: {key} has shape {tuple(value.shape)}, expected {tuple(expected)}")
        for key in by_official:
            if key not in sd:
                raise ModelError(f"llm.pt: missing key {key!r}")
        return {name: sd[key] for key, name in by_official.items()}

    def official_state_dict(self) -> dict[str, Tensor]:
        """The llm.pt layout, with `llm.model.lm_head.weight` tied to the text embedding."""
        out: dict[str, Tensor] = {}
        backbone = False
        for name, value in self.state_dict().items():
            if backbone and not name.startswith("llm."):  # the head follows the backbone, as in llm.pt
                out[OFFICIAL_LM_HEAD] = out[OFFICIAL_QWEN_PREFIX + "embed_tokens.weight"]
            backbone = name.startswith("llm.")
            out[_official_key(name)] = value
        return out

    # ---- inputs and bounds -------------------------------------------------------------------------------------

    def generation_bounds(self, n_text_tokens: int) -> tuple[int, int]:
        """(min_len, max_len) of a generation from the number of TARGET text tokens (never the prompt text)."""
        return (
            int(n_text_tokens * self.config.min_token_text_ratio),
            int(n_text_tokens * self.config.max_token_text_ratio),
        )

    @staticmethod
    def prefix_length(n_text: int, n_prompt_text: int, n_prompt_speech: int) -> int:
        """Length of the prefix `prefix_embeds` builds from this many text, prompt-text and prompt-speech tokens."""
        return n_prompt_text + n_text + PREFIX_SPECIALS + n_prompt_speech

    @staticmethod
    def flow_tokens(tokens: list[int]) -> list[int]:
        """The tokens the flow gets (CosyVoice3's rule): silent/breath tokens after more than `MAX_SILENT_RUN` in a
        row are dropped (the LM still conditioned on them)."""
        kept, run = [], 0
        for token in tokens:
            if token in SILENT_TOKENS:
                run += 1
                if run > MAX_SILENT_RUN:
                    continue
            else:
                run = 0
            kept.append(token)
        return kept

    def prefix_embeds(
        self,
        text_ids: Sequence[int] | Tensor,
        prompt_text_ids: Sequence[int] | Tensor,
        prompt_speech_tokens: Sequence[int] | Tensor,
    ) -> Tensor:
        """(L, H): [sos, embed_tokens(prompt_text ++ text), task_id, speech_embedding(prompt_speech_tokens)]."""
        device = self.speech_embedding.weight.device
        text = torch.cat([_ids(prompt_text_ids, device), _ids(text_ids, device)])
        if self.config.sos_task_embedding:
            sos, task = self.llm_embedding.weight.unbind(0)
        else:
            sos, task = self.speech_embedding.weight[[self.config.sos, self.config.task_id]].unbind(0)
        return torch.cat(
            [
                sos[None],
                self.llm.embed_tokens(text),
                task[None],
                self.speech_embedding(_ids(prompt_speech_tokens, device)),
            ]
        )

    def teacher_forced_logits(self, prefix_embeds: Tensor, tokens: Sequence[int] | Tensor) -> Tensor:
        """float32 (T+1, vocab_out) logits of one causal pass over prefix (L, H) + tokens (T,).

        Row j predicts token j; the last row predicts the token after them.
        """
        device = prefix_embeds.device
        x = torch.cat([prefix_embeds, self.speech_embedding(_ids(tokens, device))])[None]
        length = x.shape[1]
        positions = torch.arange(length, device=device)
        causal = positions[None, :] <= positions[:, None]
        hidden = self.llm(x, positions[None], causal[None, None])
        return self.llm_decoder(hidden[0, prefix_embeds.shape[0] - 1 :]).float()
