"""How a run is spread over its ranks, and the combinations that cannot work, refused before anything loads.

One of: plain data parallel (DDP, or a single process), DeepSpeed ZeRO (`deepspeed: true` with a JSON, or one of
the ones Delphi carries by name: zero2, zero3, zero3_offload), or torch FSDP2 (`fsdp: full_shard`) through the
Trainer's accelerate integration. Delphi only chooses and configures the engine; the launchers start the ranks.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError
from trainer.paths import CONFIG_DIR, bundled

# The DeepSpeed JSONs Delphi carries, by the name `deepspeed_config` may give instead of a path.
DEEPSPEED_CONFIGS = {"zero2": "zero2.json", "zero3": "zero3.json", "zero3_offload": "zero3_offload.json"}
# fsdp values -> FSDP2's reshard_after_forward: full_shard frees each layer's gathered weights after its forward
# pass (ZeRO-3's memory), shard_grad_op keeps them until the backward pass (ZeRO-2's, fewer all-gathers).
FSDP_SHARDING = {"full_shard": True, "shard_grad_op": False}
# `optim` values -> the Trainer's optimizer names; None: the default (torch's fused AdamW, or QLoRA's paged one).
OPTIMIZERS = {"adamw_torch": None, "adamw_8bit": "adamw_bnb_8bit", "paged_adamw_8bit": "paged_adamw_8bit",
              "paged_adamw_32bit": "paged_adamw_32bit"}
# 4-bit weights sharded across ranks need bitsandbytes' `quant_storage` (the packed weights stored in the compute
# dtype, so that FSDP and ZeRO-3 can flatten them with the rest) and the loaders that pass it on.
QLORA_SHARDED_MINIMUM = {"bitsandbytes": "0.43.0", "transformers": "4.39.0", "accelerate": "0.28.0",
                         "peft": "0.10.0"}


@dataclass(frozen=True)
class Strategy:
    name: str  # ddp, zero1, zero2, zero3, zero3_offload or fsdp
    deepspeed_json: Path | None = None
    deepspeed_settings: Any = None  # the JSON, read
    fsdp: str | None = None  # full_shard or shard_grad_op

    @classmethod
    def of(cls, optim) -> Strategy:
        """From the config's optimisation group (`deepspeed`, `deepspeed_config`, `fsdp`)."""
        if optim.fsdp:
            return cls("fsdp", fsdp=optim.fsdp)
        if not optim.deepspeed:
            return cls("ddp")
        path = deepspeed_json(optim.deepspeed_config)
        settings = _read_json(path)
        zero = settings.get("zero_optimization") or {}
        stage = int(zero.get("stage", 0))
        offloaded = any((zero.get(k) or {}).get("device", "none") != "none"
                        for k in ("offload_param", "offload_optimizer"))
        name = "zero3_offload" if stage == 3 and offloaded else f"zero{max(stage, 1)}"
        return cls(name, path, settings)

    @property
    def deepspeed(self) -> bool:
        return self.deepspeed_json is not None

    @property
    def shards_weights(self) -> bool:
        """No rank holds the whole model: ZeRO-3 and FSDP."""
        return self.name in ("zero3", "zero3_offload", "fsdp")

    def training_arguments(self, layer_class: str) -> dict[str, Any]:
        """The Trainer's `deepspeed`, `fsdp` and `fsdp_config` arguments; `layer_class` is the transformer layer
        FSDP wraps as one unit (from the architecture's entry)."""
        if self.fsdp:
            return {"fsdp": True, "fsdp_config": {
                "version": 2, "transformer_layer_cls_to_wrap": [layer_class],
                "reshard_after_forward": FSDP_SHARDING[self.fsdp],
                "state_dict_type": "SHARDED_STATE_DICT",  # each rank saves its shard; resumes need the same ranks
            }}
        return {"deepspeed": str(self.deepspeed_json) if self.deepspeed else None}

    def describe(self) -> str:
        if self.fsdp:
            return f"FSDP2 {self.fsdp}"
        if self.deepspeed:
            return f"DeepSpeed {self.name} ({self.deepspeed_json})"
        return "data parallel (each rank holds the whole model)"


def deepspeed_json(value: str) -> Path:
    """`deepspeed_config`: a carried config's name or a JSON path (relative ones also found in the checkout)."""
    if value in DEEPSPEED_CONFIGS:
        return CONFIG_DIR / DEEPSPEED_CONFIGS[value]
    path = Path(bundled(value))
    if not path.is_file():
        raise ConfigError(f"deepspeed_config: no DeepSpeed JSON at {path}; give a path or one of "
                          f"{', '.join(DEEPSPEED_CONFIGS)}")
    return path


