"""nnU-Net's rules on hand-made fingerprints, against hand-computed values."""

from __future__ import annotations

import pytest

from fedseg.planning.fingerprint import Fingerprint
from fedseg.planning.network import feature_map_voxels, plan_network
from fedseg.planning.planner import PlanOptions, make_plan, median_resampled_shape, target_spacing


def _fp(cases: list[tuple[tuple[int, ...], tuple[float, ...]]], num_classes: int = 2) -> Fingerprint:
    """Hand-made: only geometry (and one foreground voxel per case at intensity 10)."""
    dims = len(cases[0][0])
    fp = Fingerprint(dims, 1, num_classes, num_cases=len(cases))
    for shape, spacing in cases:
        for a in range(dims):
            um = round(spacing[a] * 1000)
            fp.spacing[a][um] = fp.spacing[a].get(um, 0) + 1
            fp.shape[a][shape[a]] = fp.shape[a].get(shape[a], 0) + 1
            fp.extent[a][um * shape[a]] = fp.extent[a].get(um * shape[a], 0) + 1
        fp.crop_size[10000] = fp.crop_size.get(10000, 0) + 1
    fp.intensity = [{10: len(cases)}]
    fp.intensity_count, fp.intensity_sum, fp.intensity_sumsq = [len(cases)], [10.0 * len(cases)], [100.0 * len(cases)]
    fp.class_voxels = [100, 1] + [0] * (num_classes - 2)
    return fp


def test_anisotropic_axis_takes_the_10th_percentile() -> None:
    # z spacings 3, 5, 5, 5, 6 (median 5 > 3 x 0.8) and 20 slices (20 x 3 < 256): p10 = 3 + 0.4 x 2 = 3.8
    cases = [((256, 256, 20), (0.8, 0.8, z)) for z in (3.0, 5.0, 5.0, 5.0, 6.0)]
    spacing, rule = target_spacing(_fp(cases))
    assert spacing == pytest.approx([0.8, 0.8, 3.8])
    assert "10th percentile" in rule


def test_anisotropic_spacing_with_enough_slices_keeps_the_median() -> None:
    cases = [((256, 256, 100), (0.8, 0.8, z)) for z in (3.0, 5.0, 5.0, 5.0, 6.0)]  # 100 x 3 >= 256
    assert target_spacing(_fp(cases))[0] == pytest.approx([0.8, 0.8, 5.0])


def test_median_shape_after_resampling_rounds_per_case() -> None:
    # axis 0 extents 10 x 1.0 and 11 x 1.0 and 13 x 1.0 mm at target 2 mm: round(5), round(5.5)=6, round(6.5)=6
    fp = _fp([((10, 8), (1.0, 1.0)), ((11, 8), (1.0, 1.0)), ((13, 8), (1.0, 1.0))])
    assert median_resampled_shape(fp, [2.0, 1.0]) == [6.0, 8.0]


def test_feature_maps_of_nnunets_reference_unet_by_hand() -> None:
    # 64^3, 4 poolings: levels 64^3, 32^3, 16^3, 8^3, 4^3 with 32, 64, 128, 256, 320 features
    strides = [[2, 2, 2]] * 4
    enc = 2 * (32 * 64**3 + 64 * 32**3 + 128 * 16**3 + 256 * 8**3 + 320 * 4**3)
    dec = 3 * (32 * 64**3 + 64 * 32**3 + 128 * 16**3 + 256 * 8**3)
    assert feature_map_voxels([64, 64, 64], strides, 2) == enc + dec + 2 * 64**3 == 56_270_848


def test_isotropic_patch_topology_and_batch_by_hand() -> None:
    net = plan_network([1.0, 1.0, 1.0], [64.0, 64.0, 64.0], 2, 8.0, dataset_voxels=64**3 * 1000)
    assert net.patch_size == (64, 64, 64)
    assert net.pool_strides == [[2, 2, 2]] * 4 and net.kernels == [[3, 3, 3]] * 5
    assert net.batch_size == 20  # round(560e6 / 56_270_848 x 2) = round(19.90)
    small = plan_network([1.0, 1.0, 1.0], [64.0, 64.0, 64.0], 2, 8.0, dataset_voxels=64**3 * 10)
    assert small.batch_size == 2  # 5 % of 10 cases is half a patch: nnU-Net's minimum 2


