"""Fixtures for the cluster-operation tests: one real, isolated Ray head per session (see raynodes.py)."""

from __future__ import annotations

import pytest

from raynodes import RayHead, run_cli, start_head  # tests/cluster/raynodes.py (pytest puts this dir on sys.path)


@pytest.fixture(scope="session")
def ray_head(tmp_path_factory) -> RayHead:
    """One real head for the whole session (head start ~5-8 s here), torn down by process group."""
    head = start_head(tmp_path_factory.mktemp("ray_head"))
    print(f"\n[ray_head] job API ready after {head.start_seconds:.1f}s at {head.url}")
    yield head
    head.stop()


@pytest.fixture
def cli():
    """Run `alignray <args>` in a subprocess: `cli(["job", "list"], env=...)`."""
    return run_cli