def _read_json(path: Path) -> dict:
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"deepspeed_config: {path}: not a readable DeepSpeed JSON ({e})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"deepspeed_config: {path}:{e.lineno}: not a readable DeepSpeed JSON ({e.msg})") from None
    if not isinstance(settings, dict):
        raise ConfigError(f"deepspeed_config: {path}: expected a JSON object of DeepSpeed settings")
    return settings


def check_strategy(config, strategy: Strategy, cuda: bool, versions: dict[str, str] | None = None) -> None:
    """Combinations that cannot work, each refused in one line naming what would, before any weight loads.
    `versions`: the installed library versions (tests give others)."""
    optim, mode = config.optim, config.adapters.mode
    if optim.fsdp and optim.deepspeed:
        raise ConfigError(f"fsdp: {optim.fsdp} and deepspeed: true are both set; choose one engine: FSDP2 (drop "
                          f"deepspeed) or DeepSpeed ZeRO-3 (deepspeed_config: zero3, drop fsdp)")
    if OPTIMIZERS[optim.optim] and not cuda:
        raise ConfigError(f"optim: {optim.optim} needs a CUDA GPU (bitsandbytes' 8-bit and paged optimizers run "
                          f"there only); on this CPU-only machine use optim: adamw_torch")
    if OPTIMIZERS[optim.optim] and strategy.deepspeed and "optimizer" in strategy.deepspeed_settings:
        raise ConfigError(f"optim: {optim.optim} with deepspeed: the optimizer of {strategy.deepspeed_json} "
                          f"replaces it; use optim: adamw_torch with DeepSpeed, or fsdp: full_shard for {optim.optim}")
    if mode == "qlora" and strategy.shards_weights:
        _check_sharded_qlora(strategy, cuda, versions or installed_versions())


def _check_sharded_qlora(strategy: Strategy, cuda: bool, versions: dict[str, str]) -> None:
    from packaging.version import Version

    if strategy.name == "zero3_offload":
        raise ConfigError("mode: qlora with zero3_offload: 4-bit weights cannot be offloaded to host memory; use "
                          "deepspeed_config: zero3 or fsdp: full_shard")
    if not cuda:
        raise ConfigError(f"mode: qlora across ranks ({strategy.name}) shards 4-bit bitsandbytes weights, which "
                          f"needs CUDA GPUs; on CPU use mode: lora with {strategy.name}")
    old = [f"{name} {versions.get(name, 'missing')} (needs {least})" for name, least in QLORA_SHARDED_MINIMUM.items()
           if name not in versions or Version(versions[name]) < Version(least)]
    if old:
        raise ConfigError(f"mode: qlora with {strategy.name} needs 4-bit weights stored in the compute dtype "
                          f"(bnb_4bit_quant_storage), which {', '.join(old)} lacks; upgrade them, or train QLoRA "
                          f"with one full copy per GPU (no fsdp, deepspeed_config: zero2)")


def installed_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in QLORA_SHARDED_MINIMUM:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def check_host_memory(plan) -> None:
    """Offloading (ZeRO-3's to host memory, or activation_offload) needs the host memory it moves things into."""
    setup, memory = plan.setup, plan.chosen
    if memory.host and plan.host_memory is not None and memory.host * setup.ranks_per_node > plan.host_memory:
        need = memory.host * setup.ranks_per_node / 2**30
        raise ConfigError(f"{memory.strategy}{' with activation_offload' if setup.activation_offload else ''}: "
                          f"offloading needs about {need:.1f} GiB of host memory for {setup.ranks_per_node} ranks "
                          f"on this node, {plan.host_memory / 2**30:.1f} GiB is available; use more nodes, "
                          f"deepspeed_config: zero3 without offload, or gradient_checkpointing instead")


def start_sharded_loading(strategy: Strategy) -> None:
    """ZeRO-3 partitions the weights while `from_pretrained` builds the model (transformers' `deepspeed.zero.Init`
    integration, switched on by the Trainer's arguments, which must exist and stay alive until then), so no rank
    ever holds them all. zero.Init sizes its batch from DeepSpeed's own process group, which must exist first;
    on GPUs accelerate starts it, on CPU ranks (gloo) nothing else does."""
    if strategy.name not in ("zero3", "zero3_offload"):
        return
    import deepspeed
    import torch

    deepspeed.init_distributed(dist_backend=None if torch.cuda.is_available() else "gloo")

