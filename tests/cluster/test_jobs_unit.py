"""Job-submission glue without a cluster: token and address resolution, runtime env, entrypoint, CLI errors."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from framework.cluster import jobs


def test_token_env_beats_path_and_default(tmp_path: Path):
    token_file = tmp_path / "tok"
    token_file.write_text("from-file\n")
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("from-default")
    env = {"RAY_AUTH_TOKEN": " from-env ", "RAY_AUTH_TOKEN_PATH": str(token_file)}
    assert jobs.resolve_auth_token(env, home=tmp_path) == jobs.AuthToken("from-env", "RAY_AUTH_TOKEN")
    env.pop("RAY_AUTH_TOKEN")
    assert jobs.resolve_auth_token(env, home=tmp_path).value == "from-file"  # stripped like Ray does
    assert jobs.resolve_auth_token({}, home=tmp_path) == jobs.AuthToken(
        "from-default", str(tmp_path / ".ray" / "auth_token"))


def test_token_absent_disabled_and_broken_path(tmp_path: Path):
    assert jobs.resolve_auth_token({}, home=tmp_path) is None
    assert jobs.resolve_auth_token({"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": "x"}, home=tmp_path) is None
    (tmp_path / "empty").write_text("  \n")
    for path in (tmp_path / "missing", tmp_path / "empty"):
        with pytest.raises(jobs.JobsError, match="RAY_AUTH_TOKEN_PATH"):
            jobs.resolve_auth_token({"RAY_AUTH_TOKEN_PATH": str(path)}, home=tmp_path)


def test_address_order():
    assert jobs.resolve_address("http://a:8265/", {"RAY_ADDRESS": "http://b:8265"}) == "http://a:8265"
    env = {"RAY_ADDRESS": "http://b:8265", "RAY_API_SERVER_ADDRESS": "http://c:8265"}
    assert jobs.resolve_address(None, env) == "http://c:8265"
    assert jobs.resolve_address(None, {"RAY_ADDRESS": "http://b:8265"}) == "http://b:8265"
    with pytest.raises(jobs.JobsError, match="no cluster address"):
        jobs.resolve_address(None, {})


def test_train_entrypoint_quotes_overrides():
    overrides = ["objective=dpo", "output_dir=/shared/run 1", "train.tags=[a,b]"]
    command = jobs.train_entrypoint(overrides)
    assert shlex.split(command) == ["python", "-m", "launch.cli", "train", *overrides]


def test_runtime_env_uploads_project_without_heavy_dirs(tmp_path: Path):
    root = jobs.project_root()
    assert root is not None and (root / "launch" / "cli.py").is_file()
    runtime_env = jobs.build_runtime_env(root, {"OMP_NUM_THREADS": "1"})
    assert runtime_env["working_dir"] == str(root)
    assert {".venv", ".git", "runs/", "outputs/", "benchmarks/results/", "docker/secrets/"} <= set(
        runtime_env["excludes"])
    assert runtime_env["env_vars"] == {"OMP_NUM_THREADS": "1", "RAY_OVERRIDE_JOB_RUNTIME_ENV": "1"}
    assert "working_dir" not in jobs.build_runtime_env(None)
    with pytest.raises(jobs.JobsError, match="not a directory"):
        jobs.build_runtime_env(tmp_path / "nope")


def test_relative_outputs_are_flagged():
    flagged = jobs.relative_output_overrides(["output_dir=runs/x", "output_dir=/shared/x", "output_dir=s3://b/x",
                                              "objective=dpo"])
    assert flagged == ["output_dir=runs/x"]


def test_cli_unreachable_address_is_one_clear_line(cli, tmp_path: Path):
    import socket

    with socket.socket() as sock:  # a port that was just free: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RAY_AUTH_TOKEN": "x"}
    result = cli(["job", "list", "--address", f"http://127.0.0.1:{port}"], env=env, timeout=120)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"alignray job: error: cannot reach the Ray job API at http://127.0.0.1:{port} (ConnectionError)")


def test_cli_needs_an_address(cli, tmp_path: Path):
    result = cli(["submit", "--", "objective=dpo"], env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert result.returncode == 2
    assert "no cluster address" in result.stderr and "Traceback" not in result.stderr


def test_cli_token_mode_without_token_fails_before_any_request(cli, tmp_path: Path):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "RAY_AUTH_MODE": "token"}
    result = cli(["job", "list", "--address", "http://127.0.0.1:9"], env=env)  # port 9: nothing may be contacted
    assert result.returncode == 2
    assert result.stderr.strip() == ("alignray job: error: RAY_AUTH_MODE=token but no auth token was found "
                                     "(set RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or write ~/.ray/auth_token)")
