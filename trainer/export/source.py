"""What a training output or an export directory holds, read from its files so export needs no extra flags.

A Delphi run directory has `resolved_config.yaml` (base model, prompt format, mode) beside either the full model
or a peft adapter (`adapter_config.json`); an export directory has `delphi_export.json` and a copy of the
resolved config; `trainer.inference.load_for_inference` loads either for generation. A run (or checkpoint) is
exported only once its save completed (`trainer.checkpoints`): a run killed during its final save holds a mix of
files that would export "fine" and be wrong.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.checkpoints import check_complete
from trainer.config import RESOLVED_CONFIG, TrainConfig
from trainer.errors import ConfigError
from trainer.files import check_safetensors
from trainer.formats import ConversationFormat, build_format, detect_format, format_for
from trainer.inference import ADAPTER_CONFIG, EXPORT_RECORD, read_adapter_config, read_resolved_config
from trainer.paths import bundled

ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass(frozen=True)
class RunOutput:
    """A directory to export from."""

    path: Path
    config: TrainConfig | None  # the run's resolved config; None for a plain model directory
    kind: str  # "full", "lora" or "qlora"
    base_model: str | None  # adapters only: the base the adapter was trained on
    adapter_sha256: str | None  # adapters only: identifies the adapter, so a second merge can be refused
    export_record: dict[str, Any] | None  # set when `path` is itself an export
    trust_remote_code: bool = False  # the user's flag; never what the run recorded

    @property
    def is_adapter(self) -> bool:
        return self.kind != "full"

    def prompt_format(self, tokenizer) -> ConversationFormat:
        """The format the run was trained in; a plain model directory gets the one its tokenizer shows."""
        if self.config is not None:
            return format_for(self.config.data, tokenizer)
        return build_format(detect_format(tokenizer)[0], tokenizer)


def read_run(path: Path | str, base_model: str | None = None, trust_remote_code: bool = False) -> RunOutput:
    """Reads the run's resolved config and classifies it; `base_model` overrides where the adapter's base is."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: no such directory; expected a training output or an export directory")
    record = read_export_record(path)
    if record is None:
        check_complete(path)
    check_safetensors(path, "export source")
    config = read_resolved_config(path)
    if not (path / ADAPTER_CONFIG).is_file():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path}: neither a model (config.json) nor a peft adapter ({ADAPTER_CONFIG})")
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise ConfigError(f"{path}: has config.json but no weights (*.safetensors or *.bin)")
        return RunOutput(path, config, "full", None, None, record, trust_remote_code)
    weights = [path / w for w in ADAPTER_WEIGHTS if (path / w).is_file()]
    if not weights:
        raise ConfigError(f"{path}/{ADAPTER_CONFIG}: found, but no adapter weights ({' or '.join(ADAPTER_WEIGHTS)})")
    adapter = read_adapter_config(path)
    base = base_model or (config and config.model.model_name) or adapter.get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{path}/{RESOLVED_CONFIG}: model_name is not set and {ADAPTER_CONFIG} has no "
                          f"base_model_name_or_path; pass --base_model")
    base = bundled(base)
    kind = config.adapters.mode if config and config.adapters.mode in ("lora", "qlora") else "lora"
    return RunOutput(path, config, kind, base, file_sha256(weights[0]), record, trust_remote_code)


def read_export_record(path: Path) -> dict[str, Any] | None:
    record = path / EXPORT_RECORD
    if not record.is_file():
        return None
    try:
        return json.loads(record.read_text())
    except (ValueError, OSError) as e:
        raise ConfigError(f"{record}: not valid JSON ({e})") from None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
