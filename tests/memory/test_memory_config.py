"""The memory keys compose from every deepspeed group, reach DeepSpeed's config, and bad values fail validation."""

from __future__ import annotations

import pytest

from framework.config import ConfigError
from tests.conftest import compose


@pytest.mark.parametrize("group", ["zero1", "zero2", "zero3"])
def test_groups_carry_the_memory_keys(group):
    cfg = compose([f"deepspeed={group}"])
    assert cfg.deepspeed.offload_params is False and cfg.model.gradient_checkpointing is False
    assert cfg.model.tiled_logps_above == 1024 and cfg.train.sequence_parallel == 1


def test_offload_params_reaches_the_zero3_config():
    from framework.engine.seam import deepspeed_config

    cfg = compose(["deepspeed=zero3", "deepspeed.offload_params=true", "deepspeed.offload_optimizer=true"])
    zero = deepspeed_config(cfg.deepspeed, cfg.train, world_size=2)["zero_optimization"]
    assert zero["offload_param"] == {"device": "cpu"} and zero["offload_optimizer"] == {"device": "cpu"}
    reference = deepspeed_config(cfg.deepspeed, cfg.train, world_size=2, with_optimizer=False)["zero_optimization"]
    assert reference["offload_param"] == {"device": "cpu"} and "offload_optimizer" not in reference


@pytest.mark.parametrize("overrides, message", [
    (["deepspeed.offload_params=true"], "needs deepspeed.zero_stage=3"),
    (["train.sequence_parallel=3"], "must divide cluster.num_workers=2"),
    (["train.sequence_parallel=0"], "must be a positive number"),
    (["objective=bt_reward", "train.sequence_parallel=2"], "does not support objective=bt_reward"),
    (["model.tiled_logps_above=-5"], "must be a whole number >= 0"),
])
def test_bad_memory_options_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        compose(overrides)
