import pytest
import torch

from framework.objectives import build_objective

from .helpers import grad_of, stats, tensor


def test_hand_value_and_reference_free():
    logps = tensor([[-10.0, -10.5], [-3.0, -20.0]], requires_grad=True)
    obj = build_objective("slic", delta=1.0, sft_weight=0.1)
    assert not obj.needs_reference
    out = obj.loss(stats(logps), None, {})
    # calibration: max(0, 1 − (−10) + (−10.5)) = 0.5; max(0, 1 − 17) = 0; regulariser −0.1·ℓ_w
    torch.testing.assert_close(out.losses, tensor([0.5 + 1.0, 0.0 + 0.3]))
    torch.testing.assert_close(grad_of(out.losses, logps), tensor([[-1.1, 1.0], [-0.1, 0.0]]))
    torch.testing.assert_close(out.metrics["calibration_loss"], tensor([0.5, 0.0]))


def test_validation():
    with pytest.raises(ValueError, match="delta"):
        build_objective("slic", delta=0.0)
    with pytest.raises(ValueError, match="sft_weight"):
        build_objective("slic", sft_weight=-1.0)
