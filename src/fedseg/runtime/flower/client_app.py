"""The fedseg Flower ClientApp: one site's :class:`~fedseg.engine.client.ClientRuntime` behind
Flower's Message API.

Message types (:class:`~fedseg.runtime.flower.keys.Action`): ``query.hello`` (which site this
node serves, the shape of its data, its package versions), ``train`` (one round of local training), ``train.personalize``
(the algorithm's post-federation phase) and ``evaluate`` (metrics on the site's own split); and the
planning round's ``query.plan_fingerprint`` / ``query.plan_result``
(:mod:`~fedseg.runtime.flower.plan_round`), which read only the site's training cases.

The site's data, model and runtime are built once per process and cached, so a long-lived ClientApp
process (``fedseg flower clientapp``, or a Ray actor in simulation) never re-reads data or rebuilds
the model between rounds. The site's data is checked (``runtime.common.prepare_data``: every problem
at once, each file named) when the first message of a run arrives, before any training; a failure
reaches the server as an error reply naming the site. The client's persistent state lives in
``context.state`` (converted with :func:`~fedseg.runtime.flower.records.state_to_records`), which
Flower keeps on the SuperNode: personal parameters never enter a reply. In simulation (only) each
ClientApp also writes its state to the run's ``client_states/`` after every round, and restores it
from there when the server says its checkpoint refers to another file (``--resume``).

Which site a node serves comes from its node config: ``site`` (+ ``data-root`` for folder data)
in a deployment, ``partition-id`` (the site's index in ``build_federated_data(cfg.data, seed)``)
in simulation.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedseg.config import RunConfig, config_from_dict
from fedseg.data.base import DataError, FederatedData, SiteData
from fedseg.data.build import build_federated_data
from fedseg.engine import wire
from fedseg.engine.client import ClientRuntime
from fedseg.engine.seeding import configure_determinism
from fedseg.engine.state_store import atomic_torch_save
from fedseg.engine.trainer import resolve_device
from fedseg.io.packages import package_versions
from fedseg.records import Split
from fedseg.runtime.build import Federation, build_federation
from fedseg.runtime.common import DataSpec, RunError, prepare_data, site_split_digests
from fedseg.runtime.flower.keys import Action, Field, NodeKey, Record, RunKey, state_file_name
from fedseg.runtime.flower.plan_round import register_plan_queries
from fedseg.runtime.flower.records import (
    PACKED,
    broadcast_from_content,
    eval_content,
    scalars_to_config,
    state_from_records,
    state_to_records,
    update_content,
)
from fedseg.types import ClientState, ClientUpdate

__all__ = ["app", "make_client_app", "ClientSetupError", "load_run_config", "clear_cache"]

logger = logging.getLogger(__name__)


class ClientSetupError(RunError):
    """The node's config or the run config does not describe a site this node can serve."""


def load_run_config(run_config: Mapping[str, Any]) -> RunConfig:
    """The fedseg configuration carried by a Flower run config (key ``fedseg-config``, YAML text).

    Raises:
        ClientSetupError: the key is missing or does not hold a mapping.
        fedseg.config.ConfigError: the configuration is invalid (the message names the key).
    """
    text = run_config.get(RunKey.CONFIG.value)
    if not isinstance(text, str) or not text.strip():
        raise ClientSetupError(
            f"the Flower run config has no {RunKey.CONFIG.value!r} (the fedseg YAML as text); got keys "
            f"{sorted(run_config)}. Write the app with `fedseg flower app` (docs/deployment.md)"
        )
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict):
        raise ClientSetupError(f"run config {RunKey.CONFIG.value!r} must be a YAML mapping, got {type(raw).__name__}")
    return config_from_dict(raw)


@dataclass
class _Site:
    """One site as served by this process: its data and its federation (algorithm, model, runtimes)."""

    site: SiteData
    order: int
    spec: DataSpec
    federation: Federation

    def runtime(self, index: int) -> ClientRuntime:
        """The site's runtime at its federation index (the server assigns it; it seeds the rounds)."""
        return self.federation.client(self.site.name, index)


_LOCK = threading.Lock()
_SITES: dict[tuple[str, str], _Site] = {}
_DATA: dict[tuple[str, int], FederatedData] = {}


def clear_cache() -> None:
    """Forget every cached site (tests; a long-lived process keeps them for its lifetime)."""
    with _LOCK:
        _SITES.clear()
        _DATA.clear()


def _federation(cfg: RunConfig) -> FederatedData:
    key = (cfg.data.model_dump_json(), cfg.seed)
    if key not in _DATA:
        _DATA[key] = prepare_data(cfg, build_federated_data(cfg.data, cfg.seed, mixed_shapes=cfg.train.patch_size is not None))
    return _DATA[key]


