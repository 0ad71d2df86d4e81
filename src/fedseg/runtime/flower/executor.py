"""The Flower transport of :class:`~fedseg.engine.server.FederationServer`: a
:class:`~fedseg.engine.server.ClientExecutor` that sends each round's messages to the SuperNodes
through the ServerApp's ``Grid`` and returns their replies as fedseg wire bytes.

Byte counting: the engine counts ``len(wire.encode(message))`` for every broadcast and update on
both engines (the ClientRuntime measures the update, the FederationServer the broadcast), and
``len(wire.encode_records(records))`` for evaluation and personalize replies; the Flower records
built here from those messages are lossless conversions of the same tensors and scalars
(``update_from_content`` re-encodes to the client's exact bytes, ``wire.encode_records`` the
reply records to the exact bytes an in-process client sends).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid

from fedseg.config import FlowerConfig
from fedseg.engine import wire
from fedseg.engine.client import PrivacyError
from fedseg.engine.rundir import atomic_write_text
from fedseg.records import Split
from fedseg.runtime.common import DataSpec, RunError
from fedseg.runtime.flower.keys import Action, Field, Record, state_file_name
from fedseg.runtime.flower.records import (
    broadcast_content,
    config_to_dict,
    convert_params,
    eval_from_content,
    update_from_content,
)
from fedseg.types import Broadcast, ClientFailure

__all__ = ["FlowerExecutor", "FlowerRunError", "SiteInfo", "discover_sites", "RECEIVED_KEYS_FILE"]

logger = logging.getLogger(__name__)

RECEIVED_KEYS_FILE = "received_keys.json"
"""Run-directory file listing, per site, every tensor name the server received (a privacy audit)."""


class FlowerRunError(RunError):
    """A Flower run cannot go on: a site did not answer, or answered with an error."""


@dataclass(frozen=True)
class SiteInfo:
    """What a SuperNode told the server in its hello reply."""

    site: str
    node_id: int
    order: int
    spec: DataSpec
    sizes: tuple[int, int, int]
    pid: int
    split_sha256: tuple[str, ...] = ()
    """SHA-256 of the train, val and test case ids (``runtime.common.split_digest``)."""
    versions: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Package versions the site reported (``fedseg.io.packages.package_versions``); {}: none."""


_CLIENTAPP_REASON = re.compile(r"^<class '(?:[\w.]+\.)?(?P<type>\w+)'>:<'(?P<message>.*)'>$", re.S)


def _reason(text: str | None) -> str:
    """An error reply's reason, without the ``<class '...'>:<'...'>`` wrapping Flower's ClientApp
    runners put around the exception."""
    text = text or "(no reason given)"
    m = _CLIENTAPP_REASON.match(text.strip())
    return f"{m['type']}: {m['message']}" if m else text


_EXPIRED = (ErrorCode.MESSAGE_UNAVAILABLE, ErrorCode.REPLY_MESSAGE_UNAVAILABLE)
"""Error replies the SuperLink makes for a message or reply whose TTL ran out: no reply in time."""


def _exchange(grid: Grid, messages: list[tuple[str, Message]], *, timeout: float, poll: float,
              what: str, setting: str = "flower.reply_timeout", errors: dict[str, str] | None = None
              ) -> dict[str, Message]:
    """Push messages (``(site, message)``) and pull every reply.

    Args:
        timeout: seconds to wait for every reply; ``setting`` names the config key it comes from.
        errors: None: raise on the first error reply or at the timeout; else collect there, by
            site, each error reply's reason and, for each missing reply, a message naming
            ``setting``, and go on.

    Raises:
        FlowerRunError: an error reply or a missing reply, when ``errors`` is None.
    """
    if not messages:
        return {}
    ids = list(grid.push_messages([m for _, m in messages]))
    pending = {mid: site for mid, (site, _) in zip(ids, messages, strict=True)}
    replies: dict[str, Message] = {}
    deadline = time.monotonic() + timeout
    expired: list[str] = []
    while pending:
        for reply in grid.pull_messages(list(pending)):
            site = pending.pop(reply.metadata.reply_to_message_id, None)
            if site is None:
                continue
            if reply.has_error() and reply.error.code in _EXPIRED:  # the message's TTL (= the deadline) ran out
                expired.append(site)
                continue
            if reply.has_error():
                if errors is None:
                    raise FlowerRunError(f"{site} answered the {what} message with an error: "
                                         f"{_reason(reply.error.reason)}")
                errors[site] = _reason(reply.error.reason)
                continue
            replies[site] = reply
        if not pending and not expired:
            break
        if not pending or time.monotonic() > deadline:
            late = sorted([*pending.values(), *expired])
            reason = (f"no reply to the {what} message from {{site}} within {timeout:g} s ({setting}); check that "
                      "its SuperNode and ClientApp process are running")
            if errors is None:
                raise FlowerRunError(reason.format(site=", ".join(late)))
            errors.update({site: reason.format(site=site) for site in late})
            break
        time.sleep(poll)
    return replies


