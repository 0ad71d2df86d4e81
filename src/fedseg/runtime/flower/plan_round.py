"""Federated planning as a Flower message round: sites send fingerprints, the server sends the plan back.

Two queries (:class:`PlanAction`), answered by every fedseg ClientApp
(:func:`~fedseg.runtime.flower.client_app.make_client_app` registers them):

1. ``query.plan_fingerprint``: the ClientApp fingerprints its site's training cases
   (:func:`fedseg.planning.federated.client_fingerprint`, nothing per case) and replies with its
   site name and the fingerprint as JSON in the ConfigRecord ``fedseg.plan``.
2. ``query.plan_result``: the server merges the replies and plans
   (:func:`fedseg.planning.federated.server_plan`), then sends every node the plans file; the
   ClientApp keeps it in ``context.state`` (record ``fedseg.plan``, key ``plans-yaml``) and replies
   with an empty acknowledgement.

:func:`request_plan` is the server's side on any :class:`~flwr.serverapp.Grid`: it waits for the
SuperNodes like a training run, and refuses a reply that is not a sound fingerprint of the run's
data (:func:`check_fingerprint`), naming the site. :func:`run_plan_server` is what the fedseg
ServerApp runs instead of training when the run config says ``fedseg-plan-only = true``
(``fedseg flower app --plan-only``): it writes ``plans.yaml`` and ``plans.md`` into the run
directory. The node's site comes from its node config as for training (``site`` + optional
``data-root``, or ``partition-id`` in simulation).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from fedseg.config import RunConfig
from fedseg.data.base import DataError
from fedseg.planning.cases import training_cases
from fedseg.planning.federated import (
    PlanResult,
    client_fingerprint,
    fingerprint_from_json,
    fingerprint_to_json,
    server_plan,
)
from fedseg.planning.fingerprint import INTENSITY_HIGH, INTENSITY_LOW, Fingerprint, PlanError
from fedseg.planning.plans_file import plan_to_yaml, write_plans
from fedseg.runtime.common import RunError
from fedseg.runtime.flower.executor import _exchange
from fedseg.runtime.flower.keys import NodeKey, RunKey

__all__ = ["PlanAction", "PlanField", "PLAN_RECORD", "register_plan_queries", "request_plan",
           "fingerprint_message", "check_fingerprint", "is_plan_only", "run_plan_server"]

logger = logging.getLogger(__name__)

PLAN_RECORD = "fedseg.plan"
"""ConfigRecord of both queries' payloads (and of the plan kept in ``context.state``)."""


class PlanAction(StrEnum):
    """Message types of the planning round."""

    FINGERPRINT = "query.plan_fingerprint"
    RESULT = "query.plan_result"


class PlanField(StrEnum):
    """Keys inside the ``fedseg.plan`` ConfigRecord."""

    SITE = "site"
    FINGERPRINT = "fingerprint"
    PLANS_YAML = "plans-yaml"


# ---------------------------------------------------------------------------------------------- client
def _site_cases(cfg: RunConfig, node_config: Mapping[str, Any]) -> tuple[str, Any]:
    """The node's site name and its training cases (only its own folder is read in a deployment)."""
    site = node_config.get(NodeKey.SITE.value)
    if site is not None:
        name = str(site)
        root = node_config.get(NodeKey.DATA_ROOT.value)
        data = cfg.data if root is None else cfg.data.model_copy(update={"root": Path(str(root)), "sites": [name]})
        cases = training_cases(data, cfg.seed)
        if name not in cases:
            raise PlanError(f"node site {name!r} is not among the data's sites ({', '.join(cases)})")
        return name, cases[name]
    partition = node_config.get(NodeKey.PARTITION_ID.value)
    if partition is None:
        raise PlanError(f"the node config names no site: set {NodeKey.SITE.value} (or {NodeKey.PARTITION_ID.value})")
    cases = training_cases(cfg.data, cfg.seed)
    names = list(cases)
    index = int(partition)
    if not 0 <= index < len(names):
        raise PlanError(f"{NodeKey.PARTITION_ID.value}={index}, but the data has {len(names)} sites")
    return names[index], cases[names[index]]


