"""benchmarks/per_seed_table.py: per-seed wins of a reference method, from a hand-made runs.csv."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench_scripts import load_bench_script


def test_wins_count_per_seed_against_the_best_other_method(tmp_path: Path, capsys: Any) -> None:
    rows = ["dataset,method,seed,dice,unseen_dice,dice:a,dice:b,hd95:a,hd95:b"]
    # ref wins site a in seed 0 only, ties site b in seed 1 (no win), loses the site mean in seed 1
    rows += ["d,ref,0,0.6,0.3,0.7,0.5,1,1", "d,ref,1,0.4,0.1,0.3,0.5,1,1",
             "d,x,0,0.5,0.2,0.6,0.4,1,1", "d,x,1,0.5,0.2,0.5,0.5,1,1",
             "d,y,0,0.55,,0.65,0.45,1,1", "d,y,1,0.45,,0.4,0.5,1,1"]
    (tmp_path / "runs.csv").write_text("\n".join(rows) + "\n")
    assert load_bench_script("per_seed_table").main([str(tmp_path / "runs.csv"), "--ref", "ref", "--against", "x,y"]) == 0
    text = capsys.readouterr().out
    assert "| 0 | +0.050 (vs `y`) | +0.050 (vs `y`) | +0.050 (vs `y`) | +0.100 (vs `x`) |" in text
    assert "| 1 | -0.200 (vs `x`) | +0.000 (vs `x`) | -0.100 (vs `x`) | -0.100 (vs `x`) |" in text
    assert "| wins | 1/2 | 1/2 | 1/2 | 1/2 |" in text
    assert "| `x` | 1 | 0.500 | 0.500 | 0.500 | 0.200 |" in text
