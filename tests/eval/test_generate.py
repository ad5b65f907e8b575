"""`alignray generate`: seeded per row on Ray workers, so 1 and 2 workers give identical samples."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_samples_do_not_depend_on_the_number_of_workers(tmp_path, tiny_model_dir, ray_local):
    from framework.cluster.generate import generate, generation_rows, read_prompts, write_jsonl_atomic

    rows = [{"prompt": f"tell me about cats {i}"} for i in range(5)]
    rows.append({"prompt": [{"role": "user", "content": "and dogs?"}]})
    rows.append({"prompt": "ignored", "chosen": "a", "rejected": "b"})  # preference rows give their prompt too
    source = tmp_path / "prompts.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompts = read_prompts(str(source))
    assert len(prompts) == 7 and prompts[5][1] and not prompts[0][1]
    settings = dict(k=3, max_new_tokens=6, temperature=1.0, seed=11)
    one = generate(tiny_model_dir, prompts, num_workers=1, **settings)
    two = generate(tiny_model_dir, prompts, num_workers=2, **settings)
    assert one == two and len(one) == 7 and all(len(samples) == 3 for samples in one)
    assert len({s for samples in one for s in samples}) > 7  # really sampled: rows and draws differ
    assert generate(tiny_model_dir, prompts, num_workers=2, **dict(settings, seed=12)) != one
    out = tmp_path / "out" / "samples.jsonl"
    write_jsonl_atomic(str(out), generation_rows(prompts, one, {"seed": 11}))
    written = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["row"] for r in written] == list(range(7)) and written[5]["prompt"] == rows[5]["prompt"]
    assert written[0]["samples"] == one[0] and written[0]["settings"] == {"seed": 11}
    assert [p.name for p in out.parent.iterdir()] == ["samples.jsonl"]  # no temp file left behind


def test_generate_cli_on_two_workers(tmp_path, tiny_model_dir):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from framework import demo_data

    source = demo_data.write_jsonl(demo_data.pairs(4, seed=3), tmp_path / "pairs.jsonl")
    out = tmp_path / "samples.jsonl"
    argv = ["generate", tiny_model_dir, "--prompts", str(source), "--out", str(out), "-n", "2", "--max-new-tokens", "5",
            "--temperature", "0.8", "--seed", "7", "--num-workers", "2"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-m", "launch.cli", *argv], capture_output=True, text=True, timeout=300,
                            env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    prompts = [json.loads(line)["prompt"] for line in source.read_text().splitlines()]
    assert [r["prompt"] for r in rows] == prompts and all(len(r["samples"]) == 2 for r in rows)
    assert rows[0]["settings"] == {"model": tiny_model_dir, "n": 2, "max_new_tokens": 5, "temperature": 0.8, "seed": 7,
                                   "max_prompt_length": 256}
    assert "wrote 4 prompts x 2 samples" in result.stdout
