"""Dependencies point one way: cli -> runtime -> report -> engine -> algorithms ->
data/models/losses/metrics -> config/io -> types/registry. Siblings on one layer stay independent."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "fedseg"

LAYERS: dict[str, float] = {
    "types": 0, "registry": 0, "records": 0, "__init__": 0,
    "config": 1, "io": 1,
    "data": 2, "models": 2, "losses": 2, "metrics": 2, "codecs": 2,
    "planning": 2.5,  # imports data (layer 2); engine/runtime/cli import it
    "algorithms": 3,
    "engine": 4,
    "report": 5,
    "runtime": 6,
    "cli": 7,
}


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("fedseg")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fedseg"):
            found.append(node.module)
    return found


def test_imports_only_go_down_the_layers() -> None:
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        own = rel.parts[0].removesuffix(".py") if len(rel.parts) > 1 else rel.stem
        own_layer = LAYERS[own]
        for module in _imports(path):
            other = _package(module)
            if other == own:
                continue
            layer = LAYERS[other]
            if layer > own_layer or (layer == own_layer and own != "__init__"):
                problems.append(f"{rel} imports {module} (layer {layer} from layer {own_layer})")
    assert not problems, "\n".join(problems)


def test_nothing_imports_the_cli() -> None:
    for path in sorted(SRC.rglob("*.py")):
        if path.relative_to(SRC).parts[0] == "cli":
            continue
        assert not [m for m in _imports(path) if m.startswith("fedseg.cli")], path


def _third_party_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def test_only_runtime_flower_imports_flwr() -> None:
    flower = SRC / "runtime" / "flower"
    offenders = [
        str(path.relative_to(SRC))
        for path in sorted(SRC.rglob("*.py"))
        if flower not in path.parents
        and any(m == "flwr" or m.startswith("flwr.") for m in _third_party_imports(path))
    ]
    assert not offenders, f"only fedseg.runtime.flower may import flwr: {offenders}"
    assert any(m.startswith("flwr") for p in flower.rglob("*.py") for m in _third_party_imports(p))
