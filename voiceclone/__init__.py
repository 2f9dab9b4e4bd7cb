"""voiceclone: batch zero-shot voice cloning with CosyVoice checkpoints, in pure PyTorch."""

__version__ = "0.1.0"
