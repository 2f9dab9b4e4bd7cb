"""The networks: one file each (Qwen2 backbone, CosyVoice3 LM, DiT flow, HiFT vocoder)."""