def fingerprint_message(cfg: RunConfig, node_config: Mapping[str, Any]) -> RecordDict:
    """The client's reply content: its site name and fingerprint (JSON), nothing per case."""
    name, cases = _site_cases(cfg, node_config)
    fp = client_fingerprint(cfg, name, cases)
    return RecordDict({PLAN_RECORD: ConfigRecord({PlanField.SITE.value: name,
                                                  PlanField.FINGERPRINT.value: fingerprint_to_json(fp)})})


def _node_name(node_config: Mapping[str, Any]) -> str:
    site = node_config.get(NodeKey.SITE.value)
    return f"site {str(site)!r}" if site is not None else \
        f"the node with {NodeKey.PARTITION_ID.value}={node_config.get(NodeKey.PARTITION_ID.value)}"


def _action(action: PlanAction) -> str:
    return action.value.split(".", 1)[1]


def register_plan_queries(client_app: ClientApp, defaults: Mapping[str, Any] | None = None) -> ClientApp:
    """Add the planning round's two query handlers to ``client_app`` (returned).

    Args:
        defaults: run-config values used where the Flower run config has none (as
            :func:`~fedseg.runtime.flower.client_app.make_client_app`).
    """
    base = dict(defaults or {})

    @client_app.query(_action(PlanAction.FINGERPRINT))
    def fingerprint(message: Message, context: Context) -> Message:
        from fedseg.runtime.flower.client_app import load_run_config  # client_app imports this module

        cfg = load_run_config({**base, **context.run_config})
        try:
            return Message(fingerprint_message(cfg, context.node_config), reply_to=message)
        except (PlanError, DataError) as exc:  # the server's error names the site
            raise PlanError(f"{_node_name(context.node_config)}: {exc}") from exc

    @client_app.query(_action(PlanAction.RESULT))
    def result(message: Message, context: Context) -> Message:
        text = str(message.content.config_records[PLAN_RECORD][PlanField.PLANS_YAML.value])
        context.state[PLAN_RECORD] = ConfigRecord({PlanField.PLANS_YAML.value: text})
        return Message(RecordDict(), reply_to=message)

    return client_app


# ---------------------------------------------------------------------------------------------- server
def _fail(site: str, problem: str) -> PlanError:
    return PlanError(f"site {site}: refused fingerprint: {problem}")


def _counts(site: str, key: str, m: Mapping[int, int], low: int, high: int, total: int | None) -> None:
    """A value->count map: keys in ``[low, high)``, counts > 0, summing to ``total`` when given."""
    bad = [k for k, v in m.items() if v < 0 or not low <= k < high]
    if bad:
        raise _fail(site, f"{key} has keys outside [{low}, {high}) or negative counts (e.g. {bad[0]})")
    if total is not None and sum(m.values()) != total:
        raise _fail(site, f"{key} counts {sum(m.values())} cases, num_cases is {total}")


