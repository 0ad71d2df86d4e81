"""Per-seed comparison of one method against others, from a suite's ``runs.csv``.

``fedseg bench SUITE`` writes ``OUT/runs.csv`` (one row per finished run: the judged-by model's
site-mean metrics and ``dice:<site>`` / ``hd95:<site>`` columns, every digit). A mean +- sd over
seeds can hide a win that holds in one seed and a loss in another; this script shows, per seed:

1. each method's test Dice per site, the site mean and the unseen-site Dice;
2. for the reference method, its Dice minus the best of the compared methods, per site and seed,
   and per site how many seeds it wins (a tie, |diff| < 0.0005, counts as no win).

Usage (markdown on stdout)::

    python benchmarks/per_seed_table.py runs/bench/organs/runs.csv --ref fedoap \\
        --against local,fedavg,fedbn,fedper,fedrep,ditto,lgfedavg
    python benchmarks/per_seed_table.py runs/bench/busbra/runs.csv runs/bench/fedoap_busbra/runs.csv \\
        --ref fedoap --against fedoap_no_pbl,fedoap_no_dca,fedoap_kv_param
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

TIE = 0.0005


def _f(cell: str | None) -> float | None:
    return float(cell) if cell not in (None, "") else None


def _fmt(value: float | None, signed: bool = False) -> str:
    return "–" if value is None else (f"{value:+.3f}" if signed else f"{value:.3f}")


def load(paths: list[Path]) -> tuple[list[dict[str, str]], list[str]]:
    """The rows of one or more ``runs.csv`` (e.g. two suites on the same data) and the site names
    (from the ``dice:<site>`` columns, in first-seen order)."""
    rows: list[dict[str, str]] = []
    sites: list[str] = []
    for path in paths:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            sites += [c[5:] for c in reader.fieldnames or [] if c.startswith("dice:") and c[5:] not in sites]
            rows += list(reader)
    if not rows:
        raise SystemExit(f"{', '.join(map(str, paths))}: no finished run")
    return rows, sites


def per_seed(rows: list[dict[str, str]], sites: list[str], methods: list[str]) -> str:
    """Table 1: Dice per site and seed for ``methods`` (in that order)."""
    unseen = any(_f(r.get("unseen_dice")) is not None for r in rows)
    head = ["method", "seed", *sites, "site mean", *(["unseen site"] if unseen else [])]
    out = ["| " + " | ".join(head) + " |", "|---|---:|" + "---:|" * (len(head) - 2)]
    for m in methods:
        for r in sorted((r for r in rows if r["method"] == m), key=lambda r: int(r["seed"])):
            cells = [f"`{m}`", r["seed"], *[_fmt(_f(r.get(f"dice:{s}"))) for s in sites], _fmt(_f(r.get("dice"))),
                     *([_fmt(_f(r.get("unseen_dice")))] if unseen else [])]
            out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def wins(rows: list[dict[str, str]], sites: list[str], ref: str, against: list[str]) -> str:
    """Table 2: ``ref`` minus the best of ``against`` per site and seed, and the seeds it wins."""
    by = {(r["method"], int(r["seed"])): r for r in rows}
    seeds = sorted({s for m, s in by if m == ref})
    cols = [*[(s, f"dice:{s}") for s in sites], ("site mean", "dice")]
    if any(_f(r.get("unseen_dice")) is not None for r in rows if r["method"] == ref):
        cols.append(("unseen site", "unseen_dice"))
    out = ["| seed | " + " | ".join(c for c, _ in cols) + " |", "|---:|" + "---:|" * len(cols)]
    won = {c: 0 for c, _ in cols}
    counted = {c: 0 for c, _ in cols}
    for seed in seeds:
        cells = [str(seed)]
        for name, key in cols:
            mine = _f(by[(ref, seed)].get(key))
            others = [(v, m) for m in against if (m, seed) in by and (v := _f(by[(m, seed)].get(key))) is not None]
            if mine is None or not others:
                cells.append("–")
                continue
            best, who = max(others, key=lambda t: t[0])  # ties: the first in --against
            diff = mine - best
            counted[name] += 1
            won[name] += diff > TIE
            cells.append(f"{diff:+.3f} (vs `{who}`)")
        out.append("| " + " | ".join(cells) + " |")
    out.append("| wins | " + " | ".join(f"{won[c]}/{counted[c]}" for c, _ in cols) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_csv", type=Path, nargs="+", help="one or more suites' runs.csv")
    parser.add_argument("--ref", required=True, help="the method compared (e.g. fedoap)")
    parser.add_argument("--against", required=True, help="comma-separated methods it is compared with")
    parser.add_argument("--show", default="", help="methods of table 1 (default: ref, then --against)")
    args = parser.parse_args(argv)
    rows, sites = load(args.runs_csv)
    against = [m for m in args.against.split(",") if m]
    missing = [m for m in [args.ref, *against] if not any(r["method"] == m for r in rows)]
    if missing:
        print(f"note: no finished run of {', '.join(missing)}", file=sys.stderr)
    show = [m for m in args.show.split(",") if m] or [args.ref, *against]
    print(per_seed(rows, sites, show))
    print()
    print(f"`{args.ref}` minus the best of {', '.join(f'`{m}`' for m in against)} (test Dice, per seed):")
    print()
    print(wins(rows, sites, args.ref, against))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
