"""``fedseg data ...``: inspect and validate a dataset before training on it.

``fedseg data check PATH [--config CFG]`` walks ``PATH`` (a dataset root ``<root>/<site>/...`` or a
single site folder), decodes every file once and prints every problem with its file name: a
table of errors and warnings, then a table of sites and splits. Exit code 1 when there is an
error (the run would refuse to start with the same list), 0 otherwise.

Without ``--config`` the dataset spec comes from the preset in ``configs/datasets/`` whose
``data.root`` is ``PATH``, if there is one; otherwise from the files (2D or 3D, channel count) and
``--num-classes`` (default 2: binary masks).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["app", "find_preset", "resolve_data_config"]

app = typer.Typer(no_args_is_help=True, help="Inspect and validate datasets.")
err_console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def _preset_dirs() -> list[Path]:
    """``configs/datasets`` of the working directory and of the source checkout fedseg runs from."""
    here = Path(__file__).resolve().parents[3] / "configs" / "datasets"
    dirs = [Path("configs/datasets"), here]
    out: list[Path] = []
    for d in dirs:
        if d.is_dir() and d.resolve() not in [o.resolve() for o in out]:
            out.append(d)
    return out


def find_preset(path: Path) -> Path | None:
    """The preset config whose ``data.root`` (relative to the checkout) is ``path``."""
    target = path.resolve()
    for folder in _preset_dirs():
        base = folder.resolve().parents[1]
        for preset in sorted(folder.glob("*.yaml")):
            try:
                raw = yaml.safe_load(preset.read_text()) or {}
            except (OSError, yaml.YAMLError):
                continue
            root = (raw.get("data") or {}).get("root") if isinstance(raw, dict) else None
            if not root:
                continue
            candidates = {(base / root).resolve(), (Path.cwd() / root).resolve()}
            if target in candidates:
                return preset
    return None


def resolve_data_config(
    path: Path | None, config: Path | None, overrides: list[str], num_classes: int | None
) -> tuple[Any, str]:
    """The :class:`~fedseg.config.DataConfig` to check ``path`` with, and where it came from."""
    from fedseg.config import DataConfig, apply_overrides, config_from_dict, load_config
    from fedseg.data.layout import discover_sites, infer_channels, infer_spatial_dims

    if path is not None and not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    root, sites = path, None
    if path is not None and (path / "images").is_dir():  # a single site folder
        root, sites = path.parent, [path.name]
    origin = ""
    if config is None and root is not None:
        config = find_preset(root)
        origin = f"preset {config}" if config is not None else ""
    elif config is not None:
        origin = f"config {config}"
    if config is not None:
        data = load_config(config, overrides).data
        update: dict[str, Any] = {"source": "nnunet" if data.source == "nnunet" else "folder"}
        if root is not None:
            update["root"] = root
        if sites is not None:
            update["sites"] = sites
        if num_classes is not None:
            update["num_classes"] = num_classes
        return DataConfig.model_validate({**data.model_dump(), **update}), origin
    if root is None:
        raise ValueError("give a dataset PATH or --config")
    if (root / "dataset.json").is_file() or any((p / "dataset.json").is_file() for p in root.iterdir()):
        data = DataConfig(source="nnunet", root=root)  # nnU-Net raw dataset(s): dataset.json has channels, labels
        origin = "no config: nnU-Net dataset(s), channels and labels from dataset.json"
    else:
        names = sites or discover_sites(root)
        dims = infer_spatial_dims(root, names)
        channels = infer_channels(root, names)
        n = num_classes or 2
        data = DataConfig(source="folder", root=root, sites=sites, spatial_dims=dims, channels=channels, num_classes=n)
        origin = (f"no config: {dims or '?'}D, {channels} channel(s) from the files, labels 0..{n - 1} "
                  f"({'--num-classes' if num_classes else 'binary by default; pass --config or --num-classes'})")
    if overrides:
        data = config_from_dict(apply_overrides({"data": data.model_dump(mode="json")}, overrides)).data
        origin += f" + {' '.join(overrides)}"
    return data, origin


def _width(rows: list[list[str]]) -> int:
    """Wide enough that paths and messages are not cut (CI logs are read by grepping them)."""
    needed = max((sum(len(c) for c in row) + 4 * len(row) for row in rows), default=80)
    return max(shutil.get_terminal_size((100, 20)).columns, min(needed, 400))


@app.command()
def check(
    path: Annotated[Path | None, typer.Argument(help="dataset root <root>/<site>/{images,masks} or one site folder")] = None,
    config: Annotated[Path | None, typer.Option("--config", help="run config whose data section describes the dataset")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override, e.g. data.num_classes=5")] = None,
    num_classes: Annotated[int | None, typer.Option("--num-classes", help="labels 0..N-1 (without a config)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the splits shown")] = 0,
) -> None:
    """Walk a dataset and report every problem with its file (exit 1 on errors)."""
    from fedseg.config import ConfigError
    from fedseg.data.base import DataError
    from fedseg.data.folder import check_dataset

    try:
        data, origin = resolve_data_config(path, config, set_ or [], num_classes)
        report = check_dataset(data, seed=seed if data.partition is None or data.partition.seed is None
                               else data.partition.seed)
    except (ConfigError, DataError, FileNotFoundError, ValueError) as exc:
        _fail(str(exc))
        raise AssertionError from None

    rows = [[p.severity, p.site or "–", p.path or "–", p.message] for p in report.problems]
    console = Console(width=_width(rows))
    console.print(f"dataset {report.root} ({report.spatial_dims}D) — {origin}")
    if rows:
        table = Table(title=f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)")
        for name in ("severity", "site", "file / folder", "problem"):
            table.add_column(name, overflow="fold")
        for row in rows:
            style = "red" if row[0] == "error" else "yellow"
            table.add_row(f"[{style}]{row[0]}[/]", *(escape(c) for c in row[1:]))
        console.print(table)
    sites = Table(title="sites")
    for name in ("site", "cases", "groups", "train", "val", "test", "labels found", "shape after preprocessing"):
        sites.add_column(name, justify="left" if name in ("site", "labels found", "shape after preprocessing") else "right")
    for s in report.sites:
        shapes = ", ".join("x".join(str(n) for n in shape) for shape in s.shapes[:3])
        sites.add_row(s.name, str(s.cases), str(s.groups), *(str(len(s.splits[k])) for k in ("train", "val", "test")),
                      ", ".join(str(v) for v in s.labels), shapes + (" ..." if len(s.shapes) > 3 else ""))
    if report.sites:
        console.print(sites)
    for s in report.sites:  # per-site specs (data.sites entries): what each site changes
        if s.spec:
            console.print(f"site {escape(s.name)}: {escape(s.spec)}")
    if report.errors:
        console.print(f"[bold red]{len(report.errors)} error(s)[/]: a run on this data refuses to start.")
        raise typer.Exit(1)
    console.print(f"[green]no errors[/] ({len(report.warnings)} warning(s)).")
