"""One builder for a federation's server and client runtimes, used by every engine.

:func:`build_federation` is the only place that builds a run's algorithm, model and initial
parameters (the seeded init, then ``model.init_checkpoint`` if set), the clients'
:class:`~fedseg.engine.client.ClientRuntime` objects and the
:class:`~fedseg.engine.server.FederationServer` (which writes ``run_info.json``). The in-process
engine, the Flower ServerApp and the Flower ClientApp each make one call, with what their process
holds:

=================  =====================  ======================  ====================
caller             ``data``               ``sites``               ``run``
=================  =====================  ======================  ====================
in-process         every site             (from ``data``)         the run directory
ServerApp          none                   the discovered sites    the run directory
ClientApp          its own site           (from ``data``)         none (no server)
=================  =====================  ======================  ====================

so a client built inside a Flower ClientApp is the same object, with the same initial weights and
the same per-round seeds (its index in the federation), as the one the in-process engine builds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fedseg.algorithms import Algorithm, build_algorithm
from fedseg.algorithms.robust import Combiner
from fedseg.config import ConfigError, RunConfig
from fedseg.data.base import DataError, SegmentationSet, SiteData
from fedseg.data.cases import ListCases
from fedseg.engine.attack import attack_info, attack_splits, require_known_sites
from fedseg.engine.client import ClientRuntime
from fedseg.engine.privacy import privacy_info
from fedseg.engine.progress import ProgressSink
from fedseg.engine.rundir import RunDir
from fedseg.engine.server import FederationServer, sample_clients
from fedseg.io.packages import package_versions
from fedseg.losses import DeepSupervisionLoss, build_loss
from fedseg.records import InfoKey
from fedseg.runtime.common import DataSpec, RunError
from fedseg.runtime.model_init import init_model
from fedseg.types import Params

__all__ = [
    "POOLED_CLIENT",
    "INPROCESS",
    "Federation",
    "build_federation",
    "check_engine",
    "concat_sets",
    "client_splits",
    "write_run_info",
    "build_combiner",
]

POOLED_CLIENT = "pooled"
"""The centralised reference's one training client (every site's train + val, pooled)."""

INPROCESS = "inprocess"
"""The only engine that may pool data (``RunConfig.engine``)."""


def concat_sets(sets: list[SegmentationSet]) -> SegmentationSet:
    """One split made of several sites' splits (the centralised reference pools them)."""
    if not all(s.in_memory for s in sets):  # streamed from disk: pooled case by case, nothing read
        for s in (s for s in sets if not s.has_masks):
            s.pixel_masks()  # raises MissingMaskError: weakly-supervised splits refuse pooling
        return SegmentationSet(cases=ListCases.concat([s.cases for s in sets]),
                               spacing=torch.cat([s.spacing for s in sets]), ids=[i for s in sets for i in s.ids])
    shapes = {tuple(s.images.shape[1:]) for s in sets if len(s)}
    if len(shapes) > 1:
        raise DataError(
            f"centralized training pools all sites, which needs one image shape; got {sorted(shapes)}. "
            "Set data.image_size so every site is resized to the same shape."
        )
    return SegmentationSet(
        images=torch.cat([s.images for s in sets]),
        masks=torch.cat([s.pixel_masks() for s in sets]),  # weakly-supervised splits refuse pooling
        spacing=torch.cat([s.spacing for s in sets]),
        ids=[i for s in sets for i in s.ids],
    )


def client_splits(sites: Sequence[SiteData], algorithm: Algorithm) -> dict[str, dict[str, SegmentationSet]]:
    """Each client's splits. The centralised reference adds a training-only "pooled" client
    (pooled train + val) and keeps the sites for evaluation. Clients are indexed in this order.

    Raises:
        DataError: a site has an empty training split (it could not train).
    """
    empty = [s.name for s in sites if len(s.train) == 0]
    if empty and not algorithm.pooled_data:
        raise DataError(f"site(s) with an empty training split: {', '.join(empty)}")
    splits: dict[str, dict[str, SegmentationSet]] = {}
    if algorithm.pooled_data:
        splits[POOLED_CLIENT] = {
            "train": concat_sets([s.train for s in sites]),
            "val": concat_sets([s.val for s in sites]),
        }
    for s in sites:
        splits[s.name] = {"train": s.train, "val": s.val, "test": s.test}
    return splits


