"""Typed, validated run configuration. YAML + overrides (Hydra) → `RunConfig` → builders.

Validation happens on the driver before Ray or any worker starts, and every error names the dotted key and the
allowed values, e.g. `deepspeed.zero_stage=7 is not allowed; allowed: 0, 1, 2, 3`.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type, TypeVar

from framework.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A bad config value; the message names the key."""


@dataclasses.dataclass
class LoraConfig:
    r: int = 0  # LoRA rank; 0 = full fine-tuning
    alpha: Optional[float] = None  # scaling numerator (scale = alpha / r); None = 2·r
    dropout: float = 0.0
    target_modules: Any = None  # None = peft's default for the architecture; "all-linear"; or a list of names
    adapter: Optional[str] = None  # start from this saved peft adapter (its r/alpha/targets win); implies LoRA


@dataclasses.dataclass
class ModelConfig:
    path: Optional[str] = None  # local HF dir or hub id; None = the built-in demo model
    reference_path: Optional[str] = None  # None = same weights as `path` (with LoRA: the adapters switched off)
    dtype: str = "fp32"
    trust_remote_code: bool = False
    gradient_checkpointing: bool = False  # recompute decoder-layer activations in backward (non-reentrant)
    tiled_logps_above: int = 1024  # longer training batches (tokens): log-probs without [B,T,V] logits; 0 = never
    shared_prompt: bool = True  # one row [prompt | r1 | … | rK]: the prompt forwarded once for its K responses
    packing: bool = True  # several examples per row (block-diagonal masks, reset positions): no padding compute
    pack_tokens: int = 0  # packed row length; 0 = the micro-batch's longest example (no row grows past padding)
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)

    @property
    def uses_lora(self) -> bool:
        return self.lora.r > 0 or self.lora.adapter is not None


@dataclasses.dataclass
class DataConfig:
    train: Optional[str] = None  # raw file(s) (comma-separated) or a store dir; None = built-in demo data
    eval: Optional[str] = None  # held-out pairs (raw or store); None = demo held-out split
    kind: Optional[str] = None  # pairwise | ranked | binary | multi; None = infer
    store_dir: Optional[str] = None  # where stores built from raw files go; None = <output_dir>/store
    tokenizer: Optional[str] = None  # None = the model's tokenizer
    max_length: int = 128
    max_prompt_length: int = 64
    demo_train_rows: int = 2000
    demo_eval_rows: int = 256
    use_stored_reference: str = "auto"  # auto | never | require
    self_samples: int = 4  # D2O: samples per prompt drawn by `store add-samples` when the store has none
    aligned_models: Optional[List[str]] = None  # PoFT: aligned LMs for `store add-aligned-logps` (required for poft)
    udm: bool = False  # BCO: weight undesirable examples by the UDM prompt density ratio (`store add-udm-weights`)
    udm_model: Optional[str] = None  # BCO UDM: model whose mean-pooled hidden states embed prompts; None = the model


@dataclasses.dataclass
class DeepSpeedConfig:
    zero_stage: int = 2
    dtype: str = "fp32"  # fp32 | bf16 | fp16 for the DeepSpeed engine
    grad_clip: float = 1.0
    offload_optimizer: bool = False  # ZeRO-Offload to CPU (DeepSpeed CPU Adam: JIT-builds on first use)
    offload_params: bool = False  # ZeRO-3 only: parameter partitions live in CPU memory between uses
    cpu_shm_comm: bool = False  # DeepSpeed's CPU shared-memory allreduce (JIT-builds ~50 s on first use)


@dataclasses.dataclass
class ClusterConfig:
    address: Optional[str] = None  # None = embedded local Ray on loopback; "auto" or ray://... to connect
    num_workers: int = 2
    cpus_per_worker: float = 1.0
    use_gpu: str = "auto"  # auto | true | false
    backend: str = "auto"  # auto (nccl on GPU, gloo on CPU) | gloo | nccl
    num_cpus: Optional[int] = None  # logical CPUs for the embedded Ray; None = enough for workers + Ray Data
    max_failures: int = 0  # Ray Train restarts of the worker group after a failure
    storage_path: Optional[str] = None  # Ray Train storage (checkpoints); None = <output_dir>/ray
    placement_timeout_s: float = 300.0  # fail when the workers' placement group cannot be placed within this
    allow_oversubscribe: bool = False  # embedded Ray: warn instead of refusing more CPUs/memory than the machine has


