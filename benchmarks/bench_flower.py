"""Per-round overhead of a Flower deployment against the in-process engine, on the same work.

Work: FedAvg, default 2D U-Net (206,882 parameters, batch norm), 2 synthetic sites of 64x64 images,
1 local epoch per round, evaluation only after the last round (so a round is one broadcast ->
local training -> reply -> aggregation). Per-round time is the FederationServer's own ``seconds``
of each ``kind=round`` record (same code on both engines), averaged over rounds 2..R (round 1
includes first-use costs on both engines).

Engines:
* ``inprocess``: both clients in this process, one after the other;
* ``deploy``: SuperLink with TLS on 127.0.0.1, 2 SuperNodes with ``--isolation process`` and a
  long-lived ``fedseg flower clientapp`` each, run submitted with ``flwr run`` (stock
  ``flower-supernode``);
* ``deploy-fast``: the same with ``fedseg flower supernode --idle-poll 0.2`` (Flower's SuperNode,
  polling sleeps capped);
* ``deploy-subprocess`` (``--naive``): stock ``--isolation subprocess`` (one ``flwr-clientapp``
  process per message) -- the configuration the long-lived process replaces.

The sites train in parallel processes when deployed and one after the other in-process, so the
report also gives the non-training time per round: round seconds minus the clients' training
seconds (their sum in-process, their maximum when deployed).

Also measured: bytes of one U-Net broadcast (fedseg wire format vs Flower ArrayRecord, packed and
one Array per tensor) and the compute cost of Flower's DP clipping and noise on U-Net weights.

With ``--dp``: FedAvg in flower-sim with and without central DP (z=1, C=1, 10 rounds), test Dice.

Every client trains with ``--threads`` torch threads (default 1) on every engine, so a busy machine
does not oversubscribe one engine more than the other.

Usage: python benchmarks/bench_flower.py [--rounds 5] [--size 64] [--threads 1] [--naive] [--dp]
       [--out runs/bench/flower]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import signal
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedseg.config import RunConfig, config_from_dict
from fedseg.engine import wire
from fedseg.engine.rundir import read_metrics
from fedseg.models import build_model
from fedseg.runtime.flower.certs import make_certificates
from fedseg.runtime.flower.loopback import LoopbackFederation, bin_path, free_port, wait_for_port
from fedseg.runtime.flower.project import write_app, write_connection
from fedseg.runtime.flower.records import pack_tensors, tensors_to_record
from fedseg.runtime.sim import run_inprocess
from fedseg.types import Broadcast


def bench_config(rounds: int, size: int) -> RunConfig:
    return config_from_dict(
        {
            "name": "bench_flower",
            "seed": 0,
            "data": {"synthetic": {"num_sites": 2, "size": size, "samples_per_site": [40, 28]}},
            "federation": {"rounds": rounds, "local_epochs": 1},
            "eval": {"every": rounds},
            "flower": {"connect_timeout": 300, "reply_timeout": 600},
            "algorithm": {"name": "fedavg"},
        }
    )


def per_round(run_dir: Path) -> dict[str, Any]:
    """Mean round seconds (rounds >= 2), client training seconds, non-training seconds."""
    records = read_metrics(run_dir / "metrics.jsonl")
    rounds = [r for r in records if r["kind"] == "round" and r["round"] >= 2]
    info = json.loads((run_dir / "run_info.json").read_text())
    parallel = info["engine"] != "inprocess"
    train: dict[int, list[float]] = {}
    for r in records:
        if r["kind"] == "train" and r["round"] >= 2:
            train.setdefault(int(r["round"]), []).append(float(r["seconds"]))
    round_s = statistics.mean(float(r["seconds"]) for r in rounds)
    train_s = statistics.mean((max(v) if parallel else sum(v)) for v in train.values())
    return {
        "rounds_measured": len(rounds),
        "round_seconds": round(round_s, 3),
        "client_train_seconds": round(train_s, 3),
        "non_training_seconds": round(round_s - train_s, 3),
        "bytes_up_per_round": rounds[0]["bytes_up"],
        "bytes_down_per_round": rounds[0]["bytes_down"],
    }


def run_deployment(work: Path, cfg: RunConfig, *, mode: str, threads: int, idle_poll: float = 0.2) -> dict[str, Any]:
    """One loopback deployment (TLS); ``mode`` is deploy, deploy-fast or deploy-subprocess."""
    work = work.resolve()  # the processes run in `work`; every path handed to them is absolute
    if work.exists():
        shutil.rmtree(work)
    certs = make_certificates(work / "certs", ["127.0.0.1"])
    port = free_port()
    start = time.perf_counter()
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with LoopbackFederation(work, env=env) as fed:
        superlink = fed.start("superlink", [
            bin_path("flower-superlink"), "--ssl-ca-certfile", str(certs.ca_cert), "--ssl-certfile",
            str(certs.server_cert), "--ssl-keyfile", str(certs.server_key), "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(port),
        ])
        wait_for_port(port, 120, proc=superlink)
        for i in range(cfg.data.synthetic.num_sites):
            runtime = free_port()
            node = ["--superlink", f"127.0.0.1:{port}", "--root-certificates", str(certs.ca_cert), "--port",
                    str(runtime), "--node-config", f'site="site{i}"']
            if mode == "deploy-subprocess":
                fed.start(f"supernode{i}", [bin_path("flower-supernode"), *node, "--isolation", "subprocess"])
                continue
            launcher = ([bin_path("fedseg"), "flower", "supernode", "--idle-poll", str(idle_poll)] if mode == "deploy-fast"
                        else [bin_path("flower-supernode")])
            fed.start(f"supernode{i}", [*launcher, *node, "--isolation", "process"])
            fed.start(f"clientapp{i}", [bin_path("fedseg"), "flower", "clientapp", "--runtime-api-address",
                                        f"127.0.0.1:{runtime}"])
        write_connection("bench", f"127.0.0.1:{port}", root_certificates=certs.ca_cert, home=fed.flwr_home)
        run_dir = work / "run"
        write_app(work / "app", cfg, run_dir, command="python benchmarks/bench_flower.py")
        fed.run([bin_path("flwr"), "run", str(work / "app"), "bench", "--stream"], timeout=3600)
        deadline = time.monotonic() + 120
        while not (run_dir / "summary.json").is_file():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{mode}: the run did not finish\n{fed.logs_tail()}")
            time.sleep(0.5)
    return {**per_round(run_dir), "total_seconds": round(time.perf_counter() - start, 1)}


def wire_vs_records(cfg: RunConfig) -> dict[str, int]:
    """Bytes of one broadcast of the bench model: fedseg wire format vs Flower ArrayRecord."""
    params = {k: v.detach().clone() for k, v in build_model(cfg.model, 2, 1, 2).state_dict().items()}
    packed, _ = pack_tensors(params)
    return {
        "tensors": len(params),
        "wire_bytes": len(wire.encode(Broadcast(params=params, config={"round": 1}))),
        "arrayrecord_packed_bytes": packed.count_bytes(),
        "arrayrecord_per_tensor_bytes": tensors_to_record(params).count_bytes(),
        "arrays_packed": len(packed),
        "arrays_per_tensor": len(params),
    }


def dp_cost(cfg: RunConfig, repeats: int = 20) -> dict[str, float]:
    """Seconds of Flower's client-side clipping and server-side noise on the bench model's weights."""
    from flwr.supercore.differential_privacy import add_gaussian_noise_inplace, compute_clip_model_update

    params = [v.detach().numpy().copy() for v in build_model(cfg.model, 2, 1, 2).state_dict().values()
              if v.is_floating_point()]
    moved = [p + np.float32(0.01) for p in params]
    start = time.perf_counter()
    for _ in range(repeats):
        compute_clip_model_update([m.copy() for m in moved], params, 1.0)
    clip = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for _ in range(repeats):
        add_gaussian_noise_inplace([p.copy() for p in params], 0.01)
    noise = (time.perf_counter() - start) / repeats
    return {"client_clip_seconds": round(clip, 5), "server_noise_seconds": round(noise, 5)}


def dp_accuracy(out: Path, rounds: int, size: int) -> dict[str, Any]:
    """flower-sim FedAvg with and without central DP (z=1, C=1): mean test Dice and round seconds."""
    from fedseg.runtime.flower.simulation import run_flower_simulation

    result: dict[str, Any] = {"rounds": rounds, "noise_multiplier": 1.0, "clipping_norm": 1.0}
    for name, enabled in (("plain", False), ("dp", True)):
        cfg = bench_config(rounds, size).model_copy(deep=True)
        cfg.eval.every = 1
        cfg.privacy.client.enabled = enabled  # client-level DP (flower.dp was replaced by privacy.client)
        run_dir = out / f"sim_{name}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        summary = run_flower_simulation(cfg, run_dir, write_report=False).summary
        records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "round"]
        result[name] = {
            "test_dice_mean": round(float(summary["mean"]["global"]["dice"]), 4),
            "round_seconds": round(statistics.mean(float(r["seconds"]) for r in records), 3),
            "bytes_up_per_round": records[0]["bytes_up"],
        }
    return result


def run(out: Path, *, rounds: int = 5, size: int = 64, naive: bool = False, dp: bool = False,
        threads: int = 1) -> dict[str, Any]:
    """Every measurement; writes ``out/flower.json``. Every client trains with ``threads`` torch
    threads on every engine (in-process: this process; deployed: each ClientApp process)."""
    out.mkdir(parents=True, exist_ok=True)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(out, rounds=rounds, size=size, naive=naive, dp=dp, threads=threads)
    finally:
        torch.set_num_threads(saved_threads)


def _run(out: Path, *, rounds: int, size: int, naive: bool, dp: bool, threads: int) -> dict[str, Any]:
    cfg = bench_config(rounds, size)
    inproc_dir = out / "inprocess"
    if inproc_dir.exists():
        shutil.rmtree(inproc_dir)
    run_inprocess(cfg, inproc_dir, write_report=False)
    results: dict[str, Any] = {
        "machine": f"{platform.machine()}, torch {torch.__version__}, {threads} torch thread(s) per client",
        "work": f"FedAvg, 2D U-Net, 2 sites x {size}x{size} (40/28 images), 1 local epoch, {rounds} rounds",
        "engines": {"inprocess": per_round(inproc_dir)},
    }
    modes = ["deploy", "deploy-fast"] + (["deploy-subprocess"] if naive else [])
    for mode in modes:
        mode_cfg = bench_config(min(rounds, 3), size) if mode == "deploy-subprocess" else cfg
        results["engines"][mode] = run_deployment(out / mode, mode_cfg, mode=mode, threads=threads)
    base = results["engines"]["inprocess"]
    for mode in modes:
        e = results["engines"][mode]
        e["ratio_round"] = round(e["round_seconds"] / base["round_seconds"], 2)
        e["added_seconds_per_round"] = round(e["round_seconds"] - base["round_seconds"], 3)
        e["added_non_training_seconds"] = round(e["non_training_seconds"] - base["non_training_seconds"], 3)
    results["bytes"] = wire_vs_records(cfg)
    results["dp_cost"] = dp_cost(cfg)
    if dp:
        results["dp_accuracy"] = dp_accuracy(out, max(rounds, 10), size)
    (out / "flower.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def describe(results: dict[str, Any]) -> str:
    lines = [f"Flower deployment vs in-process ({results['work']}):"]
    base = results["engines"]["inprocess"]
    lines.append(f"  inprocess: {base['round_seconds']:.2f} s/round ({base['non_training_seconds']:.2f} s not training)")
    for mode, e in results["engines"].items():
        if mode == "inprocess":
            continue
        lines.append(
            f"  {mode}: {e['round_seconds']:.2f} s/round = {e['ratio_round']:.2f}x, +{e['added_seconds_per_round']:.2f} s "
            f"per round (+{e['added_non_training_seconds']:.2f} s not training; target <= 2 s)"
        )
    b = results["bytes"]
    lines.append(f"  one broadcast: {b['wire_bytes']} B fedseg wire, {b['arrayrecord_packed_bytes']} B Flower "
                 f"ArrayRecord packed ({b['arrays_packed']} Arrays), {b['arrayrecord_per_tensor_bytes']} B per tensor "
                 f"({b['arrays_per_tensor']} Arrays)")
    d = results["dp_cost"]
    lines.append(f"  DP: clipping {1000 * d['client_clip_seconds']:.1f} ms per update, noise "
                 f"{1000 * d['server_noise_seconds']:.1f} ms per round")
    if "dp_accuracy" in results:
        a = results["dp_accuracy"]
        lines.append(f"  DP accuracy (flower-sim, {a['rounds']} rounds, z=1, C=1): test Dice {a['dp']['test_dice_mean']} "
                     f"vs {a['plain']['test_dice_mean']} without; {a['dp']['round_seconds']} vs "
                     f"{a['plain']['round_seconds']} s/round; bytes up {a['dp']['bytes_up_per_round']} vs "
                     f"{a['plain']['bytes_up_per_round']}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--naive", action="store_true", help="also run --isolation subprocess (slow)")
    parser.add_argument("--dp", action="store_true", help="also measure DP's accuracy cost in flower-sim")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per client on every engine")
    parser.add_argument("--out", type=Path, default=Path("runs/bench/flower"))
    args = parser.parse_args()
    # SIGTERM (timeout, kill) unwinds like Ctrl-C, so the deployment's finally blocks stop the
    # SuperLink/SuperNodes it started instead of leaving them running.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    results = run(args.out, rounds=args.rounds, size=args.size, naive=args.naive, dp=args.dp, threads=args.threads)
    results["command"] = "python " + " ".join(sys.argv)
    (args.out / "flower.json").write_text(json.dumps(results, indent=2) + "\n")
    print(describe(results))
    print(f"results: {args.out / 'flower.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
