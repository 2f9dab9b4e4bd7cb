"""Shared test fixtures: where the parity fixtures live."""

from __future__ import annotations

from pathlib import Path

import pytest

from voiceclone.checkpoint import ModelConfig, read_config

REPO = Path(__file__).resolve().parents[1]
PARITY = REPO.parent / "shared" / "parity"
V3 = PARITY / "cosyvoice3-tiny"


@pytest.fixture(scope="session")
def v3_model_dir() -> Path:
    """The random-weight CosyVoice3 directory in the official layout (read-only)."""
    assert (V3 / "model" / "cosyvoice3.yaml").is_file(), f"parity fixtures missing at {V3}"
    return V3 / "model"


@pytest.fixture(scope="session")
def v3_cases() -> Path:
    """The reference outputs for the CosyVoice3 tiny model."""
    return V3 / "cases"


@pytest.fixture(scope="session")
def v3_config(v3_model_dir: Path) -> ModelConfig:
    """The tiny model's configuration, read by the real loader (every dimension from its files)."""
    return read_config(v3_model_dir)
