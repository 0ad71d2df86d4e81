"""A finished run opened for use: which model scores which site, rebuilt exactly as in the run.

``fedseg eval`` and ``fedseg predict`` use the model a client evaluated during the run: the
selected checkpoint (``checkpoints/best.pt`` with ``eval.select: best_val``, else ``last.pt``;
``--checkpoint best|last`` overrides), sent through the same broadcast (the algorithm's
``broadcast`` and the ``codec.down`` round trip against the seeded initial model), loaded and
prepared by the algorithm's ``prepare_eval_model`` with the server's extras. Each site gets the
model its method is judged by (:attr:`~fedseg.algorithms.base.Algorithm.judged_by`): its
personalised model or the global one; a site that never trained, or new data, gets the method's
unseen model (:meth:`~fedseg.algorithms.base.Algorithm.unseen_params`, stored in the checkpoint).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedseg.algorithms import Algorithm, build_algorithm
from fedseg.algorithms.base import StateKey
from fedseg.codecs import build_wire_codecs
from fedseg.config import RunConfig, load_config
from fedseg.engine.evaluate import load_eval_model
from fedseg.engine.messages import decode_broadcast, encode_broadcast
from fedseg.engine.rundir import RunDir
from fedseg.engine.state_store import ClientStateStore
from fedseg.engine.trainer import resolve_device
from fedseg.io.safe import CheckpointError, load_checkpoint
from fedseg.records import Field, ModelKind, Selection
from fedseg.runtime.model_init import init_model
from fedseg.runtime.common import DataSpec
from fedseg.types import ClientState, Params, Scalar

__all__ = ["EvalError", "TrainedRun", "open_run", "CHECKPOINTS"]

CHECKPOINTS = ("best", "last")
"""Values of ``--checkpoint``: the best-validation checkpoint or the last round's."""


class EvalError(RuntimeError):
    """The run directory or the requested model cannot be used."""


@dataclass(frozen=True)
class ScoredModel:
    """Which model was loaded: its kind (global|personal|unseen) and the round it comes from."""

    kind: str
    selected_round: int


def _no_client_states(run_dir: Path, client: str, info: dict[str, Any]) -> str:
    """Why a personalised model cannot be loaded from a run whose checkpoint holds no client states."""
    if info.get("engine") == "flower":
        where = ("the personal models of a deployed Flower run live on the SuperNodes (each site's "
                 "context.state, in memory for the run's lifetime), never on the server")
    else:
        where = f"the checkpoint of this {info.get('engine', '?')} run holds no client states"
    records = (f"the site's `model: personal` records in {run_dir / 'metrics.jsonl'} (its personalised model "
               "evaluated on its own data during the run)")
    if info.get("has_global_model", True):
        return (f"{client!r}'s personalised model: {where}. Evaluate the global model (omit --client on a method "
                f"judged by its global model), or read {records}")
    return f"{client!r}'s personalised model: {where}. Read {records}"