def check_engine(algorithm: Algorithm, engine: str) -> None:
    """Refuse what ``engine`` cannot run.

    Raises:
        RunError: the centralised reference on a Flower engine (pooled data has no place in a
            federation).
    """
    if algorithm.pooled_data and engine != INPROCESS:
        raise RunError(
            f"algorithm {algorithm.name!r} pools every site's training data in one place; it is the upper "
            "reference of the in-process engine only. Run it with --engine inprocess"
        )


def write_run_info(
    run: RunDir,
    cfg: RunConfig,
    algorithm: Algorithm,
    *,
    engine: str,
    sites: list[str],
    clients: list[str],
    spec: DataSpec,
    device: torch.device | str,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write ``run_info.json``: what the report and ``fedseg eval`` need to know about the run."""
    run.write_json(
        run.info,
        {
            "name": cfg.name,
            "engine": engine,
            "algorithm": algorithm.name,
            "algorithm_params": cfg.algorithm,
            "has_global_model": algorithm.has_global_model,
            "pooled_data": algorithm.pooled_data,
            "sites": sites,
            "clients": clients,
            "spatial_dims": spec.spatial_dims,
            "num_classes": spec.num_classes,
            "in_channels": spec.in_channels,
            "seed": cfg.seed,
            "device": str(device),
            InfoKey.OPTIMIZER_STATE: algorithm.resolved_optimizer_state(cfg.train.optimizer_state),
            InfoKey.JUDGED_BY: algorithm.judged_by,
            InfoKey.UNSEEN_POLICY: algorithm.unseen_policy,
            InfoKey.VERSIONS: package_versions(),  # this process's fedseg, torch, MONAI, flwr, Python
            **(extra or {}),
        },
    )


def build_combiner(cfg: RunConfig, algorithm: Algorithm, fit_clients: Sequence[str] | None = None) -> Combiner:
    """The algorithm's combine step from the ``aggregation`` section (:mod:`fedseg.algorithms.robust`).

    Args:
        fit_clients: every training client of the federation (the server's view); given, a robust
            rule is checked against the clients sampled per round. None (a ClientApp): unchecked.

    Raises:
        ConfigError: a robust rule or clipping for an algorithm with nothing to combine (the
            centralised reference, local-only training), or too few clients per round for the rule.
    """
    agg = cfg.aggregation
    combiner = Combiner(rule=agg.rule, clip_norm=agg.clip_norm, trim_fraction=agg.trim_fraction,
                        num_malicious=agg.num_malicious, num_selected=agg.num_selected)
    if combiner.is_plain_mean or fit_clients is None:
        return combiner
    if algorithm.pooled_data or not algorithm.has_global_model:
        raise ConfigError(
            f"aggregation.rule {agg.rule} / aggregation.clip_norm {agg.clip_norm}: algorithm {algorithm.name!r} "
            f"{'trains one pooled client' if algorithm.pooled_data else 'shares no parameters'}, so there is "
            "nothing to combine; remove the aggregation section for it"
        )
    fed = cfg.federation
    training = [c for c in fit_clients if fed.train_sites is None or c in fed.train_sites]
    try:
        combiner.check(len(sample_clients(training, fed.fraction, fed.min_clients, cfg.seed, 1)))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return combiner


@dataclass
class Federation:
    """What one process builds for a run, once: see :func:`build_federation`.

    Attributes:
        model: shared by every client runtime of this process (each resets it to ``init_params``
            before use).
        init_params: CPU copies of the initial weights: the server's first global model, every
            client's reset point and both codecs' reference.
        splits: the clients whose data this process holds, in federation order.
        sites: every site of the federation (the evaluation clients), in order.
        fit_clients: the clients that train (the pooled client for the centralised reference).
        init_digest: SHA-256 of ``model.init_checkpoint`` (None when unset).
    """

    cfg: RunConfig
    spec: DataSpec
    device: torch.device
    engine: str
    algorithm: Algorithm
    model: nn.Module
    init_params: Params
    init_digest: str | None
    loss_fn: nn.Module
    splits: dict[str, dict[str, SegmentationSet]]
    sites: list[str]
    fit_clients: list[str]
    built_server: FederationServer | None = field(default=None, init=False)
    _runtimes: dict[tuple[str, int], ClientRuntime] = field(default_factory=dict, init=False, repr=False)

    @property
    def server(self) -> FederationServer:
        """The server (built when :func:`build_federation` got a run directory).

        Raises:
            RunError: this process built no server (a ClientApp).
        """
        if self.built_server is None:
            raise RunError("this federation was built without a run directory, so it has no server")
        return self.built_server

    def client(self, name: str, index: int | None = None) -> ClientRuntime:
        """The runtime of client ``name`` (built on first use, then cached).

        Args:
            index: the client's index in the federation, which seeds its rounds; default: its
                position in :attr:`splits`. A ClientApp holding one site passes the index the
                server assigned, so its seeds match the in-process engine's.

        Raises:
            KeyError: this process holds no data for ``name``.
        """
        if name not in self.splits:
            raise KeyError(f"no data for client {name!r} in this process; clients here: {', '.join(self.splits)}")
        position = list(self.splits).index(name) if index is None else index
        key = (name, position)
        if key not in self._runtimes:
            self._runtimes[key] = ClientRuntime(
                client_id=name,
                client_index=position,
                algorithm=self.algorithm,
                model=self.model,
                init_params=self.init_params,
                loss_fn=self.loss_fn,
                cfg=self.cfg,
                splits=self.splits[name],
                num_classes=self.spec.num_classes,
                device=self.device,
            )
        return self._runtimes[key]

    @property
    def clients(self) -> dict[str, ClientRuntime]:
        """Every client of :attr:`splits` at its position index (the in-process engine's clients)."""
        return {name: self.client(name) for name in self.splits}


def _init_record(cfg: RunConfig, digest: str | None) -> dict[str, Any]:
    if digest is None:
        return {}
    return {InfoKey.INIT_CHECKPOINT: {"path": str(cfg.model.init_checkpoint), "sha256": digest}}


def _check_same_init(run: RunDir, record: Mapping[str, Any]) -> None:
    """On resume, refuse initial weights other than those the run started from: every client resets
    to them each round, so another file would silently change the resumed rounds."""
    if not run.info.is_file():
        return
    before = json.loads(run.info.read_text()).get(InfoKey.INIT_CHECKPOINT)
    now = record.get(InfoKey.INIT_CHECKPOINT)
    sha = (before or {}).get("sha256"), (now or {}).get("sha256")
    if sha[0] != sha[1]:
        raise RunError(
            f"--resume: the initial weights differ from the run's start (model.init_checkpoint sha256 {sha[0]} in "
            f"{run.info}, now {sha[1]}); restore that file or start a new run with another --out"
        )


def build_federation(
    cfg: RunConfig,
    spec: DataSpec,
    device: torch.device,
    *,
    engine: str,
    data: Sequence[SiteData] = (),
    sites: Sequence[str] | None = None,
    run: RunDir | None = None,
    resume: bool = False,
    progress: ProgressSink | None = None,
    device_label: str | None = None,
    info: Mapping[str, Any] | None = None,
    algorithm: Algorithm | None = None,
) -> Federation:
    """Build a run's algorithm, model, initial parameters, client runtimes and (with ``run``) its server.

    Args:
        cfg: the validated run configuration.
        spec: the data's dimensionality, channels and classes (fixes the model).
        device: where the model lives.
        engine: ``inprocess``, ``flower-sim`` or ``flower``; only ``inprocess`` takes the centralised
            reference. Recorded in ``run_info.json``.
        data: the sites whose data this process holds (already checked): every site in-process,
            its own site in a ClientApp, none in a ServerApp.
        sites: every site of the federation in order (default: the names in ``data``).
        run: the run directory (already prepared); given, the server is built and
            ``run_info.json`` written. None in a ClientApp.
        resume: the run continues from its checkpoint: the initial weights must be the same file.
        progress: receives the server's round events.
        device_label: what ``run_info.json`` records as the device (default: ``device``).
        info: extra ``run_info.json`` entries (the ServerApp's per-site reports).
        algorithm: an already-built algorithm (the ServerApp checks it before it discovers its
            sites; tests inject toy algorithms); default: built from ``cfg.algorithm``.

    Raises:
        RunError: the engine cannot run the algorithm, the init checkpoint is refused, or (on
            resume) it is not the file the run started from.
        fedseg.data.base.DataError: a held site has an empty training split.
        ConfigError: ``attack.sites`` names an unknown site, or the ``aggregation`` rule does not fit
            the algorithm or the clients per round (:func:`build_combiner`).
    """
    algorithm = algorithm if algorithm is not None else build_algorithm(cfg.algorithm)
    check_engine(algorithm, engine)
    site_names = list(sites) if sites is not None else [s.name for s in data]
    fit_clients = [POOLED_CLIENT] if algorithm.pooled_data else list(site_names)
    if run is not None:  # the server's view: every site is known (a ClientApp knows its own only)
        require_known_sites(cfg.attack, site_names)
    if cfg.attack.kind != "none" and algorithm.pooled_data:
        raise ConfigError(f"attack: algorithm {algorithm.name!r} trains one pooled client, not the attacking sites; "
                          "simulate attacks with a federated algorithm")
    algorithm.combine = build_combiner(cfg, algorithm, fit_clients if run is not None else None)
    splits = attack_splits(client_splits(data, algorithm), cfg.attack, spec.num_classes)
    model, init_params, digest = init_model(cfg, spec, device)
    # deep supervision (dynunet) rides on the logits; for any other model this is the plain loss
    loss_fn = DeepSupervisionLoss(build_loss(cfg.loss, spec.num_classes))
    federation = Federation(
        cfg=cfg, spec=spec, device=device, engine=engine, algorithm=algorithm, model=model, init_params=init_params,
        init_digest=digest, loss_fn=loss_fn, splits=splits, sites=site_names,
        fit_clients=fit_clients,
    )
    for name in splits:  # built now, so a client that cannot train (e.g. weak labels) is refused before the server
        federation.client(name)
    if run is not None:
        record = _init_record(cfg, digest)
        if resume:
            _check_same_init(run, record)
        federation.built_server = FederationServer(cfg, algorithm, init_params, run, fit_clients=fit_clients,
                                                   eval_clients=site_names, progress=progress,
                                                   frozen=algorithm.frozen_keys(model),
                                                   local=algorithm.local_keys(model))
        record[InfoKey.AGGREGATION] = cfg.aggregation.model_dump()
        if cfg.attack.kind != "none":
            record[InfoKey.ATTACK] = attack_info(cfg.attack)
        server = federation.built_server
        privacy = {InfoKey.PRIVACY.value: privacy_info(cfg, len(server.fit_clients), server.client_dp.sampled)
                   } if server.client_dp is not None else {}
        write_run_info(run, cfg, algorithm, engine=engine, sites=site_names, clients=fit_clients, spec=spec,
                       device=device_label or device, extra={**record, **privacy, **(info or {})})
    return federation