@dataclasses.dataclass
class TrainConfig:
    max_steps: int = 200
    micro_batch_size: int = 8  # examples per worker per micro-batch
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 10
    seed: int = 0
    report_every: int = 0  # steps between metric-only reports to Ray Train (0: only with checkpoints)
    eval_at_start: bool = True
    eval_at_end: bool = True
    eval_every: int = 0  # steps between held-out evaluations (metrics.jsonl); 0 = only at start and end
    checkpoint_every: int = 0  # steps; 0 = only at the end
    keep_checkpoints: int = 2
    max_nonfinite_steps: int = 3  # consecutive non-finite losses before the run stops
    length_grouping: bool = True
    export: bool = True
    checkpoint_on_interrupt: bool = True  # SIGINT/SIGTERM: finish the current step, checkpoint, then stop
    sequence_parallel: int = 1  # Ulysses: workers sharing each sequence; must divide cluster.num_workers
    sync_timing: bool = False  # synchronise the accelerator at each timed phase (exact time/* split, slower)


@dataclasses.dataclass
class RunConfig:
    objective: Dict[str, Any]
    model: ModelConfig
    data: DataConfig
    deepspeed: DeepSpeedConfig
    cluster: ClusterConfig
    train: TrainConfig
    output_dir: str = "runs/latest"
    resume: Optional[str] = None  # None | auto | PATH of a checkpoint

    @property
    def objective_name(self) -> str:
        return self.objective["name"]

    @property
    def objective_hparams(self) -> Dict[str, Any]:
        return {k: v for k, v in self.objective.items() if k != "name"}

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


ALLOWED: Dict[str, Tuple[Any, ...]] = {
    "deepspeed.zero_stage": (0, 1, 2, 3),
    "deepspeed.dtype": ("fp32", "bf16", "fp16"),
    "model.dtype": ("fp32", "bf16", "fp16"),
    "cluster.use_gpu": ("auto", "true", "false"),
    "cluster.backend": ("auto", "gloo", "nccl"),
    "data.kind": (None, "pairwise", "ranked", "binary", "multi"),
    "data.use_stored_reference": ("auto", "never", "require"),
}
NESTED: Dict[str, type] = {"model.lora": LoraConfig}
POSITIVE = ("cluster.num_workers", "train.max_steps", "train.micro_batch_size", "train.grad_accum",
            "data.max_length", "data.max_prompt_length", "train.lr", "cluster.cpus_per_worker",
            "cluster.placement_timeout_s", "train.sequence_parallel")


def _build(cls: Type[T], values: Mapping[str, Any], prefix: str) -> T:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key {prefix}.{unknown[0]}; allowed keys in {prefix}: {', '.join(fields)}")
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}.{name}"
        if isinstance(value, bool) and key in ("cluster.use_gpu",):
            value = str(value).lower()
        if key in ALLOWED and value not in ALLOWED[key]:
            allowed = ", ".join(str(v) for v in ALLOWED[key])
            raise ConfigError(f"{key}={value} is not allowed; allowed: {allowed}")
        if key in POSITIVE and not (isinstance(value, (int, float)) and value > 0):
            raise ConfigError(f"{key}={value} must be a positive number")
        if key in NESTED:
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key} must be a group of keys ({key}.KEY=VALUE), not {value!r}")
            value = _build(NESTED[key], value, key)
        kwargs[name] = value
    return cls(**kwargs)


def _check_lora(lora: LoraConfig) -> None:
    if isinstance(lora.r, bool) or not isinstance(lora.r, int) or lora.r < 0:
        raise ConfigError(f"model.lora.r={lora.r} must be a whole number >= 0 (0 = full fine-tuning, LoRA off)")
    if lora.alpha is not None and not (isinstance(lora.alpha, (int, float)) and lora.alpha > 0):
        raise ConfigError(f"model.lora.alpha={lora.alpha} must be a positive number (or null for 2·r)")
    if not (isinstance(lora.dropout, (int, float)) and 0 <= lora.dropout < 1):
        raise ConfigError(f"model.lora.dropout={lora.dropout} must be in [0, 1)")
    targets = lora.target_modules
    if not (targets is None or isinstance(targets, str) or
            (isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) for t in targets))):
        raise ConfigError(f"model.lora.target_modules={targets} must be null, a module name pattern, 'all-linear' "
                          "or a non-empty list of module names")


def validate_objective(objective: Mapping[str, Any]) -> Dict[str, Any]:
    """The objective group must name a registered objective and only its constructor's hyperparameters."""
    from framework.objectives import objective_class, registered_objectives

    objective = dict(objective)
    name = objective.get("name")
    if name not in registered_objectives():
        raise ConfigError(f"objective={name} is not registered; allowed: {', '.join(registered_objectives())}")
    hparams = {k: v for k, v in objective.items() if k != "name"}
    signature = inspect.signature(objective_class(name).__init__)
    try:
        signature.bind(None, **hparams)
    except TypeError as err:
        allowed = [p for p in signature.parameters if p != "self"]
        raise ConfigError(f"objective.{name}: {err}; allowed hyperparameters: {', '.join(allowed) or 'none'}") from None
    try:
        objective_class(name)(**hparams)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"objective.{name}: {err}") from None
    return objective


