"""The client's half of federated planning: a site's fingerprint from its own training cases.

Cases are found by the data layer's indexing (:mod:`fedseg.data.layout`) and split exactly as a
run splits them (:func:`fedseg.data.folder.check_dataset`: partitions, split files and groups
included); each training case is read with its site's channel selection and label map and
reoriented as configured, but *not* resampled or normalised (nnU-Net fingerprints the raw
spacing and shape), then reduced to a one-case :class:`Fingerprint` that never leaves the
function: only the site's sum does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedseg.config import DataConfig
from fedseg.data.base import DataError
from fedseg.data.folder import check_dataset
from fedseg.data.layout import CaseFiles, index_dataset
from fedseg.data.preprocess import preprocess_case
from fedseg.data.site_spec import read_site_image, site_config
from fedseg.io import read_mask
from fedseg.planning.fingerprint import Fingerprint, PlanError, add_noise, case_fingerprint, merge

__all__ = ["training_cases", "site_fingerprint"]


def training_cases(cfg: DataConfig, seed: int) -> dict[str, list[CaseFiles]]:
    """Site -> the files of its training cases, as a run with this ``data`` section and seed splits them.

    Raises:
        PlanError: the data is not a folder dataset, a site is fed as slices, or the data check
            found errors (every one listed).
    """
    if cfg.source != "folder":
        raise PlanError(f"data.source {cfg.source!r}: planning reads real cases; use data.source 'folder' "
                        "(synthetic data has no spacing or intensities to plan from)")
    if cfg.slice_axis is not None or any(s.slice_axis is not None for s in cfg.site_specs.values()):
        raise PlanError("data.slice_axis: planning sites that feed volumes as slices is not supported; plan the "
                        "3D data without slice_axis")
    index, dims, _ = index_dataset(cfg)
    # the raw grids need not stack yet (that is what the plan decides): check with a stand-in target
    # shape, which changes no split
    stand_in = cfg.model_copy(update={"image_size": None, "preprocess": cfg.preprocess.model_copy(
        update={"target_shape": [8] * dims})})
    report = check_dataset(stand_in, seed)
    if report.errors:
        raise PlanError("the data check found errors:\n  - " + "\n  - ".join(str(p) for p in report.errors))
    by_id = {(s.name, c.case_id): c for s in index for c in s.cases}
    by_case = {c.case_id: c for s in index for c in s.cases} if len(index) == 1 else {}
    out: dict[str, list[CaseFiles]] = {}
    for site in report.sites:
        files = []
        for case_id in site.splits["train"]:
            found = by_id.get((site.name, case_id)) or by_case.get(case_id)
            if found is None:
                raise PlanError(f"site {site.name!r}: training case {case_id!r} not found in the index")
            files.append(found)
        out[site.name] = files
    return out


def _one_case(files: CaseFiles, cfg: DataConfig) -> Fingerprint:
    site_cfg = site_config(cfg, files.site)
    flat = site_cfg.model_copy(update={"image_size": None, "preprocess": site_cfg.preprocess.model_copy(
        update={"target_spacing": None, "target_shape": None, "normalize": "none"})})
    image = read_site_image(files.site, files.images, cfg)
    if files.mask is None:
        raise PlanError(f"{files.images[0]}: a training case without mask cannot be fingerprinted (weak sites "
                        "with label files are not supported by planning)")
    case = preprocess_case(image, read_mask(files.mask), flat)
    mask = case.mask if case.mask is not None else np.zeros(case.image.shape[1:], np.int64)  # always given here
    return case_fingerprint(case.image, mask, case.spacing, cfg.num_classes)


def site_fingerprint(cfg: DataConfig, site: str, cases: Sequence[CaseFiles], *, epsilon: float | None = None,
                     rng: np.random.Generator | None = None) -> Fingerprint:
    """One site's fingerprint: the sum of its training cases' (computed here, never returned).

    Args:
        cfg: the federation's ``data`` section.
        site: the site name (its modality: the site spec's, else ``data.modality``).
        cases: the site's training cases (:func:`training_cases`).
        epsilon: ``plan.dp_epsilon``: Laplace noise on the case counts (:func:`add_noise`).
        rng: the noise generator (default: fresh OS entropy).

    Raises:
        PlanError: no training case, or a case cannot be read (names the file).
    """
    if not cases:
        raise PlanError(f"site {site!r} has no training case to fingerprint")
    total: Fingerprint | None = None
    for files in cases:  # a running sum: one case's statistics in memory at a time
        try:
            one = _one_case(files, cfg)
        except DataError as exc:
            raise PlanError(f"site {site!r}: {exc}") from None
        total = one if total is None else merge([total, one])
    if total is None:  # pragma: no cover - cases is not empty
        raise PlanError(f"site {site!r} has no training case to fingerprint")
    spec = cfg.site_spec(site)
    modality = (spec.modality if spec is not None and spec.modality else None) or cfg.modality or "unknown"
    total.modalities = {modality: 1}
    if epsilon is not None:
        total = add_noise(total, epsilon, rng if rng is not None else np.random.default_rng())
    return total
