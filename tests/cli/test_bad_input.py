"""Bad input through the real CLI: each case must print one line `alignray <command>: error: ...` on stderr, exit 2,
show no traceback, and leave nothing half-written. Cases run as subprocesses, a few at a time, before the tests
that check them (one module fixture), so the whole suite costs about as much as its slowest few cases."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional

import pytest

from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[2]
PARALLEL = 3


class Case(NamedTuple):
    name: str
    argv: List[str]  # "{tmp}", "{tiny}", "{port}" are filled in when the case runs
    expect: str  # must appear in the error line (same placeholders)
    env: Dict[str, str] = {}
    intact: Optional[str] = None  # a store root whose versions must not change, or "run" for train's output_dir


def _train(name: str, overrides: List[str], expect: str, intact: Optional[str] = "run", **kw) -> Case:
    return Case(name, ["train", *overrides, f"output_dir={{tmp}}/runs/{name}"], expect, intact=intact, **kw)


CASES = [
    # train: data
    _train("train-data-missing", ["data.train=/no/such.jsonl"], "data.train=/no/such.jsonl: no such file or directory"),
    _train("train-data-empty-dir", ["data.train={tmp}/empty_dir", "model.path={tiny}"], "not a save_to_disk dataset"),
    _train("train-data-unknown-format", ["data.train={tmp}/notes.txt"], "notes.txt: unknown format"),
    _train("train-data-all-invalid", ["data.train={tmp}/invalid.jsonl", "model.path={tiny}"],
           "no valid rows, all 3 rejected (first: {tmp}/invalid.jsonl:1 unrecognised_columns"),
    _train("train-data-empty-file", ["data.train={tmp}/empty.jsonl", "model.path={tiny}"], "empty input (no rows)"),
    _train("train-data-store-too-new", ["data.train={tmp}/store_future", "model.path={tiny}"],
           "schema version 999 is newer than this alignray understands"),
    _train("train-eval-missing", ["data.eval={tmp}/nope.jsonl"], "data.eval={tmp}/nope.jsonl: no such file"),
    # train: models and tokenizers
    _train("train-model-empty-dir", ["model.path={tmp}/empty_dir"], "model.path={tmp}/empty_dir: the directory is empty"),
    _train("train-model-no-config", ["model.path={tmp}/model_noconfig"], "no config.json (not a Hugging Face model"),
    _train("train-model-config-no-type", ["model.path={tmp}/model_emptyconfig"], "config.json has no model_type"),
    _train("train-model-config-not-json", ["model.path={tmp}/model_badjson"], "config.json is not a readable JSON"),
    _train("train-model-corrupt-weights", ["model.path={tmp}/model_badweights"], "unreadable weights model.safetensors"),
    _train("train-model-no-weights", ["model.path={tmp}/model_noweights"], "model_noweights: no weights"),
    _train("train-model-is-file", ["model.path={tmp}/notes.txt"], "is a file, not a model directory"),
    _train("train-model-missing-dir", ["model.path={tmp}/no/such/model"], "model.path={tmp}/no/such/model: no such dir"),
    _train("train-model-hub-offline", ["model.path=someorg/not-cached"], "not available offline as a hub id"),
    _train("train-reference-missing", ["model.reference_path={tmp}/gone"], "model.reference_path={tmp}/gone: no such"),
    _train("train-tokenizer-empty", ["data.tokenizer={tmp}/empty_dir"], "data.tokenizer={tmp}/empty_dir: no tokenizer"),
    _train("train-model-without-tokenizer", ["model.path={tmp}/model_notok"], "set data.tokenizer=DIR"),
    # train: resume and config
    _train("train-resume-missing", ["resume={tmp}/no-ckpt"], "resume={tmp}/no-ckpt: no such checkpoint directory"),
    _train("train-resume-uncommitted", ["resume={tmp}/ckpt_uncommitted"], "is not a complete alignray checkpoint"),
    _train("train-config-value", ["train.micro_batch_size=0"], "train.micro_batch_size=0 must be a positive number"),
    _train("train-config-unknown-key", ["foo=1"], "Could not override 'foo'"),
    _train("train-config-unknown-objective", ["objective=nope"], "Could not find 'objective/nope'"),
    _train("train-config-choice", ["deepspeed.zero_stage=7"], "deepspeed.zero_stage=7 is not allowed"),
    _train("train-config-syntax", ["train.max_steps=["], "no viable alternative at input '['"),
    _train("train-kto-batch-of-one", ["objective=kto", "train.micro_batch_size=1"], "needs train.micro_batch_size >= 2"),
    _train("train-raco-bad-c", ["objective=raco", "objective.c=1.5"], "raco: c must be in [0, 1)"),
    _train("train-multi-bad-weights", ["objective=weighted_sum", "objective.weights=[-1,2]"], "weights must be non-negative"),
    _train("train-multi-bad-component", ["objective=raco", "objective.component=kto"], "must be a pairwise objective"),
    _train("train-multi-weights-vs-data", ["objective=raco", "objective.weights=[0.5,0.3,0.2]", "data.demo_train_rows=8",
                                         "model.path={tiny}"],
           "objective.weights has 3 entries but the data has 2 objectives (topic, brevity)", intact=None),
    _train("train-exact-gram-accumulation", ["objective=raco", "train.grad_accum=2"], "objective.gram=params"),
    # train: memory options (issue 14)
    _train("train-offload-params-zero2", ["deepspeed.offload_params=true"], "deepspeed.offload_params needs deepspeed.zero_stage=3"),
    _train("train-tiled-negative", ["model.tiled_logps_above=-1"], "model.tiled_logps_above=-1 must be a whole number >= 0"),
    _train("train-pack-negative", ["model.pack_tokens=-8"], "model.pack_tokens=-8 must be a whole number >= 0"),
    _train("train-sp-workers", ["train.sequence_parallel=3"], "train.sequence_parallel=3 must divide cluster.num_workers=2"),
    _train("train-sp-heads", ["cluster.num_workers=3", "train.sequence_parallel=3", "model.path={tiny}"],
           "train.sequence_parallel=3 must divide the model's attention heads (num_attention_heads=4"),
    _train("train-sp-reward-model", ["objective=bt_reward", "train.sequence_parallel=2"], "does not support objective=bt_reward"),
    _train("train-checkpointing-unsupported", ["model.gradient_checkpointing=true", "model.path={tmp}/model_nockpt"],
           "model.gradient_checkpointing=true, but OpenAIGPTLMHeadModel"),
    _train("train-pro-adapter-missing", ["objective=pro", "objective.adapter={tmp}/empty_dir"],
           "objective.adapter={tmp}/empty_dir: not an orchestrator adapter"),
    _train("train-pro-bad-temperature", ["objective=pro", "objective.temperature=0"], "pro: temperature must be > 0"),
    _train("train-pro-pairwise-store", ["objective=pro", "data.train={tmp}/good.jsonl", "model.path={tiny}"],
           "no valid rows", intact=None),
    _train("train-poft-no-aligned-models", ["objective=poft"], "data.aligned_models"),
    _train("train-udm-not-bco", ["objective=dpo", "data.udm=true"], "data.udm=true needs objective=bco"),
    _train("train-lora-negative-rank", ["model.lora.r=-4"], "model.lora.r=-4 must be a whole number >= 0"),
    _train("train-lora-no-target-modules", ["model.lora.r=8", "model.lora.target_modules=[attn_qkv]", "model.path={tiny}"],
           "model.lora.target_modules=['attn_qkv']: Target modules"),
    _train("train-lora-adapter-mismatch", ["model.lora.adapter={tmp}/adapter_wide", "model.path={tiny}"],
           "model.lora.adapter={tmp}/adapter_wide does not match model.path={tiny}"),
    _train("train-lora-not-an-adapter", ["model.lora.adapter={tmp}/empty_dir", "model.path={tiny}"],
           "no adapter_config.json"),
    _train("train-dove-joint-stored", ["objective=dove", "objective.joint=true", "data.use_stored_reference=require"],
           "which a store does not hold"),
    _train("train-oversubscribed", ["cluster.num_workers=64"], "64 workers"),
    # store
    Case("store-build-missing", ["store", "build", "{tmp}/nope.jsonl", "--out", "{tmp}/never"], "nope.jsonl: no such file"),
    Case("store-build-unknown-format", ["store", "build", "{tmp}/notes.txt", "--out", "{tmp}/never"], "unknown format"),
    Case("store-build-all-invalid", ["store", "build", "{tmp}/invalid.jsonl", "--out", "{tmp}/store2", "--quiet"],
         "every row's reason is in {tmp}/store2/rejects.failed-build.jsonl", intact="{tmp}/store2"),
    Case("store-build-bad-map", ["store", "build", "{tmp}/good.jsonl", "--out", "{tmp}/never", "--map", "nonsense"],
         "--map expects COL=FIELD"),
    Case("store-build-tokenizer-missing", ["store", "build", "{tmp}/good.jsonl", "--out", "{tmp}/never",
                                           "--tokenizer", "{tmp}/no-tok"], "no-tok: tokenizer directory not found"),
    Case("store-build-tokenizer-empty", ["store", "build", "{tmp}/good.jsonl", "--out", "{tmp}/never",
                                         "--tokenizer", "{tmp}/empty_dir"], "empty_dir: cannot load tokenizer"),
    Case("store-build-not-gzip", ["store", "build", "{tmp}/garbage.jsonl.gz", "--out", "{tmp}/never", "--quiet"],
         "garbage.jsonl.gz: cannot decompress"),
    Case("store-build-not-parquet", ["store", "build", "{tmp}/garbage.parquet", "--out", "{tmp}/never", "--quiet"],
         "garbage.parquet: not a readable Parquet file"),
    Case("store-build-kind", ["store", "build", "{tmp}/good.jsonl", "--out", "{tmp}/never", "--kind", "triples"],
         "argument --kind: invalid choice: 'triples'"),
    Case("store-info-not-a-store", ["store", "info", "{tmp}/empty_dir"], "empty_dir: not a store (no CURRENT file)"),
    Case("store-info-dangling-current", ["store", "info", "{tmp}/store_dangling"], "CURRENT names 'v000009'"),
    Case("store-info-too-new", ["store", "info", "{tmp}/store_future"], "schema version 999 is newer"),
    Case("store-info-bad-manifest", ["store", "info", "{tmp}/store_badmanifest"], "unreadable manifest"),
    Case("store-sample-not-a-store", ["store", "sample", "{tmp}/nope"], "nope: not a store"),
    Case("store-verify-not-a-store", ["store", "verify", "{tmp}/nope"], "nope: not a store"),
    Case("store-add-reference-not-a-store", ["store", "add-reference", "{tmp}/nope", "--model", "{tiny}"], "not a store"),
    Case("store-add-reference-bad-model", ["store", "add-reference", "{tmp}/store", "--model", "{tmp}/empty_dir"],
         "--model={tmp}/empty_dir: the directory is empty", intact="{tmp}/store"),
    # eval / generate: refused before Ray starts, nothing written to --out
    Case("eval-model-not-a-model", ["eval", "{tmp}/model_noconfig", "--data", "{tmp}/good.jsonl", "--out", "{tmp}/never"],
         "MODEL={tmp}/model_noconfig: no config.json (not a Hugging Face model directory)"),
    Case("eval-data-no-usable-rows", ["eval", "{tiny}", "--data", "{tmp}/invalid.jsonl", "--out", "{tmp}/never"],
         "--data {tmp}/invalid.jsonl: no usable rows"),
    Case("eval-data-missing", ["eval", "{tiny}", "--data", "{tmp}/nope.jsonl", "--out", "{tmp}/never"],
         "--data={tmp}/nope.jsonl: no such file or directory"),
    Case("eval-reference-other-tokenizer", ["eval", "{tiny}", "--data", "{tmp}/good.jsonl", "--reference",
                                            "{tmp}/model_othertok", "--out", "{tmp}/never"],
         "--reference={tmp}/model_othertok: its tokenizer differs from the model's"),
    Case("eval-judge-not-a-reward-model", ["eval", "{tiny}", "--data", "{tmp}/good.jsonl", "--reference", "{tiny}",
                                           "--judge", "{tiny}", "--out", "{tmp}/never"], "not a reward model export"),
    Case("generate-model-not-a-model", ["generate", "{tmp}/model_badjson", "--prompts", "{tmp}/good.jsonl", "--out",
                                        "{tmp}/never/samples.jsonl"], "config.json is not a readable JSON"),
    Case("generate-no-usable-prompts", ["generate", "{tiny}", "--prompts", "{tmp}/invalid.jsonl", "--out",
                                        "{tmp}/never/samples.jsonl"], "invalid.jsonl: no usable prompts"),
    # submit / job
    Case("submit-no-address", ["submit", "--", "objective=dpo"], "no cluster address: pass --address"),
    Case("submit-entrypoint-and-overrides", ["submit", "--entrypoint", "true", "--", "objective=dpo"],
         "give either --entrypoint or train overrides"),
    Case("submit-bad-env", ["submit", "--env", "NOEQUALS", "--", "objective=dpo"], "--env expects KEY=VALUE"),
    Case("submit-missing-working-dir", ["submit", "--address", "http://127.0.0.1:{port}", "--working-dir", "{tmp}/nope",
                                        "--", "objective=dpo"], "--working-dir {tmp}/nope is not a directory"),
    Case("job-status-unreachable", ["job", "status", "--address", "http://127.0.0.1:{port}", "raysubmit_1"],
         "cannot reach the Ray job API at http://127.0.0.1:{port}", env={"RAY_AUTH_TOKEN": "x"}),
    Case("job-logs-token-mode-no-token", ["job", "logs", "--address", "http://127.0.0.1:{port}", "raysubmit_1"],
         "RAY_AUTH_MODE=token but no auth token was found", env={"RAY_AUTH_MODE": "token"}),
    Case("job-list-token-file-missing", ["job", "list", "--address", "http://127.0.0.1:{port}"],
         "RAY_AUTH_TOKEN_PATH={tmp}/no-token is missing", env={"RAY_AUTH_TOKEN_PATH": "{tmp}/no-token"}),
    Case("job-stop-bad-address", ["job", "stop", "--address", "headnode", "raysubmit_1"], "Invalid address format",
         env={"RAY_AUTH_TOKEN": "x"}),
    Case("job-stop-no-id", ["job", "stop", "--address", "http://127.0.0.1:{port}"],
         "the following arguments are required: job_id"),
    Case("unknown-command", ["trian", "objective=dpo"], "unknown command 'trian'"),
]
USAGE_ERRORS = {"store-build-kind", "job-stop-no-id"}  # argparse's own message: usage line + error line


def _fill(text: str, world: Dict[str, str]) -> str:
    return text.format(**world)


def _make_inputs(tmp: Path, tiny: str) -> None:
    """The bad (and the few good) inputs the cases point at."""
    from transformers import OpenAIGPTConfig

    from framework.model.demo import demo_tokenizer_path, train_demo_tokenizer
    from framework.store import build_store

    (tmp / "empty_dir").mkdir()
    (tmp / "home").mkdir()
    (tmp / "notes.txt").write_text("not data\n")
    (tmp / "empty.jsonl").write_text("")
    (tmp / "garbage.jsonl.gz").write_bytes(b"this is not gzip")
    (tmp / "garbage.parquet").write_text("this is not parquet")
    (tmp / "invalid.jsonl").write_text("".join(json.dumps({"question": f"q{i}"}) + "\n" for i in range(3)))
    good = [{"prompt": f"question {i}", "chosen": "yes", "rejected": "no"} for i in range(4)]
    (tmp / "good.jsonl").write_text("".join(json.dumps(row) + "\n" for row in good))
    for name in ("store", "store2"):
        build_store([str(tmp / "good.jsonl")], str(tmp / name), tokenizer=demo_tokenizer_path(), num_proc=1,
                    progress=False)
    for name, manifest in (("store_future", None), ("store_badmanifest", "{truncated")):
        shutil.copytree(tmp / "store", tmp / name)
        path = next((tmp / name).glob("v*/manifest.json"))
        future = dict(json.loads(path.read_text()), schema_version=999)
        path.write_text(manifest or json.dumps(future))
    (tmp / "store_dangling").mkdir()
    (tmp / "store_dangling" / "CURRENT").write_text("v000009\n")
    (tmp / "model_noconfig").mkdir()
    (tmp / "model_noconfig" / "README.md").write_text("weights elsewhere\n")
    (tmp / "model_emptyconfig").mkdir()
    (tmp / "model_emptyconfig" / "config.json").write_text("{}")
    (tmp / "model_badjson").mkdir()
    (tmp / "model_badjson" / "config.json").write_text("{not json")
    for name in ("model_badweights", "model_noweights", "model_notok"):
        shutil.copytree(tiny, tmp / name)
    (tmp / "model_badweights" / "model.safetensors").write_bytes(b"garbage")
    (tmp / "model_noweights" / "model.safetensors").unlink()
    for file in (tmp / "model_notok").glob("tokenizer*"):
        file.unlink()
    _make_mismatched_adapter(tmp)
    shutil.copytree(tiny, tmp / "model_othertok")  # same weights, another tokenizer: log-probs not comparable
    train_demo_tokenizer(tmp / "model_othertok", vocab_size=300)
    shutil.copytree(tiny, tmp / "model_nockpt")  # an architecture without gradient checkpointing (GPT-1)
    OpenAIGPTConfig(n_layer=1, n_embd=8, n_head=2).save_pretrained(tmp / "model_nockpt")
    (tmp / "ckpt_uncommitted").mkdir()
    (tmp / "ckpt_uncommitted" / "rank-0.pt").write_bytes(b"")


def _make_mismatched_adapter(tmp: Path) -> None:
    """A LoRA adapter saved for a wider model than the tiny one the cases train."""
    from framework.config import LoraConfig
    from framework.model.demo import build_tiny_llama, demo_tokenizer_path
    from framework.model.loading import load_causal_lm
    from framework.model.lora import apply_lora

    wide = build_tiny_llama(tmp / "model_wide", demo_tokenizer_path(), hidden_size=32)
    apply_lora(load_causal_lm(str(wide)), LoraConfig(r=4)).save_pretrained(tmp / "adapter_wide")


def _env(world: Dict[str, str], extra: Dict[str, str]) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER", "RAY_AUTH", "ALIGNRAY_DEBUG", "HYDRA_"))}
    env.update(PYTHONPATH=str(REPO), HOME=world["tmp"] + "/home", HF_HUB_OFFLINE="1", DS_ACCELERATOR="cpu")
    env.update({k: _fill(v, world) for k, v in extra.items()})
    return env


def run(argv: List[str], world: Dict[str, str], env: Dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.cli", *[_fill(a, world) for a in argv]], capture_output=True,
                          text=True, timeout=180, env=_env(world, env), cwd=world["tmp"])


def _snapshot(root: Path) -> Dict[str, str]:
    return {p.name: (p.read_text() if p.is_file() else "dir") for p in root.iterdir()} if root.exists() else {}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: str) -> Dict[str, str]:
    tmp = tmp_path_factory.mktemp("bad-input")
    _make_inputs(tmp, tiny_model_dir)
    return {"tmp": str(tmp), "tiny": tiny_model_dir, "port": str(free_port())}


@pytest.fixture(scope="module")
def results(world: Dict[str, str]) -> Dict[str, tuple]:
    """Every case's (result, store snapshot before, store snapshot after), run PARALLEL at a time."""
    def one(case: Case) -> tuple:
        root = Path(_fill(case.intact, world)) if case.intact and case.intact != "run" else None
        before = _snapshot(root) if root else None
        return run(case.argv, world, case.env), before, _snapshot(root) if root else None

    with ThreadPoolExecutor(PARALLEL) as pool:
        return dict(zip([c.name for c in CASES], pool.map(one, CASES)))


