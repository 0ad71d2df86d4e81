"""Federated planning as a Flower message round: sites send fingerprints, the server sends the plan back.

Two queries (:class:`PlanAction`):

1. ``query.plan_fingerprint``: the ClientApp fingerprints its site's training cases
   (:func:`fedseg.planning.federated.client_fingerprint`, nothing per case) and replies with the
   fingerprint as JSON in the ConfigRecord ``fedseg.plan``.
2. ``query.plan_result``: the server merges the replies and plans
   (:func:`fedseg.planning.federated.server_plan`), then sends every node the plans file; the
   ClientApp keeps it in ``context.state`` (record ``fedseg.plan``, key ``plans-yaml``) and replies
   with an empty acknowledgement.

:func:`register_plan_queries` adds both handlers to a ClientApp; :func:`request_plan` is the
server's side on any :class:`~flwr.serverapp.Grid`. The node's site comes from its node config as
for training (``site`` + optional ``data-root``, or ``partition-id`` in simulation).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid

from fedseg.config import RunConfig
from fedseg.planning.federated import (
    PlanResult,
    client_fingerprint,
    fingerprint_from_json,
    fingerprint_to_json,
    server_plan,
)
from fedseg.planning.cases import training_cases
from fedseg.planning.fingerprint import PlanError
from fedseg.planning.plans_file import plan_to_yaml
from fedseg.runtime.flower.client_app import load_run_config
from fedseg.runtime.flower.keys import NodeKey

__all__ = ["PlanAction", "PlanField", "PLAN_RECORD", "register_plan_queries", "request_plan",
           "fingerprint_message"]

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


def _action(action: PlanAction) -> str:
    return action.value.split(".", 1)[1]


def register_plan_queries(client_app: ClientApp, defaults: Mapping[str, Any] | None = None) -> ClientApp:
    """Add the planning round's two query handlers to ``client_app`` (returned)."""
    base = dict(defaults or {})

    @client_app.query(_action(PlanAction.FINGERPRINT))
    def fingerprint(message: Message, context: Context) -> Message:
        cfg = load_run_config({**base, **context.run_config})
        return Message(fingerprint_message(cfg, context.node_config), reply_to=message)

    @client_app.query(_action(PlanAction.RESULT))
    def result(message: Message, context: Context) -> Message:
        text = str(message.content.config_records[PLAN_RECORD][PlanField.PLANS_YAML.value])
        context.state[PLAN_RECORD] = ConfigRecord({PlanField.PLANS_YAML.value: text})
        return Message(RecordDict(), reply_to=message)

    return client_app


def _exchange(grid: Grid, action: PlanAction, contents: Mapping[int, RecordDict]) -> dict[int, Message]:
    messages = [Message(content, dst_node_id=node, message_type=action.value, group_id="plan")
                for node, content in contents.items()]
    ids = list(grid.push_messages(messages))
    replies = {m.metadata.src_node_id: m for m in grid.pull_messages(ids)}
    missing = sorted(set(contents) - set(replies))
    if missing:
        raise PlanError(f"{action.value}: no reply from node(s) {missing}")
    for node, reply in replies.items():
        if reply.has_error():
            raise PlanError(f"{action.value}: node {node} failed: {reply.error.reason}")
    return replies


def request_plan(grid: Grid, cfg: RunConfig, source: str = "flower") -> PlanResult:
    """The server's planning round: ask every node for its fingerprint, plan, send the plan back.

    Raises:
        PlanError: a node failed or did not reply, or the fingerprints cannot be planned from.
    """
    nodes = sorted(grid.get_node_ids())
    if not nodes:
        raise PlanError("no node connected: nothing to plan from")
    replies = _exchange(grid, PlanAction.FINGERPRINT, {n: RecordDict() for n in nodes})
    sites, fingerprints = [], []
    for node in nodes:
        record = replies[node].content.config_records[PLAN_RECORD]
        sites.append(str(record[PlanField.SITE.value]))
        fingerprints.append(fingerprint_from_json(str(record[PlanField.FINGERPRINT.value])))
    result = server_plan(cfg, fingerprints, sites)
    text = plan_to_yaml(result.plan, result.sites, source)
    _exchange(grid, PlanAction.RESULT,
              {n: RecordDict({PLAN_RECORD: ConfigRecord({PlanField.PLANS_YAML.value: text})}) for n in nodes})
    return result
