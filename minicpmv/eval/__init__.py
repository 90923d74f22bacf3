"""Evaluation: benchmark scorers, datasets and runners, and the VLMEvalKit / lmms-eval adapters."""