@dataclass
class TrainedRun:
    """A finished run with its selected checkpoint (see the module docstring)."""

    root: Path
    cfg: RunConfig
    info: dict[str, Any]
    algorithm: Algorithm
    model: nn.Module
    init_params: Params
    selection: str
    checkpoint: dict[str, Any]
    states: dict[str, ClientState] | None

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def trained_sites(self) -> list[str]:
        """Sites whose own data trained the model (every site for the pooled reference)."""
        sites = [str(s) for s in self.info.get("sites", self.info["clients"])]
        if self.info.get("pooled_data"):
            return sites
        train_sites = self.cfg.federation.train_sites
        return [c for c in self.info["clients"] if train_sites is None or c in train_sites]

    def _decoded(self, params: Params, model_kind: str | None = None) -> tuple[Params, dict[str, torch.Tensor]]:
        """Whole-model parameters and extras of the broadcast a client received for ``params``."""
        codecs = build_wire_codecs(self.cfg.codec)
        chosen = int(self.checkpoint["round"])
        config: dict[str, Scalar] = {Field.PHASE.value: "eval", Field.SELECTION.value: self.selection,
                                     Field.SELECTED_ROUND.value: chosen}
        if model_kind is not None:
            config[Field.MODEL.value] = model_kind
        payload, _ = encode_broadcast(self.algorithm, codecs.down, self.init_params, chosen + 1, params,
                                   self.checkpoint["server_state"], config)
        broadcast = decode_broadcast(payload, codecs.down, self.init_params, "fedseg eval")
        return {**self.init_params, **broadcast.params}, dict(broadcast.extras)

    def _state(self, site: str | None) -> ClientState:
        return (self.states or {}).get(site, {}) if site is not None else {}

    def load(self, site: str | None = None, *, client: str | None = None) -> ScoredModel:
        """Load into :attr:`model` the model that scores ``site`` (None: new data): ``client``'s
        personalised model when given, else the site's judged-by model if it trained, else the
        unseen model.

        Raises:
            EvalError: ``client`` is unknown, or the model needs client states or an unseen model
                the run does not hold (the message says why).
        """
        if client is not None and client not in self.info["clients"]:
            raise EvalError(f"--client {client!r}: not a client of this run; clients: {', '.join(self.info['clients'])}")
        if client is not None and client not in self.trained_sites() and not self.info.get("pooled_data"):
            raise EvalError(f"--client {client!r} never trained (federation.train_sites), so it has no personalised "
                            f"model; omit --client to score it with the unseen-site model")
        owner = client if client is not None else site
        if client is None and (site is None or site not in self.trained_sites()):
            kind = ModelKind.UNSEEN.value
        else:
            kind = ModelKind.PERSONAL.value if client is not None else str(self.algorithm.judged_by)
        chosen = int(self.checkpoint["round"])
        if kind == ModelKind.UNSEEN:
            unseen = self.checkpoint.get("unseen_params")
            if unseen is None:
                why = ("the server held no client states (a deployment)" if self.states is None
                       else "the method has none or the run did not finish")
                raise EvalError(f"{self.info['algorithm']} has no model for a site that never trained "
                                f"({self.algorithm.unseen_policy}): {why}; pass --client with one of "
                                f"{', '.join(self.info['clients'])}")
            params, extras = self._decoded(unseen, kind)
            load_eval_model(self.algorithm, self.model, params, extras, self._state(site))
            return ScoredModel(kind, chosen)
        global_params, extras = self._decoded(self.checkpoint["global_params"])
        if kind == ModelKind.GLOBAL:
            load_eval_model(self.algorithm, self.model, global_params, extras, self._state(site))
            return ScoredModel(kind, chosen)
        if self.states is None:
            raise EvalError(_no_client_states(self.root, str(owner), self.info))
        state = self.states.get(str(owner), {})
        personal = self.algorithm.personal_model(global_params, state, self.selection)
        best = state.get(StateKey.BEST_VAL) if self.selection == Selection.BEST_VAL else None
        rounds = self.cfg.federation.rounds
        personal_round = int(best[Field.ROUND]) if best is not None else (rounds if personal is not None else chosen)
        load_eval_model(self.algorithm, self.model, global_params if personal is None else personal, extras, state)
        return ScoredModel(kind, personal_round)


def _selected_checkpoint(run: RunDir, cfg: RunConfig, last: dict[str, Any], checkpoint: str | None
                         ) -> tuple[str, dict[str, Any]]:
    if checkpoint is not None and checkpoint not in CHECKPOINTS:
        raise EvalError(f"--checkpoint {checkpoint!r}; allowed: {', '.join(CHECKPOINTS)}")
    mode = cfg.eval.select
    if checkpoint == "best" and mode != Selection.BEST_VAL.value:
        raise EvalError(f"--checkpoint best: {run.root} ran with eval.select: {mode}, so it kept no best-validation "
                        "checkpoint; use --checkpoint last")
    if (checkpoint or ("best" if mode == Selection.BEST_VAL.value else "last")) == "last":
        return Selection.LAST.value, last
    if run.best_checkpoint.is_file():
        return Selection.BEST_VAL.value, load_checkpoint(run.best_checkpoint, what="--checkpoint best")
    return Selection.BEST_VAL.value, last  # no global model, or never validated: the last round, as in the run


def open_run(run_dir: Path, checkpoint: str | None = None) -> TrainedRun:
    """Open a finished run with its selected checkpoint (``checkpoint``: best|last; default the
    run's ``eval.select``) and the seeded initial model built on the configured device.

    Raises:
        EvalError: not a finished run, or a checkpoint it does not hold.
    """
    run = RunDir(run_dir)
    for path in (run.config, run.info, run.checkpoint):
        if not path.is_file():
            raise EvalError(f"{run_dir} is not a finished fedseg run: missing {path.name} ({path})")
    cfg = load_config(run.config)
    info = json.loads(run.info.read_text())
    try:  # every file through torch.load(weights_only=True): a tampered run directory runs no code
        last = load_checkpoint(run.checkpoint, what="the run's checkpoint")
        selection, ckpt = _selected_checkpoint(run, cfg, last, checkpoint)
        states = None
        if last.get("client_states") is not None:
            store = ClientStateStore(run.client_states, 0)
            store.restore(last["client_states"])
            names = {*last["client_states"].get("memory", {}), *last["client_states"].get("disk", {})}
            states = {str(c): store.load(str(c)) for c in sorted(names)}
    except CheckpointError as exc:
        raise EvalError(str(exc)) from exc
    spec = DataSpec(int(info["spatial_dims"]), int(info["in_channels"]), int(info["num_classes"]))
    model, init_params, _ = init_model(cfg, spec, resolve_device(cfg.train.device))
    model.eval()
    return TrainedRun(run_dir, cfg, info, build_algorithm(cfg.algorithm), model, init_params, selection, ckpt, states)
