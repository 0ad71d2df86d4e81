"""Names shared by the fedseg ServerApp and ClientApp: record names, message actions, config keys.

Every string that both sides must agree on is a member here, so a typo is a NameError, not a
silently missing record.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["Record", "Field", "Action", "RunKey", "NodeKey", "ENV_DEFAULTS", "state_file_name"]


class Record(StrEnum):
    """Names of the records inside a Flower ``RecordDict`` (message content or ``context.state``)."""

    PARAMS = "fedseg.params"
    """ArrayRecord: the message's named parameters (``Broadcast.params`` / ``ClientUpdate.params``)."""
    EXTRAS = "fedseg.extras"
    """ArrayRecord: the algorithm's other tensors; omitted when there are none."""
    CONFIG = "fedseg.config"
    """ConfigRecord, server -> client: control keys and the broadcast's scalars (``bc.<name>``)."""
    UPDATE = "fedseg.update"
    """ConfigRecord, client -> server: client id, n_k and the update's metrics (``m.<name>``)."""
    RECORD = "fedseg.record"
    """ConfigRecord, client -> server: one metrics.jsonl record (train / personalize)."""
    EVAL = "fedseg.eval"
    """Prefix of ConfigRecords ``fedseg.eval.<i>``: the client's evaluation records."""
    HELLO = "fedseg.hello"
    """ConfigRecord, client -> server: which site this node serves and what its data looks like."""
    STATE_TENSORS = "fedseg.state.tensors"
    """ArrayRecord in ``context.state``: the tensors of the client's persistent state."""
    STATE_LAYOUT = "fedseg.state.layout"
    """ConfigRecord in ``context.state``: the nesting of the client state (JSON)."""
    STATE_FILE = "fedseg.state.file"
    """ConfigRecord in ``context.state`` (simulation): the state file ``context.state`` holds."""


class Field(StrEnum):
    """Keys inside fedseg's ConfigRecords."""

    CLIENT_ID = "client-id"
    CLIENT_INDEX = "client-index"
    ROUND = "round"
    SPLIT = "split"
    NUM_EXAMPLES = "num-examples"
    KIND = "kind"
    BROADCAST_PREFIX = "bc."
    METRIC_PREFIX = "m."
    LAYOUT = "layout"
    SITE = "site"
    SITE_ORDER = "site-order"
    SPATIAL_DIMS = "spatial-dims"
    IN_CHANNELS = "in-channels"
    NUM_CLASSES = "num-classes"
    N_TRAIN = "n-train"
    N_VAL = "n-val"
    N_TEST = "n-test"
    SPLIT_SHA256 = "split-sha256"
    """hello: SHA-256 of the train, val and test case ids (``runtime.common.split_digest``)."""
    PID = "pid"
    VERSION_PREFIX = "version."
    """hello: ``version.<name>`` for fedseg, torch, monai, flwr and python (the version handshake)."""
    STATE_FILE = "state-file"
    """Simulation: the client's state file the server's checkpoint refers to ("" = none yet)."""


class Action(StrEnum):
    """Flower message types the fedseg ClientApp serves (``<category>.<action>``)."""

    HELLO = "query.hello"
    TRAIN = "train"
    PERSONALIZE = "train.personalize"
    EVALUATE = "evaluate"


class RunKey(StrEnum):
    """Keys of the Flower run config (``[tool.flwr.app.config]`` / ``flwr run --run-config``)."""

    CONFIG = "fedseg-config"
    """The fedseg run configuration as YAML text (the same for the server and every site)."""
    RUN_DIR = "run-dir"
    """Where the ServerApp writes the run directory (a path on the SuperLink machine)."""
    COMMAND = "command"
    """The command line recorded in ``command.txt``."""
    SIGNATURE = "fedseg-signature"
    """The operator's Ed25519 signature of :attr:`CONFIG` (base64; ``fedseg flower app --sign-key``),
    which a site's ``fedseg flower clientapp --trusted-app-key`` checks before running anything."""
    STATE_DIR = "client-state-dir"
    """Simulation only (read from the apps' built-in defaults, never from ``flwr run``): the run's
    ``client_states/`` folder, where each ClientApp writes its state after every round so that the
    server's checkpoint can refer to it (``--resume``, ``fedseg eval --client``)."""
    PLAN_ONLY = "fedseg-plan-only"
    """true: the ServerApp runs only the planning round and writes ``plans.yaml`` into ``run-dir``
    (``fedseg flower app --plan-only``; docs/planning.md)."""


class NodeKey(StrEnum):
    """Keys of a SuperNode's node config (``flower-supernode --node-config``)."""

    SITE = "site"
    """The site this SuperNode serves (a name of ``flower.sites`` / ``data.sites``)."""
    DATA_ROOT = "data-root"
    """Folder data: the directory holding ``<site>/{images,masks}`` on this machine."""
    PARTITION_ID = "partition-id"
    """Simulation: the index of the site in ``build_federated_data(cfg.data, seed)``."""


def state_file_name(client: str, rnd: int) -> str:
    """The file a simulated ClientApp writes its state to after round ``rnd`` (train, or the
    post-federation phase at ``rounds + 1``); the in-process ``ClientStateStore``'s naming."""
    return f"{client}.r{rnd}.pt"


ENV_DEFAULTS: dict[str, str] = {
    # `flwr run` would otherwise build a per-run environment with uv and pull a CUDA torch (GBs).
    "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    "FLWR_TELEMETRY_ENABLED": "0",
    "FLWR_DISABLE_UPDATE_CHECK": "1",
    # Ray: keep CUDA_VISIBLE_DEVICES as is and do not warn about it on every start
    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
}
"""Environment every Flower process fedseg starts runs with (never overrides what the user set)."""