def test_anisotropic_plan_by_hand() -> None:
    # spacing (4, 1, 1), shape (20, 160, 160): initial patch (102, 406, 406) clipped to (20, 160, 160);
    # axis 0 joins the pooling once the others reach 4 mm, and stops at 5 voxels
    fp = _fp([((20, 160, 160), (4.0, 1.0, 1.0))] * 1000)
    plan = make_plan(fp, PlanOptions(gpu_memory_gb=8))
    three_d = plan.configurations["3d_fullres"]
    assert three_d["spacing"] == [4.0, 1.0, 1.0]
    assert three_d["patch_size"] == [20, 160, 160]
    assert three_d["pool_strides"] == [[1, 2, 2], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2]]
    assert three_d["kernels"] == [[1, 3, 3], [1, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3], [3, 3, 3]]
    # batch round(560e6 / 150_384_000 x 2) = 7 (5 % of 1000 cases allows 50)
    assert three_d["feature_map_voxels"] == 150_384_000 and three_d["batch_size"] == 7
    fp.num_cases = 100  # 5 % of 100 cases: 2_560_000 voxels = 5 patches
    assert make_plan(fp, PlanOptions(gpu_memory_gb=8)).configurations["3d_fullres"]["batch_size"] == 5
    over = plan.overrides
    assert over["model"]["name"] == "dynunet" and over["train"]["patch_size"] == [20, 160, 160]
    assert over["data"]["preprocess"]["target_spacing"] == [4.0, 1.0, 1.0]
    assert over["data"]["preprocess"]["target_shape"] == [20, 160, 160]
    assert plan.configurations["2d"]["slice_axis"] == 0


def test_a_small_budget_shrinks_the_patch() -> None:
    fp = _fp([((64, 64, 64), (1.0, 1.0, 1.0))] * 50)
    big = make_plan(fp, PlanOptions(gpu_memory_gb=8)).configurations["3d_fullres"]
    small = make_plan(fp, PlanOptions(cpu_memory_gb=0.5)).configurations["3d_fullres"]
    assert big["patch_size"] == [64, 64, 64] and big["patch_shrink_steps"] == 0
    assert small["patch_shrink_steps"] > 0 and small["feature_map_voxels"] <= small["budget_voxels"]
    assert all(s <= b for s, b in zip(small["patch_size"], big["patch_size"], strict=True))


def test_normalisation_ct_window_and_nonzero_zscore() -> None:
    fp = _fp([((32, 32, 32), (1.0, 1.0, 1.0))] * 4)
    fp.intensity = [{k: 1 for k in range(-1000, 1000)}]  # integers -1000..999, one voxel each
    fp.intensity_count = [2000]
    ct = make_plan(fp, PlanOptions(modality="CT")).overrides["data"]["preprocess"]
    assert ct["normalize"] == "ct"
    assert ct["ct_window"] == pytest.approx([-1000 + 0.005 * 1999, -1000 + 0.995 * 1999])
    fp.crop_size = {6000: 3, 9000: 1}  # median 0.6 < 3/4
    assert make_plan(fp).overrides["data"]["preprocess"]["normalize"] == "zscore_nonzero"
    fp.crop_size = {8000: 4}
    assert make_plan(fp).overrides["data"]["preprocess"]["normalize"] == "zscore"


def test_2d_data_plans_2d() -> None:
    plan = make_plan(_fp([((256, 256), (1.0, 1.0))] * 40), PlanOptions(gpu_memory_gb=8))
    assert plan.configuration == "2d" and "3d_fullres" not in plan.configurations
    assert plan.overrides["train"]["patch_size"] == [256, 256]


def test_empty_fingerprint_is_refused() -> None:
    with pytest.raises(ValueError, match="no training case"):
        make_plan(Fingerprint(3, 1, 2))
