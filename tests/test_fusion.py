"""ceT1 + T2: which features each estimate sees, and how estimates become one field per group."""

from __future__ import annotations

import pytest
import torch

from remind2reg.inference.config import RegistrationConfig
from remind2reg.inference.settings import SettingsError
from remind2reg.inference.stages.deformable import (
    Estimate,
    convex_estimates,
    estimate_sources,
    fuse,
)
from remind2reg.inference.stages.features import Features
from remind2reg.inference.stages.transforms import Alignment, primary_sequence, sequence_groups

BOTH = ("0001", "0002")


@pytest.mark.parametrize(
    ("fusion", "groups", "sources"),
    [
        ("joint", (BOTH,), (BOTH,)),
        ("primary", (BOTH,), (("0001",),)),
        ("max", (BOTH,), (("0001",), ("0002",))),
        ("mean", (BOTH,), (("0001",), ("0002",))),
        ("none", (("0001",), ("0002",)), (("0001",), ("0002",))),
    ],
)
def test_groups_and_sources_of_each_fusion(fusion, groups, sources):
    assert sequence_groups(BOTH, fusion) == groups
    assert estimate_sources(tuple(Alignment(g) for g in groups), fusion) == sources


def test_primary_sequence_is_cet1_when_present_else_t2():
    assert primary_sequence(("0002", "0001")) == "0001"
    assert primary_sequence(("0002",)) == "0002"
    with pytest.raises(ValueError, match="without sequences"):
        primary_sequence(())


def test_fuse_is_the_elementwise_max_or_mean_and_shares_a_primary_field():
    a = torch.tensor([1.0, -2.0, 3.0]).reshape(1, 3, 1, 1, 1)
    b = torch.tensor([0.5, 1.0, 4.0]).reshape(1, 3, 1, 1, 1)
    group = (Alignment(BOTH),)
    per_sequence = (Estimate(("0001",), a), Estimate(("0002",), b))
    (fused,) = fuse(group, per_sequence, "max")
    assert fused.disp.flatten().tolist() == [1.0, 1.0, 4.0]
    (fused,) = fuse(group, per_sequence, "mean")
    assert fused.disp.flatten().tolist() == [0.75, -0.5, 3.5]
    (shared,) = fuse(group, (Estimate(("0001",), a),), "primary")
    assert shared.modalities == BOTH and torch.equal(shared.disp, a)
    with pytest.raises(ValueError, match="2 estimates"):
        fuse(group, per_sequence, "primary")


def _features(seed: int, shape=(24, 24, 24)) -> Features:
    g = torch.Generator().manual_seed(seed)
    us = torch.rand(1, 12, *shape, generator=g)
    cet1 = torch.roll(us, 1, dims=2) + 0.1 * torch.rand(1, 12, *shape, generator=g)  # US shifted 1 voxel
    t2 = torch.rand(1, 12, *shape, generator=g)
    return Features(us, {"0001": cet1, "0002": t2})


def test_primary_estimate_ignores_t2_and_joint_does_not():
    """Under ``primary`` the field is the ceT1-only field, bit for bit, whatever the T2 holds;
    under ``joint`` the T2 changes it (so this test would see primary silently become joint)."""
    settings = RegistrationConfig().convex
    features = _features(0)
    other_t2 = Features(features.us, {"0001": features.mr["0001"], "0002": _features(1).mr["0002"]})
    mask = torch.ones(1, 1, 24, 24, 24)
    group, cet1_only = (Alignment(BOTH),), (Alignment(("0001",)),)
    (reference,) = convex_estimates(features, mask, cet1_only, "none", settings)
    for f in (features, other_t2):
        (estimate,) = convex_estimates(f, mask, group, "primary", settings)
        assert estimate.sources == ("0001",) and torch.equal(estimate.disp, reference.disp)
    (joint_a,) = convex_estimates(features, mask, group, "joint", settings)
    (joint_b,) = convex_estimates(other_t2, mask, group, "joint", settings)
    assert not torch.equal(joint_a.disp, joint_b.disp)


def test_fusion_is_validated_when_read():
    assert RegistrationConfig.from_dict({"fusion": "primary"}).fusion == "primary"
    with pytest.raises(SettingsError, match="fusion"):
        RegistrationConfig.from_dict({"fusion": "ceT1"})
