"""Delphi: config-driven SFT / LoRA / QLoRA fine-tuning for open chat models."""
