"""Where a round of the in-process engine spends its time that is not local training (issue 17 item 4).

Runs the ``scaling`` suite's FedAvg configuration (configs/bench/scaling.yaml) with ``--clients``
clients in this process and times, per round, with wrappers around the engine's own functions
(``time.perf_counter``; the code that runs is unchanged). The round record's ``seconds`` (what the
benchmark tables call s / round) runs from the round's start to the aggregation; it splits into

* ``local training``: the train records' ``seconds`` (the client hooks: ``run_client_round``);
* ``client prepare+encode``: the rest of ``ClientRuntime.fit`` (decode the broadcast, reset the
  model to the seeded init, seed, build the Trainer; size and encode the update);
* ``executor``: the rest of ``InProcessExecutor.fit`` (deep copy of each client's state, state
  store save);
* ``server overhead``: the round record's ``overhead_seconds`` (encode the broadcast, decode and
  screen the updates, aggregate);
* ``rest``: ``seconds`` minus the four above (sampling, progress events, the round record).

After the round record the round also runs, outside ``seconds``:

* ``validation``: ``FederationServer.evaluate`` (every ``eval.every`` rounds; all of it: the
  clients' evaluation, their state copies, the replies), of which ``metrics`` is
  ``MetricAccumulator.add`` (Dice, IoU, HD95 per case);
* ``checkpoint``: ``save_checkpoint`` + ``_track_best`` + appending to metrics.jsonl;
* ``full round``: the whole ``run_round`` call.

The same split is also given in CPU seconds of this thread (``time.thread_time``; torch runs one
thread), which the other jobs of a busy machine disturb far less than wall time.

With ``--profile FILE`` the whole run also runs under cProfile (slower: compare shares only).

Usage:
    OMP_NUM_THREADS=1 nice -n 5 python benchmarks/round_overhead.py --clients 100 [--rounds 2]
        [--out runs/bench/round_overhead] [--profile runs/bench/round_overhead/prof.pstats]
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import json
import shutil
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from fedseg.algorithms.base import Algorithm
from fedseg.engine import client as client_mod
from fedseg.engine import server as server_mod
from fedseg.engine.client import ClientRuntime
from fedseg.engine.rundir import RunDir, read_metrics
from fedseg.engine.server import FederationServer
from fedseg.metrics.segmentation import MetricAccumulator
from fedseg.records import Field, Kind
from fedseg.runtime import sim
from fedseg.runtime.bench_suite import find_suite, load_suite, plan_suite

TIMES: dict[str, float] = defaultdict(float)  # wall seconds
CPU: dict[str, float] = defaultdict(float)  # this thread's CPU seconds (torch runs one thread here)
PER_ROUND: dict[int, dict[str, float]] = {}
PER_ROUND_CPU: dict[int, dict[str, float]] = {}


def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name] += time.perf_counter() - t0
            CPU[name] += time.thread_time() - c0
    return wrapper


def install() -> None:
    """Wrap the engine functions named in the module docstring (this process only)."""
    ClientRuntime.fit = timed("client_fit", ClientRuntime.fit)  # type: ignore[method-assign]
    ClientRuntime.evaluate = timed("client_eval", ClientRuntime.evaluate)  # type: ignore[method-assign]
    client_mod.run_client_round = timed("hooks", client_mod.run_client_round)
    sim.InProcessExecutor.fit = timed("exec_fit", sim.InProcessExecutor.fit)  # type: ignore[method-assign]
    MetricAccumulator.add = timed("metrics", MetricAccumulator.add)  # type: ignore[method-assign]
    FederationServer.evaluate = timed("validation", FederationServer.evaluate)  # type: ignore[method-assign]
    FederationServer.save_checkpoint = timed("checkpoint", FederationServer.save_checkpoint)  # type: ignore[method-assign]
    FederationServer._track_best = timed("track_best", FederationServer._track_best)  # type: ignore[method-assign]
    RunDir.append_metrics = timed("append_metrics", RunDir.append_metrics)  # type: ignore[method-assign]
    # the parts of "client prepare+encode" and "server overhead" (the detail table)
    client_mod.seed_everything = timed("d: seed_everything", client_mod.seed_everything)
    client_mod.Trainer.__init__ = timed("d: Trainer()", client_mod.Trainer.__init__)  # type: ignore[method-assign]
    ClientRuntime._broadcast = timed("d: decode broadcast", ClientRuntime._broadcast)  # type: ignore[method-assign]
    torch.nn.Module.load_state_dict = timed("d: load_state_dict", torch.nn.Module.load_state_dict)  # type: ignore[method-assign]
    client_mod.wire.encoded_size = timed("d: encoded_size (client)", client_mod.wire.encoded_size)
    client_mod.wire.encode = timed("d: wire.encode", client_mod.wire.encode)
    client_mod.wire.decode = timed("d: wire.decode", client_mod.wire.decode)
    server_mod.screen_updates = timed("d: screen_updates", server_mod.screen_updates)
    server_mod.encode_broadcast = timed("d: encode broadcast", server_mod.encode_broadcast)
    Algorithm.aggregate = timed("d: aggregate", Algorithm.aggregate)  # type: ignore[method-assign]
    run_round = FederationServer.run_round

    def per_round(self: FederationServer, executor: Any, rnd: int) -> None:
        TIMES.clear()
        CPU.clear()
        t0, c0 = time.perf_counter(), time.thread_time()
        run_round(self, executor, rnd)
        TIMES["full"] = time.perf_counter() - t0
        CPU["full"] = time.thread_time() - c0
        PER_ROUND[rnd] = dict(TIMES)
        PER_ROUND_CPU[rnd] = dict(CPU)
    FederationServer.run_round = per_round  # type: ignore[method-assign]


def split(run_dir: Path) -> list[dict[str, float]]:
    """One row per round: the categories of the module docstring, in seconds."""
    records = read_metrics(run_dir / "metrics.jsonl")
    rows = []
    for r in (x for x in records if x.get(Field.KIND) == Kind.ROUND):
        rnd = int(r[Field.ROUND])
        t = PER_ROUND[rnd]
        train = sum(float(x[Field.SECONDS]) for x in records
                    if x.get(Field.KIND) == Kind.TRAIN and int(x[Field.ROUND]) == rnd)
        row = {"round": rnd, "seconds": float(r[Field.SECONDS]), "local training": train,
               "client prepare+encode": t.get("client_fit", 0.0) - t.get("hooks", 0.0),
               "executor": t.get("exec_fit", 0.0) - t.get("client_fit", 0.0),
               "server overhead": float(r[Field.OVERHEAD_SECONDS])}
        row["rest"] = row["seconds"] - sum(row[k] for k in ("local training", "client prepare+encode", "executor",
                                                            "server overhead"))
        row.update({"validation": t.get("validation", 0.0), "of which metrics": t.get("metrics", 0.0),
                    "checkpoint": t.get("checkpoint", 0.0) + t.get("track_best", 0.0) + t.get("append_metrics", 0.0),
                    "full round": t["full"]})
        rows.append(row)
    return rows


def split_cpu() -> list[dict[str, float]]:
    """The same split in CPU seconds, from the wrappers alone (steadier than wall time on a busy
    machine): ``fit part`` is the round minus validation and checkpoint, ``server`` is the fit part
    outside ``InProcessExecutor.fit`` (broadcast, decode, screening, aggregation, bookkeeping)."""
    rows = []
    for rnd, t in sorted(PER_ROUND_CPU.items()):
        fit = t["full"] - sum(t.get(k, 0.0) for k in ("validation", "checkpoint", "track_best", "append_metrics"))
        row = {"round": rnd, "fit part": fit, "local training": t.get("hooks", 0.0),
               "client prepare+encode": t.get("client_fit", 0.0) - t.get("hooks", 0.0),
               "executor": t.get("exec_fit", 0.0) - t.get("client_fit", 0.0), "server": fit - t.get("exec_fit", 0.0),
               "validation": t.get("validation", 0.0), "full round": t["full"]}
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, float]]) -> str:
    keys = [k for k in rows[0] if k != "round"]
    total = {k: sum(r[k] for r in rows) for k in keys}
    lines = ["| round | " + " | ".join(keys) + " |", "|---:|" + "---:|" * len(keys)]
    for r in [*rows, {"round": "all", **total}]:  # type: ignore[dict-item]
        lines.append(f"| {r['round']} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
    base = "seconds" if "seconds" in total else "fit part"
    lines.append(f"| share of {base} | " + " | ".join(f"{100 * total[k] / total[base]:.1f} %" for k in keys) + " |")
    lines.append("| share of full round | " + " | ".join(f"{100 * total[k] / total['full round']:.1f} %" for k in keys)
                 + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=100, help="10, 50, 100 or 500 (the scaling suite's datasets)")
    parser.add_argument("--rounds", type=int, default=None, help="default: the suite's (2)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/round_overhead"))
    parser.add_argument("--profile", type=Path, default=None, help="also write a cProfile stats file")
    args = parser.parse_args()
    suite = load_suite(find_suite("scaling"))
    sets = [f"federation.rounds={args.rounds}"] if args.rounds else []
    run = plan_suite(suite, args.out / "runs", datasets=[f"clients{args.clients}"], overrides=sets)[0]
    shutil.rmtree(run.run_dir, ignore_errors=True)
    install()
    profiler = cProfile.Profile() if args.profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    sim.run_inprocess(run.config, run.run_dir, write_report=False)
    if profiler:
        profiler.disable()
        args.profile.parent.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(str(args.profile))
    wall = time.perf_counter() - start
    rows = split(run.run_dir)
    table = markdown(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    cpu_rows = split_cpu()
    detail = {k[3:]: sum(PER_ROUND[r].get(k, 0.0) for r in PER_ROUND) for k in sorted({k for t in PER_ROUND.values()
                                                                                     for k in t if k.startswith("d: ")})}
    total = sum(r["seconds"] for r in rows)
    lines = ["| part (all rounds, fit and validation; parts overlap) | seconds | share of seconds |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.3f} | {100 * v / total:.1f} % |" for k, v in detail.items()]
    (args.out / f"clients{args.clients}.json").write_text(json.dumps({"wall": wall, "rounds": rows, "cpu": cpu_rows,
                                                                       "detail": detail},
                                                                      indent=2))
    print(f"{args.clients} clients, {len(rows)} rounds, run wall {wall:.1f} s (seconds per category)\n{table}\n")
    print("\n".join(lines))
    print(f"\nCPU seconds (this thread)\n{markdown(cpu_rows)}")


if __name__ == "__main__":
    main()
