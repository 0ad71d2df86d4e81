"""Cold and warm load of BUS-BRA at 128x128 (the data section of `configs/busbra_fedavg.yaml`).

Cold: an empty cache folder, so every PNG is decoded, resampled, z-scored and written to the
cache. Warm: the same config again (cache reads only). Prints one JSON line per repeat with wall
time and CPU time (user + system of every thread) of each; CPU time says what the load costs
when the machine is shared, wall time what it takes. Run it with another checkout first on
``PYTHONPATH`` to compare two versions back to back. Skipped when ../shared/data is absent.

Usage: PYTHONPATH=src python benchmarks/bench_cold_start.py [--repeats 2] [--config configs/busbra_fedavg.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "busbra_fedavg.yaml")
    args = parser.parse_args()
    start = time.perf_counter()
    import fedseg
    from fedseg.config import load_config
    from fedseg.data.folder import load_folder_federation

    imported = time.perf_counter() - start
    data = load_config(args.config).data
    # a relative data.root is relative to the repository (where fedseg runs)
    root = data.root if data.root is None or data.root.is_absolute() else (REPO / data.root).resolve()
    if root is None or not root.is_dir():
        print(json.dumps({"skipped": f"no data at {root}"}))
        return
    for repeat in range(args.repeats):
        cache = Path(tempfile.mkdtemp(prefix="fedseg_cold_"))
        cfg = data.model_copy(update={"root": root, "cache_dir": cache, "cache": True})
        row: dict[str, object] = {"fedseg": str(Path(fedseg.__file__).parents[1]), "repeat": repeat,
                                  "import_s": round(imported, 2)}
        try:
            for phase in ("cold", "warm"):
                cpu, wall = _cpu(), time.perf_counter()
                fed = load_folder_federation(cfg, seed=0)
                row[f"{phase}_s"] = round(time.perf_counter() - wall, 2)
                row[f"{phase}_cpu_s"] = round(_cpu() - cpu, 2)
            row["cases"] = sum(len(s.train) + len(s.val) + len(s.test) for s in fed.sites)
            row["load_avg_1min"] = round(os.getloadavg()[0], 1)
        finally:
            shutil.rmtree(cache, ignore_errors=True)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
