"""nnU-Net raw datasets as fedseg sites (``data.source: nnunet``), so users bring what they have.

nnU-Net v2's raw format (*nnUNet: documentation/dataset_format.md*)::

    Dataset001_Prostate/
        dataset.json     {"channel_names": {"0": "T2", "1": "ADC"},
                          "labels": {"background": 0, "PZ": 1, "TZ": 2},
                          "numTraining": 32, "file_ending": ".nii.gz"}
        imagesTr/        <case>_0000.nii.gz, <case>_0001.nii.gz ...  (one file per channel)
        labelsTr/        <case>.nii.gz
        imagesTs/        optional; labelsTs/ optional

Two ways to make sites (``data.root``):

* a folder of dataset folders: every ``DatasetXXX_Name/`` holding a ``dataset.json`` is a site
  named by its folder (``data.sites`` picks some); their ``dataset.json`` must agree on
  ``channel_names``, ``labels`` and ``file_ending``;
* one dataset folder: one site, or the sites of ``data.nnunet.site_file`` (case id -> site; its
  other CSV columns are case metadata for ``data.group_column``).

:func:`resolve_nnunet` fills ``data.channels``, ``channel_names``, ``num_classes``,
``label_names`` and ``spatial_dims`` from ``dataset.json`` (label values that are not 0..n-1 get
a ``label_map``); :func:`index_nnunet` lists the cases as :class:`~fedseg.data.layout.SiteIndex`
entries, the same case lists the folder reader builds, so reading, preprocessing, the cache,
partitions, splits and ``fedseg data check`` run unchanged (:mod:`fedseg.data.folder`). Only names
and the small JSON/CSV files are read here; every problem is returned with its path.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fedseg.config import DataConfig
from fedseg.data.layout import CaseFiles, SiteIndex
from fedseg.data.nnunet_files import DATASET_JSON, FORMAT, NnUNetDataset, read_dataset_json, read_site_file, shown
from fedseg.io import DataError, Problem

__all__ = ["dataset_folders", "resolve_nnunet", "index_nnunet"]

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def dataset_folders(root: Path, listed: list[str] | None) -> tuple[list[Path], list[Problem]]:
    """The dataset folders of a root of datasets (every subfolder with a ``dataset.json``, or ``listed``)."""
    if listed is not None:
        folders, problems = [], []
        for name in listed:
            if (root / name).is_dir():
                folders.append(root / name)
            else:
                problems.append(Problem("data.sites", f"{root / name} is not a directory", name))
        return folders, problems
    try:
        entries = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as exc:
        return [], [Problem(f"data.root {root}", f"cannot list the folder ({exc.strerror or exc})")]
    folders = [p for p in entries if (p / DATASET_JSON).is_file()]
    problems = [Problem(str(p / DATASET_JSON), f"missing: {p.name} has imagesTr/ but no dataset.json ({FORMAT})",
                        p.name) for p in entries if (p / "imagesTr").is_dir() and p not in folders]
    if not folders and not problems:
        problems.append(Problem(f"data.root {root}", "holds no nnU-Net dataset: neither a dataset.json nor dataset "
                                                     "folders (DatasetXXX_Name/dataset.json)"))
    return folders, problems


def _sites(cfg: DataConfig) -> tuple[list[tuple[str, Path]], list[Problem]]:
    """``(site, dataset folder)`` pairs: several sites may share one folder (site_file)."""
    root = Path(cfg.root) if cfg.root is not None else Path(".")
    if not root.is_dir():
        return [], [Problem(f"data.root {root}", "not a directory")]
    if (root / DATASET_JSON).is_file():
        if cfg.nnunet.site_file is not None:
            return [], []  # the site file names the sites (_site_file)
        return [(root.name, root)], []
    if cfg.nnunet.site_file is not None:
        return [], [Problem(f"data.root {root}", "data.nnunet.site_file needs data.root to be one dataset folder "
                                                 f"(with a {DATASET_JSON}), not a folder of datasets")]
    folders, problems = dataset_folders(root, cfg.sites)
    return [(p.name, p) for p in folders], problems


def resolve_nnunet(cfg: DataConfig) -> tuple[DataConfig, list[Problem]]:
    """``cfg`` with the channels, labels and dimension of its ``dataset.json`` file(s).

    Sets ``channels``, ``channel_names``, ``num_classes``, ``label_names``, ``spatial_dims`` and,
    for label values that are not 0..n-1, ``label_map`` (value -> class index by increasing
    value). A ``label_map`` in the config is kept (with its ``num_classes``): it can merge labels.

    Returns:
        The completed config, and the problems: unreadable ``dataset.json`` files, datasets of
        several sites that disagree (naming the site and the key), config values that contradict
        ``dataset.json`` (naming the key).
    """
    pairs, problems = _sites(cfg)
    root = Path(cfg.root) if cfg.root is not None else Path(".")
    folders = list(dict.fromkeys(folder for _, folder in pairs)) or ([root] if (root / DATASET_JSON).is_file() else [])
    datasets: list[NnUNetDataset] = []
    for folder in folders:
        try:
            datasets.append(read_dataset_json(folder))
        except DataError as exc:
            problems += [Problem(p.path, p.message, folder.name) for p in exc.problems] or [
                Problem(str(folder / DATASET_JSON), str(exc), folder.name)]
    if not datasets:
        return cfg, problems
    first = datasets[0]
    for other in datasets[1:]:
        for key, mine, theirs in (("channel_names", first.channel_names, other.channel_names),
                                  ("labels", first.labels, other.labels),
                                  ("file_ending", first.file_ending, other.file_ending)):
            if mine != theirs:
                problems.append(Problem(str(other.path / DATASET_JSON), f"site {other.path.name}: dataset.json "
                                        f"{key} {_plain(theirs)} differs from site {first.path.name}'s {_plain(mine)} "
                                        "(every site must give the model the same inputs and classes)",
                                        other.path.name))
    update: dict[str, Any] = {"channels": len(first.channel_names), "channel_names": list(first.channel_names),
                              "spatial_dims": first.spatial_dims}
    if cfg.label_map is None:
        values = [v for _, v in first.labels]
        update.update(num_classes=len(values), label_names=[name for name, _ in first.labels],
                      label_map=None if values == list(range(len(values))) else {v: i for i, v in enumerate(values)})
    where = str(first.path / DATASET_JSON)
    for key, value in update.items():
        # a default value counts as unset: a dumped config (a run's config.yaml) holds every default
        given = getattr(cfg, key)
        if given is not None and given != value and given != DataConfig.model_fields[key].default:
            problems.append(Problem(f"data.{key}", f"is {given!r} but {where} gives {value!r}; leave data.{key} "
                                                   "unset for an nnU-Net dataset"))
    return cfg.model_copy(update=update), problems


def _plain(value: Any) -> str:
    if isinstance(value, tuple) and value and isinstance(value[0], tuple):
        return "{" + ", ".join(f"{n}: {v}" for n, v in value) + "}"
    return repr(list(value)) if isinstance(value, tuple) else repr(value)


def _files(folder: Path, ending: str) -> dict[str, Path]:
    """stem -> file for the files of ``folder`` ending in ``ending`` (none when it does not exist)."""
    if not folder.is_dir():
        return {}
    return {p.name[: -len(ending)]: p for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith(ending)}


def _cases(ds: NnUNetDataset, site: str, images: str, labels: str, required: bool) -> tuple[
    dict[str, tuple[tuple[Path, ...], Path]], int, list[Problem]
]:
    """case id -> (channel files, label file) of ``<dataset>/<images>`` and ``<labels>``, and the
    number of case ids found (those with problems included)."""
    folder, label_dir = ds.path / images, ds.path / labels
    problems: list[Problem] = []
    if not folder.is_dir():
        if required:
            problems.append(Problem(str(ds.path), f"no {images}/ folder ({FORMAT})", site))
        return {}, 0, problems
    files = _files(folder, ds.file_ending)
    channel_files: dict[str, dict[int, Path]] = {}
    unnamed = []
    for stem, path in files.items():
        match = _CHANNEL.match(stem)
        if match is None:
            unnamed.append(path.name)
        else:
            channel_files.setdefault(match["case"], {})[int(match["channel"])] = path
    if unnamed:
        problems.append(Problem(str(folder), f"file(s) without the _XXXX channel suffix (<case>_0000{ds.file_ending}"
                                             f"): {shown(unnamed)}", site))
    others = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                    and not p.name.lower().endswith(ds.file_ending))
    if others:
        problems.append(Problem(str(folder), f"ignored file(s) not ending in {ds.file_ending} (dataset.json "
                                             f"file_ending): {shown(others)}", site, "warning"))
    label_files = _files(label_dir, ds.file_ending)
    wanted = len(ds.channel_names)
    names = ", ".join(ds.channel_names)
    out: dict[str, tuple[tuple[Path, ...], Path]] = {}
    for case, found in sorted(channel_files.items()):
        # a colour PNG is one file holding channels R, G, B (nnU-Net's natural-image reader)
        expected = 1 if ds.spatial_dims == 2 and wanted == 3 and set(found) == {0} else wanted
        missing = [f"{case}_{i:04d}{ds.file_ending}" for i in range(expected) if i not in found]
        extra = sorted(f"{case}_{i:04d}{ds.file_ending}" for i in found if i >= expected)
        if missing or extra:
            what = f"channel file(s) {shown(missing)} missing" if missing else f"extra channel file(s) {shown(extra)}"
            problems.append(Problem(str(folder), f"case {case!r}: {what} (dataset.json channel_names has {wanted}: "
                                                 f"{names})", site))
            continue
        label = label_files.get(case)
        if label is None:
            problems.append(Problem(str(label_dir), f"case {case!r}: label file {case}{ds.file_ending} missing", site))
            continue
        out[case] = (tuple(found[i] for i in range(expected)), label)
    orphans = sorted(s for s in label_files if s not in channel_files)
    if orphans:
        problems.append(Problem(str(label_dir), f"label(s) without image: {shown(orphans)}", site, "warning"))
    return out, len(channel_files), problems


def _dataset_cases(ds: NnUNetDataset, site: str, cfg: DataConfig) -> tuple[
    dict[str, tuple[tuple[Path, ...], Path]], list[Problem]
]:
    """Every usable case of one dataset: imagesTr, and imagesTs with labelsTs when ``nnunet.use_test``."""
    cases, count, problems = _cases(ds, site, "imagesTr", "labelsTr", required=True)
    if ds.num_training is not None and ds.num_training != count:
        problems.append(Problem(str(ds.path / DATASET_JSON), f"numTraining is {ds.num_training} but imagesTr/ holds "
                                                             f"{count} case(s)", site, "warning"))
    if cfg.nnunet.use_test:
        if not (ds.path / "labelsTs").is_dir():
            problems.append(Problem(str(ds.path), "data.nnunet.use_test needs a labelsTs/ folder (a test case "
                                                  "without label cannot be evaluated)", site))
        else:
            test, _, found = _cases(ds, site, "imagesTs", "labelsTs", required=True)
            # imagesTs often holds cases without labels: those are left out, with a warning
            problems += [Problem(p.path, p.message, site, "warning") if "label file" in p.message else p for p in found]
            clash = sorted(set(test) & set(cases))
            if clash:
                problems.append(Problem(str(ds.path / "imagesTs"), f"case id(s) also in imagesTr: {shown(clash)}",
                                        site))
            cases.update({k: v for k, v in test.items() if k not in clash})
    return cases, problems


def _site_index(site: str, path: Path, cases: dict[str, tuple[tuple[Path, ...], Path]],
                rows: dict[str, dict[str, str]], column: str | None, where: str) -> tuple[SiteIndex, list[Problem]]:
    problems: list[Problem] = []
    result = []
    for case, (images, label) in cases.items():
        row = rows.get(case, {})
        group = case
        if column is not None:
            group = row.get(column, "")
            if not group:
                problems.append(Problem(where, f"no {column!r} value (data.group_column) for case {case!r}", site))
                continue
        result.append(CaseFiles(site, case, images, label, group, row))
    if not result and not problems:
        problems.append(Problem(str(path), "site has no usable case (empty site)", site))
    return SiteIndex(site, path, result), problems


def index_nnunet(cfg: DataConfig) -> tuple[list[SiteIndex], int, list[Problem]]:
    """Index the cases of the nnU-Net dataset(s) of ``cfg`` (resolved by :func:`resolve_nnunet`).

    Returns:
        The sites' case lists (as :func:`fedseg.data.layout.index_dataset` returns them), the
        spatial dimension and every problem: missing folders, channel or label files missing for
        a case, badly named files, a site file that misses cases or names unknown ones.
    """
    dims = cfg.spatial_dims or 2
    pairs, problems = _sites(cfg)
    root = Path(cfg.root) if cfg.root is not None else Path(".")
    site_file = cfg.nnunet.site_file
    if site_file is not None and (root / DATASET_JSON).is_file():
        return _split_dataset(cfg, root, root / site_file if not Path(site_file).is_absolute() else Path(site_file),
                              problems)
    sites = []
    for site, folder in pairs:
        try:
            ds = read_dataset_json(folder)
        except DataError:
            continue  # reported by resolve_nnunet
        cases, found = _dataset_cases(ds, site, cfg)
        problems += found
        index, found = _site_index(site, folder, cases, {}, None, f"site {site}")
        column = cfg.group_column_of(site)
        if column is not None:
            found.append(Problem(f"data.group_column {column!r}", "an nnU-Net dataset has no metadata table: a group "
                                 "column needs one dataset split by data.nnunet.site_file (a CSV with that column)",
                                 site))
        sites.append(index)
        problems += found
    return sites, dims, problems


def _split_dataset(cfg: DataConfig, root: Path, path: Path, problems: list[Problem]) -> tuple[
    list[SiteIndex], int, list[Problem]
]:
    """One dataset split into the sites of its site file."""
    dims = cfg.spatial_dims or 2
    try:
        ds = read_dataset_json(root)
    except DataError:
        return [], dims, problems  # reported by resolve_nnunet
    cases, found = _dataset_cases(ds, root.name, cfg)
    problems += found
    table, found = read_site_file(path, cfg)
    problems += found
    if not table:
        return [], dims, problems
    where = f"data.nnunet.site_file {path}"
    unassigned = sorted(c for c in cases if c not in table)
    if unassigned:
        problems.append(Problem(where, f"no site for case(s) {shown(unassigned)} of {root / 'imagesTr'} (every case "
                                       "needs one; delete the files of cases to leave out)"))
    unknown = sorted(c for c in table if c not in cases)
    if unknown:
        problems.append(Problem(where, f"case id(s) {shown(unknown)} are not cases of {root.name} (or were left out "
                                       "for the problems above)", severity="warning"))
    names = list(dict.fromkeys(sorted(site for site, _ in table.values())))
    if cfg.sites is not None:
        absent = [s for s in cfg.sites if s not in names]
        if absent:
            problems.append(Problem("data.sites", f"{shown(absent)} not in the site file (sites: {shown(names)})"))
        names = [s for s in cfg.sites if s in names]
    sites = []
    for site in names:
        mine = {c: f for c, f in cases.items() if c in table and table[c][0] == site}
        index, found = _site_index(site, root, mine, {c: table[c][1] for c in mine}, cfg.group_column_of(site), where)
        sites.append(index)
        problems += found
    return sites, dims, problems
