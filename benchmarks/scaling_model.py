"""GPU scaling model for DPO on paper: FLOPs per example, ZeRO-2/3 traffic per GPU, expected throughput per GPU.

    python -m benchmarks.scaling_model [--mfu 0.35] [--batch 8] [--accumulation 1]

Pure arithmetic (no torch): prints the markdown tables that benchmarks/README.md ("GPU scaling model") embeds.

Counting rules (one optimizer step, bf16 weights and gradients, fp32 Adam state, live reference model):
- A forward costs 2 FLOPs per matmul weight per token (every Linear and the LM head; the input embedding is a
  lookup) plus 4·hidden FLOPs per layer per attended (query, key) pair (QKᵀ and AV, causal pairs only). Backward
  costs twice the forward, so the policy costs 3 forwards and the live reference 1: ≈ 8N per token in all.
  Activation recomputation (gradient checkpointing) adds a forward the MFU convention does not count.
- An example is one prompt of P tokens with K responses of R tokens. Unshared (TRL's way): K rows of P + R
  tokens. Shared prompt: one row [prompt | r1 … rK], P + K·R tokens, each response attending to the prompt and
  itself only.
- Per GPU and optimizer step with m micro-batches, ring collectives move (n−1)/n of each message per GPU:
  ZeRO-2 reduce-scatters the gradients every micro-batch and all-gathers the updated parameters once,
  (m + 1)·Ψ·bytes; ZeRO-3 all-gathers the parameters for the forward and again for the backward and
  reduce-scatters the gradients every micro-batch, 3m·Ψ·bytes, plus m·Ψ·bytes to gather the partitioned reference
  for its forward. With m = 1 that is the ZeRO paper's 2Ψ vs 3Ψ (arXiv:1910.02054 §7: parameter partitioning
  costs 1.5× data parallelism's volume); the reference makes it 2×. ZeRO-2 replicates the frozen reference.
- Step time = max(compute, communication): DeepSpeed overlaps the collectives with compute (`overlap_comm`).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Dict, List, Sequence

BYTES_BF16 = 2
ADAM_BYTES = 12  # fp32 master weights + two moments, per parameter
LINK_EFFICIENCY = 0.8  # achievable share of a link's nominal rate for large NCCL collectives (assumed)
GB = 1e9


@dataclass(frozen=True)
class Shape:
    """A Llama-shaped decoder (SwiGLU MLP, RMSNorm, grouped-query attention)."""

    name: str
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    tied: bool = False

    def layer_matmul_params(self) -> int:
        kv = 2 * self.hidden * (self.kv_heads * self.hidden // self.heads)
        return 2 * self.hidden * self.hidden + kv + 3 * self.hidden * self.ffn

    def matmul_params(self) -> int:
        """Weights a token multiplies through: every layer's Linears and the LM head (tied or not)."""
        return self.layers * self.layer_matmul_params() + self.vocab * self.hidden

    def params(self) -> int:
        norms = (2 * self.layers + 1) * self.hidden
        embeddings = self.vocab * self.hidden * (1 if self.tied else 2)
        return self.layers * self.layer_matmul_params() + norms + embeddings


@dataclass(frozen=True)
class Workload:
    """One example: a prompt of `prompt` tokens and `k` responses of `response` tokens."""

    name: str
    prompt: int
    response: int
    k: int = 2

    def tokens(self, shared: bool) -> int:
        return self.prompt + self.k * self.response if shared else self.k * (self.prompt + self.response)

    def attended_pairs(self, shared: bool) -> int:
        """Causal (query, key) pairs: the sum over tokens of the keys each attends to, itself included."""
        if not shared:
            length = self.prompt + self.response
            return self.k * length * (length + 1) // 2
        per_response = self.response * self.prompt + self.response * (self.response + 1) // 2
        return self.prompt * (self.prompt + 1) // 2 + self.k * per_response


@dataclass(frozen=True)
class Setup:
    """GPUs of one kind, the link their collectives cross and the data-parallel world size."""

    name: str
    peak_tflops: float  # dense bf16
    link_gb_per_s: float  # per GPU, one direction
    world: int


SHAPES = [
    Shape("1B (Llama-3.2-1B)", layers=16, hidden=2048, heads=32, kv_heads=8, ffn=8192, vocab=128256, tied=True),
    Shape("7B (Llama-2-7B)", layers=32, hidden=4096, heads=32, kv_heads=32, ffn=11008, vocab=32000),
    Shape("70B (Llama-3-70B)", layers=80, hidden=8192, heads=64, kv_heads=8, ffn=28672, vocab=128256),
]
WORKLOADS = [
    Workload("HH pairs", prompt=330, response=130),
    Workload("long prompt", prompt=2048, response=256),
    Workload("HH lists K=8", prompt=330, response=130, k=8),
]
# NVLink: A100 600 GB/s and H100 900 GB/s in both directions together; InfiniBand HDR 200 / NDR 400 Gb/s, one NIC
# per GPU. A single node (8 GPUs) talks over NVLink; 8 nodes (64 GPUs) are bound by the NICs.
SETUPS = [
    Setup("A100 ×8, NVLink", peak_tflops=312, link_gb_per_s=300, world=8),
    Setup("H100 ×8, NVLink", peak_tflops=989, link_gb_per_s=450, world=8),
    Setup("A100 ×64, IB 200 Gb/s", peak_tflops=312, link_gb_per_s=25, world=64),
    Setup("H100 ×64, IB 400 Gb/s", peak_tflops=989, link_gb_per_s=50, world=64),
]


