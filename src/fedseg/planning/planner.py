"""The server's half of federated planning: nnU-Net v2's rules applied to a merged fingerprint.

Every decision is recorded with the rule behind it (:class:`Decision`); the chosen configuration's
decisions are fedseg config keys (:attr:`Plan.overrides`), which ``fedseg run --plans`` applies
under the config file and ``--set`` (:mod:`fedseg.planning.plans_file`).

Rules (*MIC-DKFZ/nnUNet: nnunetv2/experiment_planning/experiment_planners/default_experiment_planner.py*):

* target spacing: the median spacing per axis; if the coarsest axis's median spacing is more than
  3x every other's *and* its median size times 3 is below every other axis's median size, that
  axis takes the 10th percentile of its spacings instead (at least the largest other spacing
  + 1e-5);
* axes are transposed so the coarsest comes first (patch-shrinking ties follow nnU-Net's order);
* median shape after resampling: the per-axis median of ``round(shape * spacing / target)``;
* patch size, topology and batch size: :func:`fedseg.planning.network.plan_network`;
* normalisation: CT channels -> clip to the foreground's 0.5/99.5 percentiles (fedseg:
  ``normalize: ct`` with that window); other channels -> per-image z-score, inside the non-zero
  mask (``zscore_nonzero``) when the median non-zero bounding box is under 3/4 of the image;
* 3D data -> ``3d_fullres`` (nnU-Net plans it whenever the median shape has no axis of 1 and picks
  2D vs 3D by cross-validation, which planning cannot do; the ``2d`` plan is written beside it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from fedseg.planning.fingerprint import Fingerprint, PlanError, median_of_counts, percentile_of_counts
from fedseg.planning.network import REFERENCE_GB, NetworkPlan, plan_network

__all__ = ["ANISO_THRESHOLD", "Decision", "Plan", "PlanOptions", "target_spacing", "median_resampled_shape",
           "make_plan"]

ANISO_THRESHOLD = 3.0
"""nnU-Net's ``ANISO_THRESHOLD``."""
_MASK_NORM_THRESHOLD = 0.75


@dataclass(frozen=True)
class Decision:
    """One planned value and why."""

    key: str
    value: Any
    rule: str


@dataclass(frozen=True)
class PlanOptions:
    """What the server plans for: ``gpu_memory_gb`` (a GPU's memory; ``None``: CPU training under
    ``cpu_memory_gb``), the channel names and modality from the config."""

    gpu_memory_gb: float | None = None
    cpu_memory_gb: float = 2.0
    modality: str | None = None
    channel_names: tuple[str, ...] | None = None


