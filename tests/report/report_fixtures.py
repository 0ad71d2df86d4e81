"""Hand-written run directories, in the current schema (judged_by, selection, comm lines, raw
bytes) and in the schema of older runs (none of these), so report tests do not depend on the
engine. Keys come from fedseg.records, as the engine writes them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from fedseg.config import RunConfig
from fedseg.engine.rundir import RunDir
from fedseg.records import (
    METRIC_KEYS,
    SERVER,
    Field,
    InfoKey,
    Kind,
    ModelKind,
    Selection,
    SelectionKey,
    Split,
    SummaryKey,
)

SITES = ("hospital_a", "hospital_b")
COMMAND = "fedseg run --config configs/fedprox.yaml --set seed=0 --out runs/fedprox"

Table = dict[str, dict[str, dict[str, Any]]]


def metrics(dice: float, hd95: float = 3.0, n: int = 5) -> dict[str, Any]:
    return {Field.DICE: dice, Field.IOU: dice / (2 - dice), Field.HD95: hd95, Field.PRECISION: 0.9,
            Field.RECALL: 0.75, Field.N: n}


def uniform(models: tuple[str, ...], dice: float = 0.5) -> Table:
    return {m: {s: metrics(dice) for s in SITES} for m in models}


def _test_lines(table: Table, rnd: int, selection: str | None, rounds: dict[str, dict[str, int]]) -> list[dict[str, Any]]:
    lines = []
    for model, per_site in table.items():
        for site, m in per_site.items():
            line = {Field.ROUND: rnd, Field.SITE: site, Field.KIND: Kind.EVAL, Field.SPLIT: Split.TEST,
                    Field.MODEL: model, **m}
            if selection is not None:
                line[Field.SELECTION] = selection
                line[Field.SELECTED_ROUND] = rounds.get(model, {}).get(site, rnd)
            lines.append(line)
    return lines


def write_run(
    root: Path,
    *,
    name: str = "fedprox",
    algorithm: dict[str, Any] | None = None,
    seed: int = 0,
    old: bool = False,
    has_global: bool = True,
    judged_by: str = ModelKind.GLOBAL,
    optimizer_state: str = "reset",
    test: Table | None = None,
    test_last: Table | None = None,
    select: str = Selection.BEST_VAL,
    selected_round: int | None = None,
    per_client: dict[str, int] | None = None,
    val: dict[str, dict[str, list[float]]] | None = None,
    rounds: int = 3,
    finished: bool = True,
    up: int = 1_000_000,
    down: int = 2_000_000,
    up_raw: int = 4_000_000,
    down_raw: int = 4_000_000,
    comm: list[dict[str, Any]] | None = None,
    write_summary: bool = True,
) -> Path:
    """Write run_info.json, config.yaml, command.txt, metrics.jsonl and summary.json.

    Each round every site trains with ``up``/``down`` bytes (raw: ``up_raw``/``down_raw``) and
    the server writes their sums. ``old=True`` writes the schema of runs older than judged_by,
    selection, comm lines and raw bytes (test = the last round's model).
    """
    algorithm = algorithm or {"name": "fedprox", "mu": 0.01}
    run = RunDir(root)
    run.create()
    cfg = RunConfig(name=name, seed=seed, algorithm=algorithm, federation={"rounds": rounds})
    config = cfg.model_dump(mode="json")
    config["train"]["optimizer_state"] = optimizer_state
    run.config.write_text(yaml.safe_dump(config, sort_keys=False))
    run.command.write_text(COMMAND + "\n")
    info: dict[str, Any] = {
        InfoKey.NAME: name, InfoKey.ALGORITHM: algorithm["name"], InfoKey.ALGORITHM_PARAMS: algorithm,
        InfoKey.HAS_GLOBAL_MODEL: has_global, InfoKey.POOLED_DATA: False, InfoKey.SITES: list(SITES),
        InfoKey.CLIENTS: list(SITES), InfoKey.SPATIAL_DIMS: 2, InfoKey.NUM_CLASSES: 2, InfoKey.IN_CHANNELS: 1,
        InfoKey.SEED: seed, InfoKey.DEVICE: "cpu",
    }  # fmt: skip
    if not old:
        info.update({InfoKey.OPTIMIZER_STATE: optimizer_state, InfoKey.JUDGED_BY: judged_by,
                     InfoKey.UNSEEN_POLICY: "the global model"})
    run.write_json(run.info, info)
    models = (ModelKind.GLOBAL, ModelKind.PERSONAL) if has_global else (ModelKind.PERSONAL,)
    val = val or {m: {s: [0.5] * rounds for s in SITES} for m in models}
    raw = {} if old else {Field.BYTES_UP_RAW: up_raw, Field.BYTES_DOWN_RAW: down_raw}
    raw_round = {} if old else {Field.BYTES_UP_RAW: up_raw * len(SITES), Field.BYTES_DOWN_RAW: down_raw * len(SITES)}
    for rnd in range(1, rounds + 1):
        records: list[dict[str, Any]] = []
        for i, site in enumerate(SITES):
            records.append({Field.ROUND: rnd, Field.SITE: site, Field.KIND: Kind.TRAIN, Field.LOSS: 1.0 / rnd + i,
                            Field.N: 8 + 4 * i, Field.BYTES_UP: up, Field.BYTES_DOWN: down, Field.SECONDS: 1.5, **raw})
        records.append({Field.ROUND: rnd, Field.SITE: SERVER, Field.KIND: Kind.ROUND, Field.CLIENTS: 2,
                        Field.BYTES_UP: up * len(SITES), Field.BYTES_DOWN: down * len(SITES), Field.SECONDS: 4.0,
                        Field.OVERHEAD_SECONDS: 0.5, **raw_round})
        for site in SITES:
            for model in models:
                records.append({Field.ROUND: rnd, Field.SITE: site, Field.KIND: Kind.EVAL, Field.SPLIT: Split.VAL,
                                Field.MODEL: model, **metrics(val[model][site][rnd - 1], 3.0, 2)})
        run.append_metrics(records)
    if comm:
        run.append_metrics([{Field.SITE: SERVER, Field.KIND: Kind.COMM, **c} for c in comm])
    if not finished:
        return root
    test = test or uniform(models)
    if old:
        run.append_metrics(_test_lines(test, rounds, None, {}))
        summary: dict[str, Any] = {SummaryKey.ALGORITHM: algorithm["name"], SummaryKey.ROUNDS: rounds,
                                   SummaryKey.TEST: test}
    else:
        per_client = per_client or {}
        global_round = selected_round if has_global else None
        chosen_rounds = {ModelKind.GLOBAL: {s: global_round or rounds for s in SITES}, ModelKind.PERSONAL: per_client}
        lines = _test_lines(test, rounds, select, chosen_rounds)
        if select == Selection.BEST_VAL:
            test_last = test_last or test
            lines += _test_lines(test_last, rounds, Selection.LAST, {})
        run.append_metrics(lines)
        summary = {
            SummaryKey.ALGORITHM: algorithm["name"], SummaryKey.ROUNDS: rounds, SummaryKey.JUDGED_BY: judged_by,
            SummaryKey.SELECTION: {SelectionKey.MODE: select,
                                   SelectionKey.ROUND: global_round if select == Selection.BEST_VAL else rounds,
                                   SelectionKey.PER_CLIENT: per_client},
            SummaryKey.TEST: test, SummaryKey.TEST_LAST: test_last or test,
        }  # fmt: skip
    if write_summary:
        summary[SummaryKey.TEST] = {m: {s: {k: v[k] for k in METRIC_KEYS} for s, v in t.items()} for m, t in test.items()}
        run.write_json(run.summary, summary)
    return root