def _node_site(cfg: RunConfig, node_config: Mapping[str, Any]) -> tuple[SiteData, int, DataSpec]:
    """The site this node serves, its position hint (partition id, or -1) and the data's spec."""
    site = node_config.get(NodeKey.SITE.value)
    if site is not None:
        name = str(site)
        root = node_config.get(NodeKey.DATA_ROOT.value)
        if root is not None:
            if cfg.data.source != "folder":
                raise ClientSetupError(
                    f"node config {NodeKey.DATA_ROOT.value}={root!r} needs data.source 'folder' in the run config, "
                    f"got {cfg.data.source!r}; drop {NodeKey.DATA_ROOT.value} for synthetic data"
                )
            data_cfg = cfg.data.model_copy(update={"root": Path(str(root)), "sites": [name]})
            data = prepare_data(cfg, build_federated_data(data_cfg, cfg.seed, mixed_shapes=cfg.train.patch_size is not None), partial=True)
            return data.site(name), -1, DataSpec.of(data)
        data = _federation(cfg)
        return data.site(name), -1, DataSpec.of(data)
    partition = node_config.get(NodeKey.PARTITION_ID.value)
    if partition is not None:
        data = _federation(cfg)
        index = int(partition)
        if not 0 <= index < len(data.sites):
            raise ClientSetupError(
                f"node config {NodeKey.PARTITION_ID.value}={index}, but the data has {len(data.sites)} sites "
                f"({', '.join(s.name for s in data.sites)}); run one SuperNode per site"
            )
        return data.sites[index], index, DataSpec.of(data)
    raise ClientSetupError(
        f"the node config names no site: set --node-config '{NodeKey.SITE.value}=\"<name>\"' (and "
        f"'{NodeKey.DATA_ROOT.value}=\"/path\"' for folder data) on flower-supernode; got {dict(node_config)}"
    )


def _describe_node(node_config: Mapping[str, Any]) -> str:
    """How an error names the node: its site (and data folder) or its partition id."""
    site = node_config.get(NodeKey.SITE.value)
    if site is None:
        return f"the SuperNode with {NodeKey.PARTITION_ID.value}={node_config.get(NodeKey.PARTITION_ID.value)}"
    root = node_config.get(NodeKey.DATA_ROOT.value)
    return f"site {str(site)!r}" + (f" ({NodeKey.DATA_ROOT.value} {root})" if root is not None else "")


def _site(context: Context, defaults: Mapping[str, Any]) -> _Site:
    run_config = {**defaults, **context.run_config}
    text = str(run_config.get(RunKey.CONFIG.value, ""))
    node = {k: context.node_config[k] for k in sorted(context.node_config)}
    key = (hashlib.sha256(text.encode()).hexdigest(), repr(node))
    with _LOCK:
        if key in _SITES:
            return _SITES[key]
        cfg = load_run_config(run_config)
        configure_determinism(cfg.train.deterministic)
        try:
            site, order, spec = _node_site(cfg, node)
        except DataError as exc:  # the pre-training data check failed: name the site to the server
            raise DataError(f"{_describe_node(node)}: {exc}", exc.problems) from exc
        # a ClientApp never knows whether it is simulated: any engine but in-process refuses pooling
        federation = build_federation(cfg, spec, resolve_device(cfg.train.device), engine="flower", data=[site])
        entry = _Site(site, order, spec, federation)
        _SITES[key] = entry
        logger.info("fedseg ClientApp: serving site %s (pid %d)", site.name, os.getpid())
        return entry


def _payload(message: Message, site: _Site) -> tuple[bytes, dict[str, Any]]:
    broadcast, control = broadcast_from_content(message.content)
    name = control.get(Field.CLIENT_ID.value)
    if name != site.site.name:
        raise ClientSetupError(f"message for client {name!r} reached the node serving {site.site.name!r}")
    return wire.encode(broadcast), control


def _hello(message: Message, context: Context, defaults: Mapping[str, Any]) -> Message:
    site = _site(context, defaults)
    hello = {
        Field.SITE.value: site.site.name,
        Field.SITE_ORDER.value: site.order,
        Field.SPATIAL_DIMS.value: site.spec.spatial_dims,
        Field.IN_CHANNELS.value: site.spec.in_channels,
        Field.NUM_CLASSES.value: site.spec.num_classes,
        Field.N_TRAIN.value: len(site.site.train),
        Field.N_VAL.value: len(site.site.val),
        Field.N_TEST.value: len(site.site.test),
        Field.SPLIT_SHA256.value: list(site_split_digests(site.site).values()),
        Field.PID.value: os.getpid(),
        **{f"{Field.VERSION_PREFIX.value}{name}": v for name, v in package_versions().items()},
    }
    return Message(RecordDict({Record.HELLO.value: scalars_to_config(hello, where="hello")}), reply_to=message)


