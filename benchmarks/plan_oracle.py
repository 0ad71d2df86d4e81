"""Oracle check of fedseg's planner against nnU-Net v2's own ``ExperimentPlanner`` (docs/planning.md).

fedseg side: the pooled fingerprint of every case of a folder dataset (one "site" holding them all)
and :func:`fedseg.planning.make_plan` with a GPU budget. nnU-Net side: the same cases as an nnU-Net
raw dataset (symlinks + ``dataset.json``), a ``dataset_fingerprint.json`` written from the cases
(spacing, shape after nnU-Net's non-zero crop, foreground intensities; nibabel axis order, as
nnU-Net's ``NibabelIO``), and ``ExperimentPlanner(gpu_memory_target_in_gb=...).plan_experiment()``.
Prints both plans side by side as JSON.

nnunetv2 must not go into fedseg's environment: unpack its wheel (and dynamic-network-architectures,
batchgenerators, acvl-utils) into a separate folder and put it on PYTHONPATH (commands in
docs/planning.md); torch comes from fedseg's environment.

Usage: python benchmarks/plan_oracle.py configs/datasets/ixi_hh_brain.yaml --gpu-gb 8 --work /tmp/nnu/work
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from fedseg.config import load_config
from fedseg.data.layout import index_dataset
from fedseg.planning.cases import site_fingerprint
from fedseg.planning.planner import PlanOptions, make_plan


STUBBED = ("SimpleITK", "pandas", "tifffile", "skimage", "skimage.io", "skimage.measure", "skimage.morphology",
           "skimage.transform")
"""Modules nnunetv2's planner imports (through its image readers) but planning never calls."""
_STUB = ("class _Any:\n    def __init__(self, *a, **k): pass\n    def __call__(self, *a, **k): return _Any()\n"
         "    def __getattr__(self, n): return _Any()\n\n\ndef __getattr__(name):\n"
         "    if name.startswith('__'): raise AttributeError(name)\n    return _Any\n")


def make_stubs(folder: Path) -> None:
    """Write a stand-in package for each of :data:`STUBBED` under ``folder`` (put it on PYTHONPATH)."""
    for name in STUBBED:
        package = folder.joinpath(*name.split("."))
        package.mkdir(parents=True, exist_ok=True)
        (package / "__init__.py").write_text(_STUB)


def _nnunet_fingerprint(cases: list[Any], num_classes: int) -> dict[str, Any]:
    spacings, shapes, relative, voxels = [], [], [], []
    for case in cases:
        img = nib.load(str(case.images[0]))
        data = np.asarray(img.dataobj, dtype=np.float32)
        seg = np.asarray(nib.load(str(case.mask)).dataobj)
        nonzero = data != 0
        box = [np.flatnonzero(np.any(nonzero, axis=tuple(b for b in range(3) if b != a))) for a in range(3)]
        crop = tuple(int(b[-1] - b[0] + 1) for b in box) if nonzero.any() else data.shape
        spacings.append([float(s) for s in img.header.get_zooms()[:3]])
        shapes.append(list(crop))
        relative.append(float(np.prod(crop) / np.prod(data.shape)))
        voxels.append(data[seg > 0])
    fg = np.concatenate(voxels)
    stats = {"mean": float(fg.mean()), "median": float(np.median(fg)), "std": float(fg.std()),
             "min": float(fg.min()), "max": float(fg.max()),
             "percentile_99_5": float(np.percentile(fg, 99.5)), "percentile_00_5": float(np.percentile(fg, 0.5))}
    return {"spacings": spacings, "shapes_after_crop": shapes,
            "foreground_intensity_properties_per_channel": {"0": stats},
            "median_relative_size_after_cropping": float(np.median(relative))}