def discover_sites(grid: Grid, settings: FlowerConfig, *, expected: list[str] | None, expected_nodes: int | None
                   ) -> dict[str, SiteInfo]:
    """Wait for the SuperNodes, ask each which site it serves, return them by site name.

    Args:
        expected: the site names that must answer (deployment); None: every connected node.
        expected_nodes: how many nodes to wait for when ``expected`` is None (simulation).

    Raises:
        FlowerRunError: not every expected site connected within ``flower.connect_timeout``, two
            nodes serve one site, a node serves a site that is not expected, or nodes could not set
            up their site (e.g. the pre-training data check failed): every such node's error,
            which names its site and the files, is listed.
    """
    deadline = time.monotonic() + settings.connect_timeout
    asked: set[int] = set()
    found: dict[str, SiteInfo] = {}
    want = len(expected) if expected is not None else (expected_nodes or 1)
    while True:
        nodes = [n for n in grid.get_node_ids() if n not in asked]
        if nodes:
            messages = [
                (str(n), Message(RecordDict(), dst_node_id=n, message_type=Action.HELLO.value, group_id="hello"))
                for n in nodes
            ]
            errors: dict[str, str] = {}
            replies = _exchange(grid, messages, timeout=max(1.0, deadline - time.monotonic()),
                                poll=settings.poll_interval, what="hello", setting="flower.connect_timeout",
                                errors=errors)
            if errors:
                raise FlowerRunError(
                    f"{len(errors)} SuperNode(s) could not start their site, so no training started:\n"
                    + "\n".join(f"- SuperNode {node}: {reason}" for node, reason in sorted(errors.items()))
                )
            for node, reply in replies.items():
                hello = config_to_dict(reply.content.config_records[Record.HELLO.value])
                info = SiteInfo(
                    site=str(hello[Field.SITE.value]),
                    node_id=int(node),
                    order=int(hello[Field.SITE_ORDER.value]),
                    spec=DataSpec(int(hello[Field.SPATIAL_DIMS.value]), int(hello[Field.IN_CHANNELS.value]),
                                  int(hello[Field.NUM_CLASSES.value])),
                    sizes=(int(hello[Field.N_TRAIN.value]), int(hello[Field.N_VAL.value]),
                           int(hello[Field.N_TEST.value])),
                    pid=int(hello[Field.PID.value]),
                    split_sha256=tuple(str(d) for d in hello.get(Field.SPLIT_SHA256.value, [])),
                    versions={k.removeprefix(Field.VERSION_PREFIX.value): str(v) for k, v in hello.items()
                              if k.startswith(Field.VERSION_PREFIX.value)},
                )
                if info.site in found:
                    raise FlowerRunError(
                        f"two SuperNodes serve site {info.site!r} (nodes {found[info.site].node_id} and {info.node_id}); "
                        "give each SuperNode its own --node-config site"
                    )
                if expected is not None and info.site not in expected:
                    raise FlowerRunError(
                        f"a SuperNode serves site {info.site!r}, which is not one of the run's sites "
                        f"({', '.join(expected)}); set flower.sites in the run config"
                    )
                found[info.site] = info
                logger.info("site %s on node %d: %d/%d/%d train/val/test", info.site, info.node_id, *info.sizes)
            asked.update(nodes)
        if len(found) >= want:
            return found
        if time.monotonic() > deadline:
            missing = sorted(set(expected) - set(found)) if expected is not None else []
            raise FlowerRunError(
                f"only {len(found)} of {want} sites connected within {settings.connect_timeout:.0f} s "
                f"(flower.connect_timeout){'; missing: ' + ', '.join(missing) if missing else ''}; "
                "start one SuperNode per site (docs/deployment.md)"
            )
        time.sleep(settings.poll_interval)