def forward_flops(shape: Shape, tokens: int, attended_pairs: int) -> float:
    """Model FLOPs of one forward over `tokens` tokens with `attended_pairs` causal (query, key) pairs."""
    return 2.0 * shape.matmul_params() * tokens + 4.0 * shape.layers * shape.hidden * attended_pairs


def example_flops(shape: Shape, workload: Workload, shared: bool, reference: bool = True) -> float:
    """FLOPs of one training example: policy forward + backward (3 forwards) and the reference forward."""
    forward = forward_flops(shape, workload.tokens(shared), workload.attended_pairs(shared))
    return (3 + int(reference)) * forward


def comm_bytes(params: int, stage: int, world: int, accumulation: int = 1, reference: bool = True,
               bytes_per_value: int = BYTES_BF16) -> float:
    """Bytes each GPU sends per optimizer step under ZeRO `stage` (2 or 3), ring collectives."""
    if stage == 2:
        messages = accumulation + 1
    elif stage == 3:
        messages = accumulation * (3 + int(reference))
    else:
        raise ValueError(f"ZeRO stage {stage}: the model covers stages 2 and 3")
    return (world - 1) / world * messages * params * bytes_per_value


def model_state_bytes(params: int, stage: int, world: int, reference: bool = True) -> float:
    """Weights, gradients and Adam state each GPU holds (bf16 weights/gradients, fp32 Adam, bf16 reference)."""
    if stage not in (2, 3):
        raise ValueError(f"ZeRO stage {stage}: the model covers stages 2 and 3")
    partitioned = (BYTES_BF16 + ADAM_BYTES) * params / world  # gradients and optimizer state
    weights = BYTES_BF16 * params * (1 if stage == 2 else 1 / world)
    return weights + partitioned + (weights if reference else 0.0)


def step_estimate(shape: Shape, workload: Workload, setup: Setup, stage: int, shared: bool, mfu: float,
                  batch: int, accumulation: int = 1, reference: bool = True) -> Dict[str, float]:
    """Per GPU: compute and communication seconds per optimizer step, examples/s and tokens/s (TRL's count).
    `reference=False` is a stored reference (`store add-reference`): no reference forward, nothing to gather."""
    examples = batch * accumulation
    compute = examples * example_flops(shape, workload, shared, reference) / (mfu * setup.peak_tflops * 1e12)
    volume = comm_bytes(shape.params(), stage, setup.world, accumulation, reference)
    comm = volume / (LINK_EFFICIENCY * setup.link_gb_per_s * GB)
    step = max(compute, comm)
    return {"compute_s": compute, "comm_s": comm, "examples_per_s": examples / step,
            "tokens_per_s": examples * workload.tokens(shared=False) / step,
            "bound": "compute" if compute >= comm else "comm"}