def _run_nnunet(cases: list[Any], cfg: Any, gpu_gb: float, work: Path) -> dict[str, Any]:
    os.environ.update(nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "pre"),
                      nnUNet_results=str(work / "res"))
    name = "Dataset999_FedsegOracle"
    raw = work / "raw" / name
    (raw / "imagesTr").mkdir(parents=True, exist_ok=True)
    (raw / "labelsTr").mkdir(parents=True, exist_ok=True)
    for case in cases:
        for link, target in ((raw / "imagesTr" / f"{case.case_id}_0000.nii.gz", case.images[0]),
                             (raw / "labelsTr" / f"{case.case_id}.nii.gz", case.mask)):
            if not link.exists():
                link.symlink_to(Path(target).resolve())
    modality = "CT" if (cfg.data.modality or "").upper() == "CT" else (cfg.data.channel_names or ["MR"])[0]
    labels = {n: i for i, n in enumerate(cfg.data.label_names or [f"class{i}" for i in range(cfg.data.num_classes)])}
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": modality}, "labels": labels,
                                                  "numTraining": len(cases), "file_ending": ".nii.gz",
                                                  "overwrite_image_reader_writer": "NibabelIO"}))
    (work / "pre" / name).mkdir(parents=True, exist_ok=True)
    (work / "pre" / name / "dataset_fingerprint.json").write_text(
        json.dumps(_nnunet_fingerprint(cases, cfg.data.num_classes)))
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner

    class Planner(ExperimentPlanner):  # type: ignore[misc]
        def determine_reader_writer(self) -> Any:  # the readers need SimpleITK; planning does not
            return type("NibabelIO", (), {})

    plans: dict[str, Any] = Planner(name, gpu_memory_target_in_gb=gpu_gb).plan_experiment()
    return plans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, nargs="?")
    parser.add_argument("--make-stubs", type=Path, help="write the stand-in modules to this folder and exit")
    parser.add_argument("--gpu-gb", type=float, default=8.0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/nnu/work"))
    args = parser.parse_args()
    if args.make_stubs is not None:
        make_stubs(args.make_stubs)
        return
    cfg = load_config(args.config)
    index, _, _ = index_dataset(cfg.data)
    cases = [c for site in index for c in site.cases]
    fp = site_fingerprint(cfg.data, "pooled", cases)
    ours = make_plan(fp, PlanOptions(gpu_memory_gb=args.gpu_gb, modality=cfg.data.modality,
                                     channel_names=tuple(cfg.data.channel_names or ()) or None))
    theirs = _run_nnunet(cases, cfg, args.gpu_gb, args.work)
    conf = theirs["configurations"]["3d_fullres"]
    back = theirs["transpose_backward"]
    arch = conf["architecture"]["arch_kwargs"]
    report = {
        "fedseg": ours.configurations["3d_fullres"] | {"normalize": ours.overrides["data"]["preprocess"]},
        "nnunet": {"spacing": [conf["spacing"][i] for i in back],
                   "patch_size": [conf["patch_size"][i] for i in back],
                   "median_shape": [conf["median_image_size_in_voxels"][i] for i in back],
                   "pool_strides": [[k[i] for i in back] for k in arch["strides"][1:]],
                   "kernels": [[k[i] for i in back] for k in arch["kernel_sizes"]],
                   "features": arch["features_per_stage"],
                   "batch_size": conf["batch_size"], "normalization": conf["normalization_schemes"],
                   "use_mask_for_norm": conf["use_mask_for_norm"]},
    }
    two_d = theirs["configurations"]["2d"]
    report["fedseg_2d"] = {k: ours.configurations["2d"][k] for k in ("spacing", "patch_size", "pool_strides",
                                                                      "batch_size")}
    report["nnunet_2d"] = {"spacing": two_d["spacing"], "patch_size": two_d["patch_size"],
                           "pool_strides": two_d["architecture"]["arch_kwargs"]["strides"][1:],
                           "batch_size": two_d["batch_size"]}
    json.dump(report, sys.stdout, indent=None, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))
    print()


if __name__ == "__main__":
    main()
