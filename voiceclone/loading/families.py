"""The model families: what tells them apart on disk and in the engine (their networks are in `loading.config`).

Light: no torch, so the layout checks, the dry run and the engine all read the same small table."""

from __future__ import annotations

from dataclasses import dataclass

from voiceclone.errors import ModelError


@dataclass(frozen=True)
class Family:
    """One CosyVoice generation: its recipe and speech-tokenizer file names, and the per-family rules the engine
    applies around the shared LM -> flow -> vocoder pipeline."""

    name: str
    title: str
    demo: str  # the `--model` name of its random-weight demo model
    yaml: str
    speech_tokenizer: str
    system_prompt: bool  # the prompt text is prefixed with the system prompt and <|endofprompt|> (CosyVoice3)
    silent_token_rule: bool  # long runs of silent tokens are not passed to the flow (CosyVoice3)
    vocoder_noise: bool  # the vocoder draws its noise from each row's generator after the LM's draws (CosyVoice2)


COSYVOICE3 = Family(
    name="cosyvoice3",
    title="CosyVoice3",
    demo="demo",
    yaml="cosyvoice3.yaml",
    speech_tokenizer="speech_tokenizer_v3.onnx",
    system_prompt=True,
    silent_token_rule=True,
    vocoder_noise=False,
)
COSYVOICE2 = Family(
    name="cosyvoice2",
    title="CosyVoice2",
    demo="demo-v2",
    yaml="cosyvoice2.yaml",
    speech_tokenizer="speech_tokenizer_v2.onnx",
    system_prompt=False,
    silent_token_rule=False,
    vocoder_noise=True,
)
FAMILIES = {family.name: family for family in (COSYVOICE3, COSYVOICE2)}


def family(name: str) -> Family:
    """The family called `name`; an unknown name raises ModelError."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise ModelError(f"unknown model family {name!r} (known: {', '.join(FAMILIES)})") from None


def demo_family(model: object) -> Family | None:
    """The family whose demo model `model` (a `--model` value) names, or None."""
    return next((f for f in FAMILIES.values() if str(model) == f.demo), None)
