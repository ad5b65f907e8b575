"""The DeepSpeed seam: everything the train loop needs from DeepSpeed and torch.distributed, behind one class.

The loop calls `backward`, `step`, `all_reduce_sum`, `save`, `load`; it never imports deepspeed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch

from framework.config import DeepSpeedConfig, TrainConfig

log = logging.getLogger(__name__)


def deepspeed_config(ds: DeepSpeedConfig, train: TrainConfig, world_size: int, with_optimizer: bool = True) -> Dict[str, Any]:
    """The DeepSpeed JSON config for the policy (or, without optimizer, for a ZeRO-3 reference)."""
    config: Dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.micro_batch_size * train.grad_accum * world_size,
        "gradient_clipping": ds.grad_clip,
        "zero_optimization": {"stage": ds.zero_stage},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }
    if ds.zero_stage == 3:
        config["zero_optimization"].update({"stage3_gather_16bit_weights_on_model_save": True})
    if ds.offload_optimizer and with_optimizer:
        config["zero_optimization"]["offload_optimizer"] = {"device": "cpu"}
    if ds.offload_params and ds.zero_stage == 3:
        config["zero_optimization"]["offload_param"] = {"device": "cpu"}
    if ds.dtype == "bf16":
        config["bf16"] = {"enabled": True}
    elif ds.dtype == "fp16":
        config["fp16"] = {"enabled": True, "initial_scale_power": 16}
    if not with_optimizer:
        config.pop("gradient_clipping")
    return config


class DeepSpeedSeam:
    """One per worker process. Owns the process group, the policy engine and the reference wrapper."""

    def __init__(self, ds: DeepSpeedConfig, train: TrainConfig, device: torch.device, backend: str) -> None:
        self.ds, self.train, self.device, self.backend = ds, train, device, backend
        self.engine: Any = None
        self._optimizer: Any = None  # the torch optimizer DeepSpeed's (ZeRO) wrapper steps
        self._hf_ds_config: Any = None  # must outlive from_pretrained under ZeRO-3
        self._frozen = False  # the policy has frozen parameters (LoRA)
        self._gradient_bytes: Optional[int] = None  # gradient storage after the first backward (memory reports)

    # -- process group ---------------------------------------------------------------------------------
    def init_distributed(self) -> None:
        import deepspeed
        import deepspeed.ops

        logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
        if not self.ds.cpu_shm_comm:
            # Its first use JIT-compiles a C++ op for ~50 s; gloo's allreduce is enough at our sizes.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend=self.backend, auto_mpi_discovery=False)

    @property
    def rank(self) -> int:
        return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0

    @property
    def world_size(self) -> int:
        return torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1

    @contextlib.contextmanager
    def model_loading(self) -> Iterator[None]:
        """Under ZeRO-3, transformers' from_pretrained partitions weights as it loads (zero.Init) while an
        HfDeepSpeedConfig is alive; keep it for the engine's lifetime."""
        if self.ds.zero_stage == 3 and self._hf_ds_config is None:
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds_config = HfDeepSpeedConfig(deepspeed_config(self.ds, self.train, self.world_size))
        yield

    # -- engines ---------------------------------------------------------------------------------------
    def wrap_policy(self, model: torch.nn.Module, total_steps: int) -> Any:
        import deepspeed

        train = self.train

        def make_optimizer(params: Any) -> torch.optim.Optimizer:
            # torch AdamW: no DeepSpeed op build. Offload needs DeepSpeed's CPU Adam (builds once, cached).
            if self.ds.offload_optimizer:
                from deepspeed.ops.adam import DeepSpeedCPUAdam

                self._optimizer = _skippable(DeepSpeedCPUAdam)(params, lr=train.lr, weight_decay=train.weight_decay)
            else:
                self._optimizer = _skippable(torch.optim.AdamW)(params, lr=train.lr, weight_decay=train.weight_decay)
            return self._optimizer

        def make_scheduler(optimizer: torch.optim.Optimizer) -> Any:
            return _SkippableLambdaLR(optimizer, _warmup_cosine(train.warmup_steps, total_steps))

        # LoRA: checkpoints keep the trainable tensors (adapters) and their optimizer state, not the frozen base.
        self._frozen = any(not p.requires_grad for p in model.parameters())
        self.engine, *_ = deepspeed.initialize(
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            optimizer=make_optimizer,
            lr_scheduler=make_scheduler,
            config=deepspeed_config(self.ds, self.train, self.world_size),
            dist_init_required=False,
        )
        return self.engine

    def wrap_reference(self, model: torch.nn.Module) -> torch.nn.Module:
        """Frozen reference. Under ZeRO-3 it is partitioned too, in its own optimizer-less engine."""
        model.requires_grad_(False)
        model.eval()
        if self.ds.zero_stage != 3:
            dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.ds.dtype, torch.float32)
            return model.to(device=self.device, dtype=dtype)
        import deepspeed

        engine, *_ = deepspeed.initialize(
            model=model, config=deepspeed_config(self.ds, self.train, self.world_size, with_optimizer=False),
            dist_init_required=False,
        )
        engine.eval()
        return engine

    # -- step ------------------------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        if self._gradient_bytes is None:  # the same every step: measured once, before the step frees it
            self._gradient_bytes = _storage_bytes(self._gradient_tensors())

    def _gradient_tensors(self) -> List[torch.Tensor]:
        """`param.grad` (ZeRO-0) and the ZeRO optimizer's gradient partitions; not the communication buckets."""
        grads = [p.grad for p in self.engine.module.parameters() if p.grad is not None]
        return grads + _tensors([getattr(self.engine.optimizer, name, None) for name in _GRADIENT_BUFFERS])

    def step(self) -> None:
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.step()
        if boundary:
            self._optimizer.skip_updates = False

    def skip_next_update(self) -> None:
        """Make the next boundary `step()` change no weights, optimizer state or LR. DeepSpeed still runs its
        own step (gradient reduction, clipping, zeroing, counters), so every rank stays in lockstep; only the
        inner optimizer's and the LR scheduler's `step` do nothing. ZeRO copies its fp32 master partitions
        back to the model after that step, unchanged. Call it on every rank, before the boundary `step()`."""
        self._optimizer.skip_updates = True

    def gradient_gram(self, losses: Sequence[torch.Tensor]) -> torch.Tensor:
        """H_ij = <g_i, g_j> (m×m float64, CPU, the same on every rank) of the gradients DeepSpeed would apply
        for each loss alone: reduced and averaged over ranks as in a normal step, before clipping.

        Each loss gets its own engine backward (retain_graph: one forward serves all); this rank keeps only
        its partition of the reduced gradient (ZeRO-1/2/3; under ZeRO-0 every rank holds the full gradient
        and takes a disjoint share of the parameters) so the next backward starts from zero, and one
        all-reduce sums the local dot products. Call it on every rank after the forward and before the
        step's single combined `backward` (Σ a_i·L_i) and `step`. Costs m extra backwards and m partitions.

        Only grad_accum=1: ZeRO-0/1 reduce at the accumulation boundary only and ZeRO-2/3 add each backward
        into the partitions of the earlier micro-batches, so g_i of one micro-batch is not available
        without snapshotting those partitions. fp32 and bf16; not fp16 or optimizer offload."""
        if self.train.grad_accum != 1:
            raise ValueError(f"the exact gradient Gram needs train.grad_accum=1 (got {self.train.grad_accum}): "
                             "use the log-prob Gram or no gradient accumulation")
        if self.ds.dtype == "fp16" or self.ds.offload_optimizer:
            raise ValueError("the exact gradient Gram supports neither deepspeed.dtype=fp16 (loss-scaled "
                             "gradients) nor deepspeed.offload_optimizer (gradients accumulate in CPU buffers)")
        counters = self._backward_counters()
        partitions = []
        for loss in losses:
            self.engine.backward(loss, retain_graph=True)
            partitions.append(self._local_gradient())
            self._reset_gradients()
            _restore_counters(counters)
        return self.all_reduce_sum(_gram(partitions)).cpu()

    def _backward_counters(self) -> Dict[Any, Dict[str, int]]:
        """ZeRO-3 re-gathers a module's weights in backward only while the counters its forward hooks set
        are positive, and each backward consumes them: keep them to replay the retained graph."""
        if self.ds.zero_stage != 3:
            return {}
        names = ("applied_pre_backward_ref_cnt", "ds_grads_remaining")
        return {module: {name: module.__dict__[name] for name in names if name in module.__dict__}
                for module in self.engine.module.modules()}

    def _local_gradient(self) -> torch.Tensor:
        """This rank's share of the reduced gradient as one flat fp32 copy (disjoint across ranks)."""
        params = [p for p in self.engine.module.parameters() if p.requires_grad]
        if self.ds.zero_stage == 0:  # full averaged gradient on every rank: a disjoint share of the parameters
            mine = params[self.rank::self.world_size]
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in mine]
        elif self.ds.zero_stage == 3:
            from deepspeed.utils import safe_get_local_grad

            grads = [safe_get_local_grad(p) for p in params]
        else:  # the fragments of `averaged_gradients` the optimizer steps from
            grads = [p._hp_mapping.get_lp_grad_fragment(p._index_in_param_group) for p in params
                     if getattr(p, "_hp_mapping", None) is not None]  # None: no fragment on this rank
        if not grads:
            return torch.zeros(0)
        return torch.cat([g.detach().reshape(-1).float() for g in grads])

    def _reset_gradients(self) -> None:
        """Let the next backward start from zero. ZeRO-0 accumulates into `param.grad`. ZeRO-1/2 rebuild
        their partitions at each boundary backward from that backward's gradients alone, and ZeRO-3 copies
        (not adds) into its partitions while `micro_step_id` is 0, which it stays within one forward."""
        if self.ds.zero_stage == 0:
            self.engine.zero_grad()

    def model_state_bytes(self, reference: Any = None) -> Dict[str, int]:
        """Bytes this rank holds for weights (policy, and a separate reference model if any) and for optimizer
        state (fp32 master partitions and Adam moments), each storage counted once, and the gradient storage
        after the first backward (0 before any). Activations are not included: the peak RSS covers them."""
        def local(tensor: torch.Tensor) -> torch.Tensor:
            part = getattr(tensor, "ds_tensor", None)  # ZeRO-3: this rank's partition
            return part if part is not None else tensor

        seen: set = set()

        def total(tensors: Iterator[torch.Tensor]) -> int:
            count = 0
            for tensor in tensors:
                tensor = local(tensor)
                key = (tensor.untyped_storage().data_ptr(), tensor.device)
                if tensor.numel() and key not in seen:
                    seen.add(key)
                    count += tensor.untyped_storage().nbytes()
            return count

        # A separate reference is a module (or a ZeRO-3 engine, also a module); LoRA's adapters-off view is not.
        models = [self.engine.module] + ([reference] if isinstance(reference, torch.nn.Module) else [])
        weights = total(p for model in models for p in model.parameters())
        groups = [p for group in self._optimizer.param_groups for p in group["params"]]
        moments = [t for state in self._optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
        return {"weights": weights, "optimizer": total(iter(groups)) + total(iter(moments)),
                "gradients": self._gradient_bytes or 0}

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            tensor = tensor.clone()
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()

    # -- checkpoints -----------------------------------------------------------------------------------
    def save(self, directory: str, tag: str, client_state: Dict[str, Any]) -> None:
        """Every rank writes its ZeRO partition into `directory/tag` (plus the `latest` marker); frozen parameters
        (a LoRA base) are left out."""
        self.engine.save_checkpoint(directory, tag=tag, client_state=client_state,
                                    exclude_frozen_parameters=self._frozen)

    def load(self, directory: str) -> Dict[str, Any]:
        # Without the frozen base in the file, the module load is partial by design (the base comes from model.path).
        path, client_state = self.engine.load_checkpoint(directory, load_module_strict=not self._frozen)
        if path is None:
            raise FileNotFoundError(f"no DeepSpeed checkpoint could be loaded from {directory}")
        return client_state or {}


# Where DeepSpeed's ZeRO optimizers keep gradients between backward and step (stage 1: averaged_gradients and
# all_grad_tensors; 2: grads_in_partition; 3: grad_partitions_flat_buffer).
_GRADIENT_BUFFERS = ("averaged_gradients", "all_grad_tensors", "grads_in_partition", "grad_partitions_flat_buffer")


def _tensors(value: Any) -> List[torch.Tensor]:
    """Tensors in nested dicts/lists, and the flat buffer of DeepSpeed's compact gradient-partition groups."""
    if torch.is_tensor(value):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    flat = getattr(value, "flat_partition", None)
    return [flat] if torch.is_tensor(flat) else []


def _storage_bytes(tensors: Sequence[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind `tensors` (views of one flat buffer count once)."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors if t.numel()}
    return sum(storages.values())


def _restore_counters(counters: Dict[Any, Dict[str, int]]) -> None:
    for module, values in counters.items():
        module.__dict__.update(values)


def _gram(partitions: List[torch.Tensor], chunk: int = 1 << 20) -> torch.Tensor:
    """Σ over chunks of P·Pᵀ in float64, P the m partitions stacked, without a float64 copy of all of P."""
    m = len(partitions)
    gram = torch.zeros(m, m, dtype=torch.float64, device=partitions[0].device)
    for start in range(0, partitions[0].numel(), chunk):
        block = torch.stack([p[start:start + chunk] for p in partitions]).double()
        gram += block @ block.T
    return gram


def _skippable(optimizer_class: type) -> type:
    """`optimizer_class` whose `step` does nothing while `skip_updates` is set. ZeRO calls it once per
    parameter (sub-)group in one engine step, so the seam clears the flag after the step, not the optimizer."""

    def step(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.skip_updates:
            return None
        return optimizer_class.step(self, *args, **kwargs)

    return type(f"Skippable{optimizer_class.__name__}", (optimizer_class,), {"skip_updates": False, "step": step})


class _SkippableLambdaLR(torch.optim.lr_scheduler.LambdaLR):
    """The LR schedule advances with applied updates only, as when a step is skipped before any backward."""

    def step(self, *args: Any, **kwargs: Any) -> None:
        if getattr(self.optimizer, "skip_updates", False):
            return
        super().step(*args, **kwargs)


def _warmup_cosine(warmup: int, total: int, floor: float = 0.1) -> Any:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def pick_device(use_gpu: bool) -> torch.device:
    if use_gpu and torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def consolidated_state_dict(checkpoint_dir: str, tag: str = "model") -> Dict[str, torch.Tensor]:
    """Full fp32 weights from a DeepSpeed checkpoint of any ZeRO stage (no process group needed)."""
    from pathlib import Path

    path = Path(checkpoint_dir)
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if not any(path.glob(f"{tag}/*optim_states.pt")):  # ZeRO-0: rank 0 saved the whole module
        return torch.load(path / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)["module"]
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(path), tag=tag)