def check_fingerprint(fp: Fingerprint, cfg: RunConfig, site: str) -> None:
    """Refuse a site's fingerprint that cannot be the sum of its cases' (a hostile or broken site).

    Checks the layout against the run's data (dimensions, channels, classes), every list's length,
    keys inside their public ranges, non-negative counts, finite sums and, when the sites add no
    noise (``plan.dp_epsilon`` unset), case counts that add up to ``num_cases``.

    Raises:
        PlanError: the first problem found, naming ``site`` and the field.
    """
    data = cfg.data
    dims = data.spatial_dims if data.spatial_dims is not None else fp.spatial_dims
    want = {"spatial_dims": (fp.spatial_dims, dims if dims in (2, 3) else "2 or 3"),
            "channels": (fp.channels, data.channels), "num_classes": (fp.num_classes, data.num_classes)}
    for key, (got, expected) in want.items():
        if got != expected:
            raise _fail(site, f"{key} {got}, the run's data has {expected}")
    lengths: dict[str, tuple[Sequence[Any], int]] = {
        "spacing_um": (fp.spacing, dims), "shape": (fp.shape, dims), "extent_um": (fp.extent, dims),
        "intensity_bins": (fp.intensity, fp.channels), "intensity_count": (fp.intensity_count, fp.channels),
        "intensity_sum": (fp.intensity_sum, fp.channels), "intensity_sumsq": (fp.intensity_sumsq, fp.channels),
        "intensity_min": (fp.intensity_min, fp.channels), "intensity_max": (fp.intensity_max, fp.channels),
        "class_voxels": (fp.class_voxels, fp.num_classes)}
    for key, (values, n) in lengths.items():
        if len(values) != n:
            raise _fail(site, f"{key} has {len(values)} entries, expected {n}")
    if fp.num_cases < 1:
        raise _fail(site, f"num_cases {fp.num_cases} (a site plans from at least one training case)")
    total = fp.num_cases if cfg.plan.dp_epsilon is None else None  # noised counts need not add up
    for a in range(dims):
        _counts(site, f"spacing_um[{a}]", fp.spacing[a], 1, 2**40, total)
        _counts(site, f"shape[{a}]", fp.shape[a], 1, 2**31, total)
        _counts(site, f"extent_um[{a}]", fp.extent[a], 1, 2**62, total)
    _counts(site, "crop_size_1e4", fp.crop_size, 1, 10001, total)
    for c in range(fp.channels):
        _counts(site, f"intensity_bins[{c}]", fp.intensity[c], INTENSITY_LOW, INTENSITY_HIGH, None)
        if sum(fp.intensity[c].values()) != fp.intensity_count[c]:
            raise _fail(site, f"intensity_bins[{c}] hold {sum(fp.intensity[c].values())} voxels, "
                              f"intensity_count[{c}] is {fp.intensity_count[c]}")
        sums = (fp.intensity_sum[c], fp.intensity_sumsq[c])
        if fp.intensity_count[c] and not (all(map(math.isfinite, sums)) and sums[1] >= 0
                                          and fp.intensity_min[c] <= fp.intensity_max[c]):
            raise _fail(site, f"intensity sums/range of channel {c} are not finite or not ordered")
    if any(v < 0 for v in fp.class_voxels):
        raise _fail(site, f"class_voxels {fp.class_voxels} has a negative count")
    if sum(fp.modalities.values()) != 1 or any(v != 1 for v in fp.modalities.values()):
        raise _fail(site, f"modalities {fp.modalities}: a site reports its one modality once")


def _wait_for_nodes(grid: Grid, cfg: RunConfig, want: int) -> list[int]:
    deadline = time.monotonic() + cfg.flower.connect_timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= want:
            return nodes
        if time.monotonic() > deadline:
            raise PlanError(f"only {len(nodes)} of {want} sites connected within {cfg.flower.connect_timeout:g} s "
                            "(flower.connect_timeout); start one SuperNode per site (docs/deployment.md)")
        time.sleep(cfg.flower.poll_interval)


def _exchange_all(grid: Grid, cfg: RunConfig, action: PlanAction, contents: Mapping[int, RecordDict]
                  ) -> dict[int, Message]:
    """Send each node its content, wait for every reply (``flower.reply_timeout``); every failing
    node's error at once."""
    messages = [(str(node), Message(content, dst_node_id=node, message_type=action.value, group_id="plan",
                                    ttl=cfg.flower.reply_timeout)) for node, content in contents.items()]
    errors: dict[str, str] = {}
    replies = _exchange(grid, messages, timeout=cfg.flower.reply_timeout, poll=cfg.flower.poll_interval,
                        what=action.value, errors=errors)
    if errors:
        raise PlanError(f"{action.value}: {len(errors)} node(s) failed, so no plan was made:\n"
                        + "\n".join(f"- node {node}: {reason}" for node, reason in sorted(errors.items())))
    return {int(node): reply for node, reply in replies.items()}


def _reply(cfg: RunConfig, node: int, reply: Message) -> tuple[str, Fingerprint]:
    """The site name and checked fingerprint of one node's reply."""
    record = reply.content.config_records.get(PLAN_RECORD)
    site, text = (record.get(PlanField.SITE.value), record.get(PlanField.FINGERPRINT.value)) if record else (None, None)
    if not isinstance(site, str) or not site or not isinstance(text, str):
        raise PlanError(f"node {node}: refused fingerprint reply: no {PLAN_RECORD!r} record with a "
                        f"{PlanField.SITE.value!r} and a {PlanField.FINGERPRINT.value!r} text (is the node running "
                        "fedseg's ClientApp?)")
    try:
        fp = fingerprint_from_json(text)
    except PlanError as exc:
        raise _fail(f"{site!r} (node {node})", str(exc)) from None
    check_fingerprint(fp, cfg, f"{site!r} (node {node})")
    return site, fp