def from_dict(raw: Mapping[str, Any]) -> RunConfig:
    """Validate a plain nested dict (e.g. `OmegaConf.to_container(cfg, resolve=True)`)."""
    raw = dict(raw)
    top = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(raw) - top - {"hydra"})
    if unknown:
        raise ConfigError(f"unknown top-level key {unknown[0]}; allowed: {', '.join(sorted(top))}")
    config = RunConfig(
        objective=validate_objective(raw.get("objective") or {"name": "dpo"}),
        model=_build(ModelConfig, raw.get("model") or {}, "model"),
        data=_build(DataConfig, raw.get("data") or {}, "data"),
        deepspeed=_build(DeepSpeedConfig, raw.get("deepspeed") or {}, "deepspeed"),
        cluster=_build(ClusterConfig, raw.get("cluster") or {}, "cluster"),
        train=_build(TrainConfig, raw.get("train") or {}, "train"),
        output_dir=str(raw.get("output_dir") or "runs/latest"),
        resume=raw.get("resume"),
    )
    _check_lora(config.model.lora)
    if config.data.max_prompt_length >= config.data.max_length:
        raise ConfigError("data.max_prompt_length must be smaller than data.max_length")
    if config.deepspeed.zero_stage == 0 and config.deepspeed.offload_optimizer:
        raise ConfigError("deepspeed.offload_optimizer needs deepspeed.zero_stage >= 1")
    _check_memory_options(config)
    if config.data.udm and config.objective_name != "bco":
        raise ConfigError(f"data.udm=true needs objective=bco (UDM weights only weight BCO's undesirable examples), "
                          f"not objective={config.objective_name}")
    _check_stored_reference(config)
    if config.objective.get("gram") == "params" and (
            config.train.grad_accum != 1 or config.deepspeed.dtype == "fp16" or config.deepspeed.offload_optimizer):
        raise ConfigError("objective.gram=params (exact per-objective gradient Gram) needs train.grad_accum=1, "
                          "deepspeed.dtype fp32 or bf16 and no deepspeed.offload_optimizer",
                          "change those, or use objective.gram=logps")
    if "mismatched" in objective_class_requires(config.objective_name) and config.train.micro_batch_size < 2:
        raise ConfigError(f"objective={config.objective_name} needs train.micro_batch_size >= 2 (its mismatched "
                          "completions come from the other examples of the micro-batch)")
    return config


def _check_memory_options(config: RunConfig) -> None:
    """Offload, tiling and sequence-parallel settings that cannot work, in one line before anything is built."""
    if config.deepspeed.offload_params and config.deepspeed.zero_stage != 3:
        raise ConfigError(f"deepspeed.offload_params needs deepspeed.zero_stage=3 (got {config.deepspeed.zero_stage}): "
                          "only ZeRO-3 partitions the parameters", "set deepspeed.zero_stage=3")
    if not isinstance(config.model.pack_tokens, int) or config.model.pack_tokens < 0:
        raise ConfigError(f"model.pack_tokens={config.model.pack_tokens} must be a whole number >= 0 "
                          "(0 = the longest example of each micro-batch)")
    tile = config.model.tiled_logps_above
    if isinstance(tile, bool) or not isinstance(tile, int) or tile < 0:
        raise ConfigError(f"model.tiled_logps_above={tile} must be a whole number >= 0 (0 = never tile)")
    sp, workers = config.train.sequence_parallel, config.cluster.num_workers
    if not isinstance(sp, int) or workers % sp:
        raise ConfigError(f"train.sequence_parallel={sp} must divide cluster.num_workers={workers} "
                          "(workers = data-parallel × sequence-parallel)")
    if sp > 1 and "rewards" in objective_class_requires(config.objective_name):
        raise ConfigError(f"train.sequence_parallel={sp} does not support objective={config.objective_name} "
                          "(a reward model's scalar head reads one position)", "set train.sequence_parallel=1")


def objective_class_requires(name: str) -> tuple:
    """The registered objective's declared extra inputs (before any instance narrows them)."""
    from framework.objectives import objective_class

    return tuple(objective_class(name).requires)


def _check_stored_reference(config: RunConfig) -> None:
    """A store holds response log-probs only; objectives needing more cannot `require` a stored reference."""
    from framework.objectives import build_objective

    live = build_objective(config.objective_name, **config.objective_hparams).live_reference_inputs()
    if live and config.data.use_stored_reference == "require":
        raise ConfigError(f"data.use_stored_reference=require, but objective={config.objective_name} needs reference "
                          f"{', '.join(live)}, which a store does not hold",
                          "set data.use_stored_reference=auto (the reference model then runs live)")


def compose_config(overrides: List[str]) -> RunConfig:
    """The packaged Hydra config (conf/) with `alignray train`-style overrides, validated: for programs that run
    training in-process (benchmarks, notebooks) without going through the CLI."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(config_module="conf", version_base="1.3"):
        raw = compose(config_name="config", overrides=overrides)
    return from_dict(OmegaConf.to_container(raw, resolve=True))
