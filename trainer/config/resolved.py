"""The resolved config written beside a run's outputs: plain YAML, loadable again as a section (`resolved`)."""
from __future__ import annotations

from pathlib import Path

import yaml

from trainer.config.groups import INVOCATION_KEYS, TrainConfig

RESOLVED_CONFIG = "resolved_config.yaml"


def write_resolved(config: TrainConfig, directory: Path | str) -> Path:
    """Write the resolved config (plain YAML, loadable as a section) beside a run's outputs."""
    path = Path(directory) / RESOLVED_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    values = {k: v for k, v in config.flat().items() if k not in INVOCATION_KEYS}
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.safe_dump({"resolved": values}, sort_keys=False, allow_unicode=True))
    tmp.replace(path)  # whole or absent, whenever a run is killed
    return path
