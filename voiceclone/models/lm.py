"""CosyVoice3 speech-token language model: prefix assembly, decoding, repetition-aware sampling."""

from __future__ import annotations

from dataclasses import dataclass, field

from voiceclone.models.qwen2 import Qwen2Config


@dataclass
class LMConfig:
    """CosyVoice3LM settings: the speech vocabulary, its special rows and the sampling recipe."""

    qwen: Qwen2Config = field(default_factory=Qwen2Config)
    speech_token_size: int = 6561
    extra_tokens: int = 200
    top_p: float = 0.8
    top_k: int = 25
    win_size: int = 10
    tau_r: float = 0.1
    min_token_text_ratio: float = 2.0
    max_token_text_ratio: float = 20.0

    @property
    def vocab_out(self) -> int:
        return self.speech_token_size + self.extra_tokens

    @property
    def sos(self) -> int:
        return self.speech_token_size

    @property
    def eos(self) -> int:
        return self.speech_token_size + 1

    @property
    def task_id(self) -> int:
        return self.speech_token_size + 2

    @property
    def fill(self) -> int:
        return self.speech_token_size + 3