def _assert_run_not_half_written(output_dir: Path) -> None:
    """A failed train leaves no export, no summary, no committed checkpoint and no store version or temp dir."""
    assert not (output_dir / "export").exists() and not (output_dir / "summary.json").exists()
    assert not list(output_dir.glob("ray/**/COMMITTED.json"))
    for store in output_dir.glob("store/*"):
        assert not (store / "CURRENT").exists() and not list(store.glob(".tmp-*")) and not list(store.glob("v0*"))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_clear_line(case: Case, results: Dict[str, tuple], world: Dict[str, str]):
    result, before, after = results[case.name]
    stderr = result.stderr
    assert result.returncode == 2, (result.returncode, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if case.name in USAGE_ERRORS:  # argparse: its usage, then `alignray <command> <sub>: error: ...`
        assert lines[0].startswith("usage: alignray") and lines[-1].startswith("alignray ") and ": error:" in lines[-1]
    else:
        command = "" if case.name == "unknown-command" else " " + case.argv[0]
        assert lines[-1].startswith(f"alignray{command}: error:"), lines[-1]
        # Train may show the store build's progress bar first (one \r-updated line); nothing else may precede.
        assert all(line.startswith("store build:") for line in lines[:-1]), stderr
    assert _fill(case.expect, world) in lines[-1], lines[-1]
    if case.intact == "run":
        _assert_run_not_half_written(Path(world["tmp"]) / "runs" / case.name)
    elif case.intact:
        new = set(after) - set(before)
        assert {k: v for k, v in after.items() if k in before} == before, "an existing version or CURRENT changed"
        assert new <= {"rejects.failed-build.jsonl"}, f"left behind: {new}"
    assert not (Path(world["tmp"]) / "never").exists()


def test_the_suite_is_large_enough():
    assert len(CASES) >= 30 and len({c.name for c in CASES}) == len(CASES)


def test_all_rejected_store_build_keeps_its_rejects(results: Dict[str, tuple], world: Dict[str, str]):
    rejects = Path(world["tmp"]) / "store2" / "rejects.failed-build.jsonl"
    rows = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [row["line"] for row in rows] == [1, 2, 3] and {row["reason"] for row in rows} == {"unrecognised_columns"}


@pytest.mark.parametrize("how", ["env", "flag-before", "flag-after"])
def test_debug_shows_the_traceback(how: str, world: Dict[str, str]):
    argv = ["store", "info", "{tmp}/nope"]
    argv = {"env": argv, "flag-before": ["--debug", *argv], "flag-after": [*argv, "--debug"]}[how]
    result = run(argv, world, {"ALIGNRAY_DEBUG": "1"} if how == "env" else {})
    assert result.returncode == 2
    assert "Traceback" in result.stderr and "StoreError" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("alignray store: error:")