# -- tables -------------------------------------------------------------------------------------------------
def _table(header: Sequence[str], rows: List[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def flops_table() -> str:
    rows = []
    for shape in SHAPES:
        for work in WORKLOADS:
            plain, shared = example_flops(shape, work, False), example_flops(shape, work, True)
            rows.append([shape.name, f"{shape.params() / 1e9:.2f}B", f"{work.name} ({work.prompt}/{work.response}"
                         f"×{work.k})", f"{work.tokens(False):,} → {work.tokens(True):,}", f"{plain / 1e12:,.1f}",
                         f"{shared / 1e12:,.1f}", f"{plain / shared:.2f}×"])
    return _table(["model", "params", "example (P/R×K)", "tokens unshared → shared", "TFLOP unshared",
                   "TFLOP shared", "saving"], rows)


def comm_table(batch: int, accumulation: int, mfu: float) -> str:
    """ZeRO-2/3 traffic per GPU per step against the step's compute time (HH pairs, shared prompt)."""
    work, rows = WORKLOADS[0], []
    for shape in SHAPES:
        for setup in SETUPS:
            cells = [shape.name, setup.name]
            for stage in (2, 3):
                volume = comm_bytes(shape.params(), stage, setup.world, accumulation)
                est = step_estimate(shape, work, setup, stage, True, mfu, batch, accumulation)
                cells.append(f"{volume / GB:.1f} GB, {est['comm_s'] * 1e3:,.0f} ms")
            cells.append(f"{est['compute_s'] * 1e3:,.0f} ms")
            rows.append(cells)
    return _table(["model", "setup", "ZeRO-2 traffic, time", "ZeRO-3 traffic, time", "compute"], rows)


def throughput_table(batch: int, accumulation: int, mfu: float) -> str:
    """Expected pairs/s per GPU on HH pairs (unshared → shared) per ZeRO stage, with the model state per GPU."""
    work, rows = WORKLOADS[0], []
    for shape in SHAPES:
        for setup in SETUPS:
            cells = [shape.name, setup.name]
            for stage in (2, 3):
                state = model_state_bytes(shape.params(), stage, setup.world) / GB
                plain = step_estimate(shape, work, setup, stage, False, mfu, batch, accumulation)
                shared = step_estimate(shape, work, setup, stage, True, mfu, batch, accumulation)
                size = f"{state:,.0f} GB" if state >= 10 else f"{state:.1f} GB"
                cells.append(f"{size} ✗" if state > 80 else
                             f"{size}: {plain['examples_per_s']:.2f} → {shared['examples_per_s']:.2f}"
                             f" ({shared['tokens_per_s']:,.0f} tok/s, {shared['bound']})")
            rows.append(cells)
    return _table(["model", "setup", "ZeRO-2: state/GPU: pairs/s unshared → shared (tokens/s, bound)",
                   "ZeRO-3: the same"], rows)


# -- the peer check ---------------------------------------------------------------------------------------
MISTRAL_7B = Shape("Mistral-7B", layers=32, hidden=4096, heads=32, kv_heads=8, ffn=14336, vocab=32000)
# Wang & Hegde, "Accelerating DPO with Prefix Sharing" (arXiv:2410.20305), github.com/frankxwang/dpo-prefix-sharing
# README "Speedups": TRL-based DPOTrainer, Mistral-7B-Instruct, ZeRO-3, bf16, gradient checkpointing, 8 GPUs; the
# FlashAttention-3 baseline runs only on Hopper, hence H100. (dataset, median length, prefix/completion ratio,
# FA3 samples/s, Flex samples/s, Flex + prefix sharing samples/s). Length read as prompt + one response.
PEER_ROWS = [("HH-RLHF", 186, 2.15, 33.71, 30.25, 36.11), ("Capybara", 1160, 1.59, 8.38, 7.75, 11.90),
             ("MetaMath-DPO", 872, 3.91, 13.86, 13.02, 19.13), ("Ultrafeedback", 409, 0.42, 18.40, 17.31, 20.46)]
PEER_GPUS, H100_TFLOPS = 8, 989


def peer_check() -> List[Dict[str, float]]:
    """Per peer dataset: this model's predicted FLOP saving from sharing vs the measured speedup, and the MFU the
    FA3 baseline's samples/s implies (its recomputation forward not counted)."""
    out = []
    for name, length, ratio, fa3, flex, shared in PEER_ROWS:
        response = round(length / (1 + ratio))
        work = Workload(name, prompt=length - response, response=response)
        flops = example_flops(MISTRAL_7B, work, shared=False)
        out.append({"dataset": name, "prompt": work.prompt, "response": response,
                    "predicted_saving": flops / example_flops(MISTRAL_7B, work, shared=True),
                    "measured_vs_fa3": shared / fa3, "measured_vs_flex": shared / flex,
                    "fa3_mfu": fa3 * flops / PEER_GPUS / (H100_TFLOPS * 1e12)})
    return out


def peer_table() -> str:
    rows = [[r["dataset"], f"{r['prompt']}/{r['response']}", f"{r['predicted_saving']:.2f}×",
             f"{r['measured_vs_fa3']:.2f}× / {r['measured_vs_flex']:.2f}×", f"{r['fa3_mfu']:.1%}"]
            for r in peer_check()]
    return _table(["dataset", "P/R (median)", "predicted FLOP saving", "measured speedup vs FA3 / vs Flex",
                   "implied MFU of TRL + FA3"], rows)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scaling_model", description=__doc__.splitlines()[0])
    parser.add_argument("--mfu", type=float, default=0.35, help="assumed model FLOPs utilisation")
    parser.add_argument("--batch", type=int, default=8, help="examples per GPU per micro-batch")
    parser.add_argument("--accumulation", type=int, default=1, help="micro-batches per optimizer step")
    args = parser.parse_args(argv)
    print("FLOPs per example (policy forward + backward, live reference forward):\n")
    print(flops_table())
    print(f"\nZeRO traffic per GPU per optimizer step vs compute (HH pairs shared, {args.batch} pairs/GPU × "
          f"{args.accumulation} micro-batches, MFU {args.mfu:.0%}, links at {LINK_EFFICIENCY:.0%} of nominal):\n")
    print(comm_table(args.batch, args.accumulation, args.mfu))
    print(f"\nExpected throughput per GPU (HH pairs, MFU {args.mfu:.0%}; tokens counted TRL's way; ✗ = model state "
          "over 80 GB):\n")
    print(throughput_table(args.batch, args.accumulation, args.mfu))
    print("\nPeer check (arXiv:2410.20305, Mistral-7B, 8×H100, ZeRO-3):\n")
    print(peer_table())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
