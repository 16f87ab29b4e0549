"""The export targets, one module each; `TARGETS` is the registry `delphi export --target` reads.

Adding one is a module defining `TARGET = ExportTarget(...)` (writer, checks, card usage, what loads it) and one
line below."""
from __future__ import annotations

from trainer.export import hf, ipu
from trainer.export.target import ExportTarget

TARGETS: dict[str, ExportTarget] = {t.name: t for t in (hf.TARGET, ipu.TARGET)}
