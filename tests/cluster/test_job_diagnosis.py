"""`jobs.diagnose_failure`: a failed job's message or log names the missing import and how to fix it."""

from __future__ import annotations

from framework.cluster.jobs import diagnose_failure

RAY_MESSAGE = ("Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n"
               "  File \"<frozen importlib._bootstrap>\", line 1140, in _find_and_load_unlocked\n"
               "ModuleNotFoundError: No module named '{module}'\n")


def test_missing_alignray_dependency_is_explained_in_one_line():
    reason = diagnose_failure(RAY_MESSAGE.format(module="hydra"))
    assert reason is not None and "\n" not in reason
    assert reason.startswith("the job's Python cannot import 'hydra'")
    assert "alignray environment" in reason and "docker/" in reason


def test_submodule_of_a_dependency_counts():
    assert "'torch.distributed'" in diagnose_failure(RAY_MESSAGE.format(module="torch.distributed"))


def test_other_failures_are_not_diagnosed():
    assert diagnose_failure(RAY_MESSAGE.format(module="my_own_helpers")) is None  # the user's code, not the head
    assert diagnose_failure("Job entrypoint command failed with exit code 3") is None
