"""The MiniCPM-V 4.5 model: vision tower, 3D-Resampler, Qwen3 LLM, composition, weights."""