def _expected_sites(cfg: RunConfig) -> list[str] | None:
    """The site names the deployment waits for (as the training ServerApp: ``flower.sites``, else ``data.sites``)."""
    listed = cfg.flower.sites or cfg.data.sites
    return list(listed) if listed else None


def request_plan(grid: Grid, cfg: RunConfig, source: str = "flower", *, expected_nodes: int | None = None,
                 order: Sequence[str] | None = None) -> PlanResult:
    """The server's planning round: ask every node for its fingerprint, plan, send the plan back.

    Args:
        source: the plans file's ``source`` (sent to the sites with the plan).
        expected_nodes: simulation: the number of SuperNodes to wait for; a deployment waits for
            the configuration's sites (``flower.sites``, else ``data.sites``), else one node.
        order: the sites' order for the merge and the plans file (simulation: the data's site
            order, so the file equals the in-process ``fedseg plan``'s); default: the
            configuration's site list, else site names sorted.

    Raises:
        PlanError: a node failed, did not reply or sent a fingerprint that is refused
            (:func:`check_fingerprint`), two nodes serve one site, a site is not one of the run's,
            or the fingerprints cannot be planned from.
    """
    expected = _expected_sites(cfg)
    want = len(expected) if expected is not None else (expected_nodes or 1)
    nodes = _wait_for_nodes(grid, cfg, want)
    replies = _exchange_all(grid, cfg, PlanAction.FINGERPRINT, {n: RecordDict() for n in nodes})
    by_site: dict[str, tuple[int, Fingerprint]] = {}
    for node in nodes:
        site, fp = _reply(cfg, node, replies[node])
        if site in by_site:
            raise PlanError(f"two nodes serve site {site!r} (nodes {by_site[site][0]} and {node}); give each "
                            "SuperNode its own --node-config site")
        if expected is not None and site not in expected:
            raise PlanError(f"node {node} serves site {site!r}, which is not one of the run's sites "
                            f"({', '.join(expected)}); set flower.sites in the run config")
        by_site[site] = (node, fp)
    rank = list(order or expected or [])
    sites = sorted(by_site, key=lambda s: (rank.index(s) if s in rank else len(rank), s))
    result = server_plan(cfg, [by_site[s][1] for s in sites], sites)
    text = plan_to_yaml(result.plan, result.sites, source)
    logger.info("planned from %d sites (%s): %s", len(sites), ", ".join(sites), result.plan.configuration)
    _exchange_all(grid, cfg, PlanAction.RESULT,
                  {n: RecordDict({PLAN_RECORD: ConfigRecord({PlanField.PLANS_YAML.value: text})}) for n in nodes})
    return result


def is_plan_only(run_config: Mapping[str, Any]) -> bool:
    """Whether the Flower run config asks the ServerApp for the planning round only."""
    value = run_config.get(RunKey.PLAN_ONLY.value, False)
    return value is True or str(value).lower() == "true"


def run_plan_server(grid: Grid, run_config: Mapping[str, Any]) -> Path:
    """The ServerApp's planning-only run: plan from the connected sites and write ``plans.yaml``
    and ``plans.md`` (+ ``fingerprint.png``) into the run config's ``run-dir``; the plans path.

    Raises:
        RunError: no ``run-dir``.
        PlanError: see :func:`request_plan`.
    """
    from fedseg.planning.report import write_plan_report
    from fedseg.runtime.flower.client_app import load_run_config  # client_app imports this module

    cfg = load_run_config(run_config)
    value = run_config.get(RunKey.RUN_DIR.value)
    if not isinstance(value, str) or not value:
        raise RunError(f"the Flower run config has no {RunKey.RUN_DIR.value!r}; got keys {sorted(run_config)}")
    out = Path(value).expanduser()
    source = str(run_config.get(RunKey.COMMAND.value) or "flower")
    result = request_plan(grid, cfg, source=source)
    path = write_plans(out / "plans.yaml", result.plan, result.sites, source=source)
    write_plan_report(result.plan, result.fingerprint, result.sites, out)
    logger.info("fedseg ServerApp: plans written to %s", path)
    return path