@dataclass
class Plan:
    """The chosen configuration, its decisions, and every configuration considered."""

    configuration: str
    decisions: list[Decision] = field(default_factory=list)
    configurations: dict[str, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def overrides(self) -> dict[str, Any]:
        """The decisions as a nested config mapping (``data.preprocess.target_spacing`` -> ...)."""
        out: dict[str, Any] = {}
        for d in self.decisions:
            node = out
            *parents, last = d.key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = d.value
        return out


def _axis_median(counts: dict[int, int]) -> float:
    keys = sorted(counts)
    return median_of_counts([float(k) for k in keys], [counts[k] for k in keys])


def target_spacing(fp: Fingerprint) -> tuple[list[float], str]:
    """nnU-Net's ``determine_fullres_target_spacing`` on a fingerprint (original axis order) and the
    rule that applied."""
    dims = fp.spatial_dims
    target = [median_of_counts(*fp.spacings_mm(a)) for a in range(dims)]
    size = [_axis_median(fp.shape[a]) for a in range(dims)]
    worst = max(range(dims), key=lambda a: (target[a], -a))  # np.argmax: the first maximum
    others = [a for a in range(dims) if a != worst]
    if not others:
        return target, "median spacing"
    other_spacing = max(target[a] for a in others)
    aniso_spacing = target[worst] > ANISO_THRESHOLD * other_spacing
    aniso_voxels = size[worst] * ANISO_THRESHOLD < min(size[a] for a in others)
    if not (aniso_spacing and aniso_voxels):
        return target, (f"median spacing per axis (not anisotropic: axis {worst} spacing {target[worst]:g} vs "
                        f"{ANISO_THRESHOLD:g} x {other_spacing:g}, size {size[worst]:g} x {ANISO_THRESHOLD:g} vs "
                        f"{min(size[a] for a in others):g})")
    p10 = percentile_of_counts(*fp.spacings_mm(worst), 10.0)
    if p10 < other_spacing:
        p10 = max(other_spacing, p10) + 1e-5
    target[worst] = p10
    return target, (f"median spacing per axis; axis {worst} is anisotropic (spacing > {ANISO_THRESHOLD:g}x the "
                    f"others and {ANISO_THRESHOLD:g}x fewer voxels): its 10th percentile spacing")


def median_resampled_shape(fp: Fingerprint, spacing: Sequence[float]) -> list[float]:
    """Per-axis median of ``round(shape * spacing / target)`` over the cases (nnU-Net's
    ``np.median(new_shapes, 0)``)."""
    out = []
    for a, target in enumerate(spacing):
        resampled: dict[int, int] = {}
        for extent_um, n in fp.extent[a].items():
            key = int(round(extent_um / 1000.0 / target))
            resampled[key] = resampled.get(key, 0) + n
        out.append(_axis_median(resampled))
    return out


def _network_dict(net: NetworkPlan, order: Sequence[int]) -> dict[str, Any]:
    """A configuration in the original axis order (``order`` = nnU-Net's transpose_forward)."""
    back = [list(order).index(a) for a in range(len(order))]

    def untranspose(values: Sequence[Any]) -> list[Any]:
        return [values[i] for i in back]

    return {
        "spacing": [round(s, 6) for s in untranspose(net.spacing)],
        "median_shape": untranspose(net.median_shape),
        "patch_size": [int(v) for v in untranspose(net.patch_size)],
        "pool_strides": [untranspose(step) for step in net.pool_strides],
        "kernels": [untranspose(k) for k in net.kernels],
        "batch_size": net.batch_size,
        "feature_map_voxels": net.estimate,
        "budget_voxels": int(net.reference),
        "patch_shrink_steps": net.shrink_steps,
    }


def _normalization(fp: Fingerprint, options: PlanOptions) -> list[Decision]:
    names = options.channel_names or tuple(f"channel{c}" for c in range(fp.channels))
    is_ct = [str(n).upper() == "CT" or (options.modality or "").upper() == "CT" for n in names]
    if all(is_ct) and fp.intensity_count and min(fp.intensity_count) > 0:
        low = [fp.intensity_percentile(c, 0.5) for c in range(fp.channels)]
        high = [fp.intensity_percentile(c, 99.5) for c in range(fp.channels)]
        stats = [fp.intensity_mean_std(c) for c in range(fp.channels)]
        rule = ("CT: clip to the merged foreground's 0.5/99.5 percentiles "
                f"({', '.join(f'[{lo:g}, {hi:g}]' for lo, hi in zip(low, high, strict=True))}); nnU-Net then "
                f"z-scores with the foreground mean/std ({', '.join(f'{m:.4g}/{s:.4g}' for m, s in stats)}), "
                "fedseg maps the window to [0, 1] (the same up to an affine map)")
        window = [min(low), max(high)]
        return [Decision("data.preprocess.normalize", "ct", rule),
                Decision("data.preprocess.ct_window", window, "CT window: the percentiles above" +
                         (" (one window for all channels: the widest)" if fp.channels > 1 else ""))]
    crop = fp.median_crop_size()
    if crop < _MASK_NORM_THRESHOLD:
        return [Decision("data.preprocess.normalize", "zscore_nonzero",
                         f"not CT: per-image z-score; the median non-zero bounding box is {crop:.3f} < 3/4 of the "
                         "image, so statistics and normalisation stay inside the non-zero mask")]
    return [Decision("data.preprocess.normalize", "zscore",
                     f"not CT: per-image z-score over the whole image (median non-zero bounding box {crop:.3f} "
                     ">= 3/4 of the image)")]


def make_plan(fp: Fingerprint, options: PlanOptions | None = None) -> Plan:
    """Plan a configuration from a (merged) fingerprint.

    Raises:
        ValueError: the fingerprint holds no case.
        PlanError: the images are too small for a U-Net of 3 levels.
    """
    options = options or PlanOptions()
    if fp.num_cases <= 0 or not all(fp.spacing):
        raise ValueError("the fingerprint holds no training case: nothing to plan from")
    dims = fp.spatial_dims
    memory = options.gpu_memory_gb if options.gpu_memory_gb is not None else options.cpu_memory_gb
    memory_rule = (f"GPU memory {memory:g} GB" if options.gpu_memory_gb is not None
                   else f"CPU budget {memory:g} GB (plan.cpu_memory_gb; no plan.gpu_memory_gb given)")
    spacing, spacing_rule = target_spacing(fp)
    order = [max(range(dims), key=lambda a: (spacing[a], -a))] if dims == 3 else []
    order += [a for a in range(dims) if a not in order]
    median = median_resampled_shape(fp, spacing)
    t_spacing = [spacing[a] for a in order]
    t_median = [median[a] for a in order]
    voxels = math.prod(t_median) * fp.num_cases
    configurations: dict[str, dict[str, Any]] = {}
    if dims == 3 and t_median[0] != 1:
        configurations["3d_fullres"] = _network_dict(
            plan_network(t_spacing, t_median, fp.num_classes, memory, voxels), order)
    two_d = plan_network(t_spacing[-2:], t_median[-2:], fp.num_classes, memory, voxels)
    configurations["2d"] = _network_dict(two_d, list(range(2)))
    if dims == 3:
        configurations["2d"]["slice_axis"] = order[0]
    chosen = "3d_fullres" if "3d_fullres" in configurations else "2d"
    cfg = configurations[chosen]
    if len(cfg["pool_strides"]) < 2:
        raise PlanError(f"the median shape after resampling {[round(m, 1) for m in median]} allows "
                        f"{len(cfg['pool_strides'])} pooling(s); fedseg's DynUNet needs at least 2 (3 levels): the "
                        "images are too small to plan a U-Net for")
    shape = [max(int(round(m)), p) for m, p in zip(cfg["median_shape"], cfg["patch_size"], strict=True)] \
        if chosen != "2d" or dims == 2 else None
    plan = Plan(chosen, configurations=configurations)
    plan.decisions.append(Decision("data.preprocess.target_spacing", [round(s, 6) for s in spacing], spacing_rule))
    if shape is not None:
        plan.decisions.append(Decision(
            "data.preprocess.target_shape", shape,
            "median shape after resampling (rounded), at least the patch: every case is cropped/padded to it "
            "(fedseg stacks one grid)"))
    plan.decisions += _normalization(fp, options)
    plan.decisions += [
        Decision("train.patch_size", cfg["patch_size"],
                 f"nnU-Net: 1/spacing scaled to 256^3 (2D: 2048^2) voxels, clipped to the median shape, padded "
                 f"to 2^pools, shrunk {cfg['patch_shrink_steps']} time(s) until the reference U-Net's feature "
                 f"maps ({cfg['feature_map_voxels']:,}) fit the budget ({cfg['budget_voxels']:,} for "
                 f"{memory_rule}; nnU-Net's reference: {REFERENCE_GB:g} GB)"),
        Decision("train.batch_size", cfg["batch_size"],
                 "nnU-Net: budget / estimate x reference batch (3D 2, 2D 12), at most 5% of the dataset's voxels, "
                 "at least 2"),
        Decision("model.name", "dynunet", "nnU-Net's U-Net (MONAI DynUNet)"),
        Decision("model.kernels", cfg["kernels"], "nnU-Net's get_pool_and_conv_props: kernel 1 on an axis "
                 "until its spacing is within 2x of the finest, then 3"),
        Decision("model.pool_strides", cfg["pool_strides"], "nnU-Net's get_pool_and_conv_props: pool every axis "
                 "whose spacing is within 2x of the finest while feature maps stay >= 4 voxels"),
    ]
    if chosen == "2d" and dims == 3:
        plan.decisions.append(Decision("data.slice_axis", order[0], "2D on 3D data: slices across the "
                                                                    "coarsest axis"))
    plan.summary = {
        "num_cases": fp.num_cases,
        "median_spacing": [median_of_counts(*fp.spacings_mm(a)) for a in range(dims)],
        "median_shape": [_axis_median(fp.shape[a]) for a in range(dims)],
        "median_resampled_shape": median,
        "median_crop_size": fp.median_crop_size(),
        "class_fractions": [round(f, 6) for f in fp.class_fractions()],
        "modalities": dict(fp.modalities),
        "configuration": (f"{chosen}: 3D data plans 3d_fullres (nnU-Net picks 2D vs 3D by cross-validation, "
                          "which a plan cannot run; the 2d plan is listed beside it)" if dims == 3 else
                          f"{chosen}: the data is 2D"),
    }
    return plan
