"""The memory plan: per-rank bytes of weights, gradients, optimizer state and activations before anything loads.

Computed from config.json alone (the model is built on the meta device to count its parameters), the batch shape
and the strategy, for the chosen strategy and every other one, beside the device's memory where it is known, so
that a run that cannot fit is seen before minutes of loading, with what would fit instead.

The figures follow what each engine keeps (ZeRO paper, torch FSDP2, bitsandbytes):
- weights in the dtype they load in (fp32 trained weights without DeepSpeed, 16-bit under it; a frozen LoRA base
  in `dtype`; 4-bit QLoRA linears at half a byte plus their quantization constants); sharded ones are divided by
  the ranks, plus the layers gathered at a time for compute;
- gradients like the trained weights (fp32, or 16-bit under DeepSpeed), divided by the ranks from ZeRO-2 on;
- optimizer state per trained parameter: AdamW's two moments (8 bytes; 2 bytes with bitsandbytes' 8-bit ones),
  plus DeepSpeed's fp32 master copy (4 bytes), divided by the ranks under ZeRO and FSDP;
- activations saved for the backward pass per token and layer, from the hidden and intermediate sizes (measured
  on GPT-NeoX, MPT and Falcon: about 10 x hidden + 2 x intermediate values), plus one layer recomputed at a time
  with activation checkpointing (only each layer's input is kept), or moved to host memory with
  activation_offload.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

GIB = 2**30
STRATEGIES = ("ddp", "zero2", "zero3", "zero3_offload", "fsdp")
HALF = {"fp16": 2, "bf16": 2, "fp32": 4}
# Values saved for the backward pass per token and layer: hidden x this + intermediate x INTERMEDIATE_VALUES
# (layer norms, projections' inputs, attention outputs, the MLP's widened activations).
HIDDEN_VALUES = 10
INTERMEDIATE_VALUES = 2
QUANT_BYTES = 0.5 + 4 / 64 / 8 + 4 / (64 * 256)  # nf4 + one fp32 absmax per 64 values (double quant: ~8-bit)


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs from config.json, counted on a meta-device skeleton."""

    parameters: int
    linear_parameters: int  # in linear layers other than the head (the ones LoRA targets and QLoRA quantizes)
    lora_parameters_per_rank: int  # LoRA parameters per unit of rank r, for the configured targets
    layers: int
    hidden: int
    intermediate: int
    heads: int
    largest_layer: int  # parameters of one transformer layer (what ZeRO-3 / FSDP gather at a time)

    @classmethod
    def of(cls, hf_config, lora_targets: str | list[str] = "all-linear") -> ModelShape:
        import torch
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

        with torch.device("meta"):  # the class itself: `from_config` would partition it when ZeRO-3 is on
            model = MODEL_FOR_CAUSAL_LM_MAPPING[type(hf_config)](hf_config)
        head = model.get_output_embeddings()
        linears = [(name, m) for name, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and m is not head]
        targeted = [m for name, m in linears
                    if lora_targets == "all-linear" or name.rsplit(".", 1)[-1] in lora_targets]
        hidden = hf_config.get_text_config().hidden_size
        layers = hf_config.get_text_config().num_hidden_layers
        intermediate = getattr(hf_config, "intermediate_size", None) or getattr(hf_config, "ffn_hidden_size", None) \
            or 4 * hidden
        per_layer = max((sum(p.numel() for p in block.parameters()) for block in _blocks(model)), default=0)
        return cls(parameters=sum(p.numel() for p in model.parameters()),
                   linear_parameters=sum(m.weight.numel() for _, m in linears),
                   lora_parameters_per_rank=sum(m.in_features + m.out_features for m in targeted),
                   layers=layers, hidden=hidden, intermediate=intermediate,
                   heads=hf_config.get_text_config().num_attention_heads, largest_layer=per_layer)


def _blocks(model):
    """The transformer layers: the longest ModuleList in the model."""
    import torch

    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList)]
    return max(lists, key=len) if lists else []