class FlowerExecutor:
    """Delivers the FederationServer's messages to SuperNodes through a Flower ``Grid``.

    Args:
        grid: the ServerApp's grid.
        sites: site name -> SiteInfo (its node id), from :func:`discover_sites`.
        indices: site name -> client index (seeds the client's rounds, as in-process).
        settings: the ``flower`` section of the run config.
        local_keys: the algorithm's local keys on the server's model: a reply carrying one raises
            :class:`PrivacyError` (the client checks first; this is the server's own check).
        audit_path: where :meth:`committed` writes every tensor name each site sent.
        state_dir: simulation only: the run's ``client_states/``, where each ClientApp writes its
            state after every round (``state_file_name``). The checkpoint's client states are
            then those files (the in-process ``ClientStateStore`` snapshot format, so
            ``--resume`` and ``fedseg eval --client`` work); every message names the file the
            client must hold. None (deployment): client states stay on the SuperNodes.
        round_timeout: ``federation.round_timeout``: seconds to wait for the replies of one
            exchange (a round's training, an evaluation, personalize); None: wait
            ``flower.reply_timeout``. Every message expires (Flower TTL) at that deadline, so a
            SuperNode that comes back later never runs a stale round.

    Failures (the executor contract of :class:`~fedseg.engine.server.ClientExecutor`): ``fit``,
    ``evaluate`` and ``personalize`` return one entry per requested client, the reply or a
    :class:`~fedseg.types.ClientFailure` when that client answered with an error (its ClientApp
    raised, its SuperNode became unavailable) or sent nothing by the deadline (the reason names
    the setting that governs it). They never raise for one client; the FederationServer decides.
    """

    def __init__(
        self,
        grid: Grid,
        sites: Mapping[str, SiteInfo],
        indices: Mapping[str, int],
        settings: FlowerConfig,
        *,
        local_keys: set[str],
        audit_path: Path | None = None,
        state_dir: Path | None = None,
        round_timeout: float | None = None,
    ) -> None:
        self.grid = grid
        self.sites = dict(sites)
        self.indices = dict(indices)
        self.settings = settings
        self.local_keys = set(local_keys)
        self.audit_path = audit_path
        self.state_dir = state_dir
        self.timeout, self.timeout_setting = ((round_timeout, "federation.round_timeout") if round_timeout is not None
                                              else (settings.reply_timeout, "flower.reply_timeout"))
        self.state_files: dict[str, str] = {}
        self.received: dict[str, dict[str, set[str]]] = {}

    # ------------------------------------------------------------------ messages
    def _messages(self, action: Action, rnd: int, clients: Iterable[str], payload: bytes,
                  control: Mapping[str, Any]) -> list[tuple[str, Message]]:
        broadcast = wire.decode(payload)
        if not isinstance(broadcast, Broadcast):
            raise TypeError("the server payload did not decode to a Broadcast")
        pack = self.settings.pack_arrays
        params = convert_params(broadcast.params, pack=pack)
        out = []
        for client in clients:
            if client not in self.sites:
                raise FlowerRunError(f"client {client!r} has no SuperNode; connected sites: {', '.join(self.sites)}")
            per_client: dict[str, Any] = {Field.CLIENT_ID.value: client,
                                          Field.CLIENT_INDEX.value: self.indices[client], Field.ROUND.value: rnd}
            if self.state_dir is not None:
                per_client[Field.STATE_FILE.value] = self.state_files.get(client, "")
            content = broadcast_content(
                broadcast,
                {**per_client, **control},
                pack=pack,
                params=params,
            )
            out.append((client, Message(content, dst_node_id=self.sites[client].node_id, message_type=action.value,
                                        group_id=str(rnd), ttl=self.timeout)))
        return out

    def _send(self, action: Action, rnd: int, clients: list[str], payload: bytes,
              control: Mapping[str, Any] | None = None) -> tuple[dict[str, Message], dict[str, ClientFailure]]:
        """Send one message per client; the replies and, for the others, why there is none."""
        messages = self._messages(action, rnd, clients, payload, control or {})
        errors: dict[str, str] = {}
        what = f"{action.value} (round {rnd})"
        replies = _exchange(self.grid, messages, timeout=self.timeout, poll=self.settings.poll_interval, what=what,
                            setting=self.timeout_setting, errors=errors)
        failures = {}
        for client, reason in errors.items():
            if not reason.startswith("no reply"):
                reason = f"{client} answered the {what} message with an error: {reason}"
            logger.warning("%s", reason)
            failures[client] = ClientFailure(client, reason)
        return replies, failures

    @staticmethod
    def _decoded(client: str, what: str, decode: Any) -> Any:
        """``decode()``, or a ClientFailure when the reply cannot be read (a broken or foreign client)."""
        try:
            return decode()
        except PrivacyError:
            raise
        except Exception as exc:  # noqa: BLE001 - any malformed reply is that client's failure
            reason = f"{client} sent an unreadable {what} reply: {type(exc).__name__}: {exc}"
            logger.warning("%s", reason)
            return ClientFailure(client, reason)

    # ------------------------------------------------------------------ ClientExecutor
    def fit(self, rnd: int, clients: list[str], payload: bytes) -> dict[str, Any]:
        """``{client: (encoded ClientUpdate, train record) | ClientFailure}``, one per client."""
        replies, failures = self._send(Action.TRAIN, rnd, clients, payload)
        out: dict[str, Any] = {}
        for client in clients:
            if client in failures:
                out[client] = failures[client]
                continue
            decoded = self._decoded(client, "train", lambda: update_from_content(replies[client].content))
            if isinstance(decoded, ClientFailure):
                out[client] = decoded
                continue
            update, record = decoded
            leaked = self.local_keys & set(update.params)
            if leaked:
                raise PrivacyError(f"{client} sent parameters its algorithm keeps local: {sorted(leaked)[:5]}")
            seen = self.received.setdefault(client, {"params": set(), "extras": set()})
            seen["params"].update(update.params)
            seen["extras"].update(update.extras)
            out[client] = (wire.encode(update), record)
        self._states_written([c for c in clients if not isinstance(out[c], ClientFailure)], rnd)
        return out

    def evaluate(self, rnd: int, clients: list[str], payload: bytes, split: str) -> dict[str, Any]:
        """``{client: wire.encode_records(records) | ClientFailure}``, one per client."""
        replies, failures = self._send(Action.EVALUATE, rnd, clients, payload, {Field.SPLIT.value: split})
        out: dict[str, Any] = dict(failures)
        for client, reply in replies.items():
            # the records reply as the client's runtime serialized it in-process (a lossless conversion)
            out[client] = self._decoded(client, "evaluate",
                                        lambda r=reply: wire.encode_records(eval_from_content(r.content)))
        if split == Split.VAL:  # the clients saved their selection state (see client_app._evaluate)
            self._states_written([c for c in clients if not isinstance(out.get(c), ClientFailure)], rnd)
        return {c: out[c] for c in clients}

    def personalize(self, rnd: int, clients: list[str], payload: bytes) -> dict[str, Any]:
        """``{client: wire.encode_records([record]) | ClientFailure}``, one per client."""
        replies, failures = self._send(Action.PERSONALIZE, rnd, clients, payload)
        out: dict[str, Any] = dict(failures)
        for client, reply in replies.items():
            out[client] = self._decoded(client, "personalize", lambda r=reply: wire.encode_records(
                [config_to_dict(r.content.config_records[Record.RECORD.value])]))
        self._states_written([c for c in clients if not isinstance(out.get(c), ClientFailure)], rnd)
        return {c: out[c] for c in clients}

    def _states_written(self, clients: list[str], rnd: int) -> None:
        if self.state_dir is not None:  # each client wrote its state of this round (see client_app)
            self.state_files.update({c: state_file_name(c, rnd) for c in clients})

    def state_snapshot(self) -> Any:
        """Simulation: the clients' state files, as a ``ClientStateStore`` snapshot; deployment:
        None, client states stay on the SuperNodes (in ``context.state``), never on the server."""
        if self.state_dir is None:
            return None
        return {"memory": {}, "disk": dict(sorted(self.state_files.items()))}

    def restore(self, snapshot: Any) -> None:
        if snapshot is None:
            return
        if self.state_dir is None or not isinstance(snapshot, dict) or snapshot.get("memory") \
                or not isinstance(snapshot.get("disk"), dict):
            raise FlowerRunError("this Flower run cannot restore the checkpoint's client states: a deployed run "
                                 "keeps them on the SuperNodes")
        missing = [str(self.state_dir / name) for name in snapshot["disk"].values()
                   if not (self.state_dir / name).is_file()]
        if missing:
            raise FlowerRunError(f"the checkpoint's client states are missing: {', '.join(missing)}")
        self.state_files = {str(c): str(name) for c, name in snapshot["disk"].items()}

    def committed(self) -> None:
        """After each checkpoint: write the audit of received tensor names; in simulation delete
        the client state files no checkpoint refers to any more."""
        if self.state_dir is not None and self.state_dir.is_dir():
            keep = set(self.state_files.values())
            for path in self.state_dir.glob("*.pt"):
                if path.name not in keep:
                    path.unlink(missing_ok=True)
        if self.audit_path is not None:
            audit = {site: {k: sorted(v) for k, v in seen.items()} for site, seen in sorted(self.received.items())}
            atomic_write_text(self.audit_path, json.dumps(audit, indent=2, sort_keys=True) + "\n")