def _load_state(context: Context, control: Mapping[str, Any], state_dir: Path | None) -> ClientState:
    """The client's state: ``context.state``; in simulation first replaced by the file the server's
    checkpoint names when ``context.state`` holds another (a resumed run starts with empty contexts)."""
    if state_dir is not None:
        want = str(control.get(Field.STATE_FILE.value, ""))
        held = context.state.config_records.get(Record.STATE_FILE.value)
        have = str(held[Field.STATE_FILE.value]) if held is not None else ""
        if want != have:
            state: ClientState = {}
            if want:
                path = state_dir / want
                if not path.is_file():
                    raise ClientSetupError(f"the server's checkpoint refers to client state {path}, which is missing")
                from fedseg.io.safe import load_checkpoint  # weights_only: a state file never runs code

                state = load_checkpoint(path, what="client state")
            state_to_records(state, context.state)
            context.state[Record.STATE_FILE.value] = ConfigRecord({Field.STATE_FILE.value: want})
            return state
    return state_from_records(context.state)


def _save_state(context: Context, state: ClientState, site: _Site, rnd: int, state_dir: Path | None) -> None:
    """Keep the state in ``context.state``; in simulation also in ``state_dir`` (see RunKey.STATE_DIR)."""
    state_to_records(state, context.state)
    if state_dir is not None:
        name = state_file_name(site.site.name, rnd)
        atomic_torch_save(state, state_dir / name)
        context.state[Record.STATE_FILE.value] = ConfigRecord({Field.STATE_FILE.value: name})


def _train(message: Message, context: Context, defaults: Mapping[str, Any], state_dir: Path | None) -> Message:
    site = _site(context, defaults)
    payload, control = _payload(message, site)
    runtime = site.runtime(int(control[Field.CLIENT_INDEX.value]))
    state = _load_state(context, control, state_dir)
    rnd = int(control[Field.ROUND.value])
    data, record = runtime.fit(rnd, payload, state)
    _save_state(context, state, site, rnd, state_dir)
    update = wire.decode(data)
    if not isinstance(update, ClientUpdate):
        raise TypeError(f"{site.site.name}: the client runtime did not return a ClientUpdate")
    return Message(update_content(update, record, pack=bool(control[PACKED])), reply_to=message)


def _personalize(message: Message, context: Context, defaults: Mapping[str, Any], state_dir: Path | None
                 ) -> Message:
    site = _site(context, defaults)
    payload, control = _payload(message, site)
    runtime = site.runtime(int(control[Field.CLIENT_INDEX.value]))
    state = _load_state(context, control, state_dir)
    rnd = int(control[Field.ROUND.value])
    record = runtime.personalize(rnd, payload, state)
    _save_state(context, state, site, rnd, state_dir)
    return Message(RecordDict({Record.RECORD.value: scalars_to_config(record, where="personalize record")}),
                   reply_to=message)


def _evaluate(message: Message, context: Context, defaults: Mapping[str, Any], state_dir: Path | None) -> Message:
    site = _site(context, defaults)
    payload, control = _payload(message, site)
    runtime = site.runtime(int(control[Field.CLIENT_INDEX.value]))
    state = _load_state(context, control, state_dir)
    rnd, split = int(control[Field.ROUND.value]), str(control[Field.SPLIT.value])
    records = runtime.evaluate(rnd, payload, state, split)
    if split == Split.VAL:  # validation keeps the client's best personalised model in its state
        _save_state(context, state, site, rnd, state_dir)
    return Message(eval_content(records), reply_to=message)


def _action(action: Action) -> str:
    """The action part of ``<category>.<action>`` (what ``ClientApp.query(...)`` registers)."""
    return action.value.split(".", 1)[1]


def make_client_app(defaults: Mapping[str, Any] | None = None) -> ClientApp:
    """A fedseg ClientApp.

    Args:
        defaults: run-config values used where the Flower run config has none (the simulation
            passes the fedseg configuration this way; a deployment gets it from ``flwr run``).
            :attr:`RunKey.STATE_DIR` is read from here only, never from a submitted run config, so
            a deployed ClientApp never writes its state to a path a run names.
    """
    base = dict(defaults or {})
    state_value = base.get(RunKey.STATE_DIR.value)
    state_dir = Path(str(state_value)) if state_value else None
    client_app = ClientApp()

    @client_app.query(_action(Action.HELLO))
    def hello(message: Message, context: Context) -> Message:
        return _hello(message, context, base)

    @client_app.train()
    def train(message: Message, context: Context) -> Message:
        return _train(message, context, base, state_dir)  # privacy.client clips inside ClientRuntime.fit

    @client_app.train(_action(Action.PERSONALIZE))
    def personalize(message: Message, context: Context) -> Message:
        return _personalize(message, context, base, state_dir)

    @client_app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        return _evaluate(message, context, base, state_dir)

    return register_plan_queries(client_app, base)  # the planning round (docs/planning.md): every site answers it


app = make_client_app()
"""The ClientApp a deployment names in ``[tool.flwr.app.components]``."""