@dataclass(frozen=True)
class Setup:
    """The run as far as memory goes."""

    mode: str  # full, lora, qlora
    lora_r: int
    dtype: str  # compute precision
    mixed: bool  # fp16/bf16 compute happens (on GPUs; CPU runs train in fp32)
    optim: str  # adamw_torch, adamw_8bit, paged_adamw_8bit, paged_adamw_32bit
    micro_tokens: int  # tokens of one micro-batch (batch x max_length, or the padding-free budget)
    sequence: int  # max_length (eager attention keeps a row of scores per token)
    checkpointing: bool
    activation_offload: bool
    eager_attention: bool
    strategy: str  # one of STRATEGIES
    ranks: int
    ranks_per_node: int

    @classmethod
    def of(cls, config, ranks: int, cuda: bool, eager_attention: bool = False,
           ranks_per_node: int | None = None) -> Setup:
        """`eager_attention`: the model's attention keeps its score matrix (no SDPA or flash kernel)."""
        from trainer.strategy import Strategy

        data, optim, model = config.data, config.optim, config.model
        tokens = data.token_budget(optim.per_device_train_batch_size) if data.padding_free \
            else optim.per_device_train_batch_size * data.max_length
        return cls(mode=config.adapters.mode, lora_r=config.adapters.lora_r, dtype=model.dtype,
                   mixed=cuda and model.dtype != "fp32", optim=optim.optim, micro_tokens=tokens,
                   sequence=data.max_length, checkpointing=model.gradient_checkpointing,
                   activation_offload=model.activation_offload,
                   eager_attention=eager_attention,
                   strategy=Strategy.of(optim).name, ranks=ranks,
                   ranks_per_node=ranks_per_node or min(ranks, int(os.environ.get("LOCAL_WORLD_SIZE", ranks))))


