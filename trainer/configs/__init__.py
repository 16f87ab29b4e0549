"""The config sections and DeepSpeed JSON Delphi carries (`configs/` at the repository root links here)."""