@dataclass(frozen=True)
class RankMemory:
    """Bytes one rank holds at its peak, by what they are; `host` is what lives in host memory instead."""

    strategy: str
    weights: float
    gradients: float
    optimizer: float
    activations: float  # saved for backward, at the end of a micro-batch's forward pass
    recompute: float  # one layer's activations rebuilt in the backward pass (activation checkpointing)
    host: float  # per rank, in host memory (offloaded optimizer state, parameters, activations)

    @property
    def device(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations + self.recompute


def rank_memory(shape: ModelShape, setup: Setup, strategy: str | None = None) -> RankMemory:
    """The plan of one strategy (the setup's own by default) for the setup's model, batch and ranks."""
    strategy = strategy or setup.strategy
    n = setup.ranks
    deepspeed = strategy.startswith("zero")
    half = HALF[setup.dtype] if setup.mixed or setup.dtype != "fp32" else 4
    # What is trained, and in which bytes the weights sit.
    if setup.mode == "full":
        trained = shape.parameters
        weight_bytes = trained * (half if deepspeed else 4)
        grad_bytes = trained * (half if deepspeed else 4)
    else:
        trained = shape.lora_parameters_per_rank * setup.lora_r
        frozen_linear = shape.linear_parameters
        frozen_rest = shape.parameters - frozen_linear
        base = frozen_linear * QUANT_BYTES + frozen_rest * 4 if setup.mode == "qlora" \
            else shape.parameters * half
        weight_bytes = base + trained * 4
        grad_bytes = trained * 4
    moments = 2 if setup.optim in ("adamw_8bit", "paged_adamw_8bit") else 8
    optimizer_bytes = trained * (moments + (4 if deepspeed else 0))
    # Sharding.
    gathered = shape.largest_layer * (half if deepspeed else (2 if setup.mixed else 4)) * 2  # a layer, prefetched
    host = 0.0
    if strategy == "ddp":
        weights, grads, opt = weight_bytes, grad_bytes, optimizer_bytes
    elif strategy == "zero2":
        weights, grads, opt = weight_bytes, grad_bytes / n, optimizer_bytes / n
    elif strategy == "zero3":
        weights, grads, opt = weight_bytes / n + gathered, grad_bytes / n, optimizer_bytes / n
    elif strategy == "zero3_offload":
        weights, grads, opt = gathered, 0.0, 0.0
        host = weight_bytes / n + grad_bytes / n + optimizer_bytes / n
    elif strategy == "fsdp":
        weights, grads, opt = weight_bytes / n + gathered, grad_bytes / n, optimizer_bytes / n
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    saved, recompute = activation_bytes(shape, setup)
    if setup.activation_offload:
        host += saved
        saved = 0.0
    return RankMemory(strategy, weights, grads, opt, saved, recompute, host)


def activation_bytes(shape: ModelShape, setup: Setup) -> tuple[float, float]:
    """(saved for backward, recomputed per layer) for one micro-batch."""
    value = HALF[setup.dtype] if setup.mixed else 4
    per_token_layer = HIDDEN_VALUES * shape.hidden + INTERMEDIATE_VALUES * shape.intermediate
    if setup.eager_attention:
        per_token_layer += shape.heads * setup.sequence
    layer = setup.micro_tokens * per_token_layer * value
    if not setup.checkpointing:
        return shape.layers * layer, 0.0
    return (shape.layers + 1) * setup.micro_tokens * shape.hidden * value, layer


@dataclass(frozen=True)
class MemoryPlan:
    setup: Setup
    shape: ModelShape
    chosen: RankMemory
    others: tuple[RankMemory, ...]
    device_memory: float | None  # bytes one rank may use, where known
    device_label: str  # what that memory is
    host_memory: float | None  # bytes of host memory available on this machine
    host_is_device: bool  # a CPU-only run: "offloaded" bytes stay in the same memory

    def fits(self, memory: RankMemory) -> bool | None:
        """Whether a rank's bytes fit its device (and the node's ranks' offloaded bytes its host); None: unknown."""
        if self.host_is_device:
            return None if self.device_memory is None else memory.device + memory.host <= self.device_memory
        if self.host_memory is not None and memory.host * self.setup.ranks_per_node > self.host_memory:
            return False
        return None if self.device_memory is None else memory.device <= self.device_memory

    def describe(self) -> str:
        where = f"{self.device_memory / GIB:.1f} GiB ({self.device_label})" if self.device_memory \
            else self.device_label
        lines = [f"memory plan per rank ({self.setup.ranks} {'rank' if self.setup.ranks == 1 else 'ranks'}, "
                 f"{self.setup.mode}, {self.shape.parameters:,} parameters, {self.setup.micro_tokens:,} tokens per "
                 f"micro-batch; memory per rank: {where}):",
                 f"  {'strategy':<22}{'weights':>9}{'grads':>9}{'optim':>9}{'activ.':>9}{'total':>9}"
                 f"{'host':>9}  fits"]
        for memory in (self.chosen, *self.others):
            fit = {True: "yes", False: "no", None: "?"}[self.fits(memory)]
            mark = " (chosen)" if memory is self.chosen else ""
            lines.append(f"  {memory.strategy + mark:<22}" + "".join(
                f"{_gib(v):>9}" for v in (memory.weights, memory.gradients, memory.optimizer,
                                           memory.activations + memory.recompute, memory.device, memory.host))
                + f"  {fit}")
        if self.fits(self.chosen) is False:
            lines.append("  " + self.advice())
        return "\n".join(lines)

    def advice(self) -> str:
        """What does not fit, and what would."""
        fitting = [m.strategy for m in self.others if self.fits(m)]
        if fitting:
            return f"{self.chosen.strategy} does not fit; these would: {', '.join(fitting)}"
        hints = []
        if not self.setup.checkpointing:
            hints.append("gradient_checkpointing: true")
        if not self.setup.activation_offload:
            hints.append("activation_offload: true")
        if self.setup.mode == "full":
            hints.append("mode: lora or qlora")
        ranks = next((n for n in (2**k for k in range(1, 11)) if n > self.setup.ranks and self.fits(
            rank_memory(self.shape, with_ranks(self.setup, n), "zero3"))), None)
        more = f"zero3 on {ranks} ranks" if ranks else "more ranks"
        return f"no strategy fits on {self.setup.ranks} ranks; would fit: {more}, or " + ", or ".join(hints)


def _gib(value: float) -> str:
    return f"{value / GIB:.2f}G" if value >= 0.01 * GIB else f"{value / 2**20:.1f}M"


def plan(shape: ModelShape, setup: Setup, device_memory: float | None, device_label: str = "",
         host_memory: float | None = None, host_is_device: bool = False) -> MemoryPlan:
    chosen = rank_memory(shape, setup)
    others = tuple(rank_memory(shape, setup, s) for s in STRATEGIES if s != setup.strategy)
    return MemoryPlan(setup, shape, chosen, others, device_memory, device_label, host_memory, host_is_device)


def plan_run(config, hf_config, ranks: int, eager_attention: bool = False,
             ranks_per_node: int | None = None) -> MemoryPlan:
    """The plan of a configured run on this machine, from config.json alone."""
    import torch

    cuda = torch.cuda.is_available()
    setup = Setup.of(config, ranks, cuda, eager_attention, ranks_per_node)
    memory, label = device_memory(setup.ranks_per_node)
    return plan(ModelShape.of(hf_config, config.adapters.lora_targets), setup, memory, label,
                host_memory_available(), host_is_device=not cuda)


def device_memory(ranks_per_node: int) -> tuple[float | None, str]:
    """The memory one rank may use, and what it is: its GPU's, or on a CPU-only machine its share of the host's
    available memory (the host is then the device)."""
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        return float(props.total_memory), f"{props.name}"
    host = host_memory_available()
    if host is None:
        return None, "device memory unknown"
    return host / ranks_per_node, f"host memory available / {ranks_per_node} ranks (CPU)"


def host_memory_available() -> float | None:
    """MemAvailable from /proc/meminfo (Linux), None elsewhere."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def with_ranks(setup: Setup, ranks: int) -> Setup:
    return replace(setup, ranks=ranks, ranks_per_node=min(setup.ranks_per_node, ranks))

