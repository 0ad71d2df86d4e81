"""Names shared by the engine (which writes run records) and the report (which reads them).

Every key of a ``metrics.jsonl`` line, every ``kind`` and ``model`` value, and the top-level keys
of ``summary.json`` and ``run_info.json`` that the report reads are defined here once, as
``StrEnum`` members (MONAI's ``monai/fl/utils/constants.py`` pattern). ``StrEnum`` members are
``str``, so they are written to JSON as plain strings and compare equal to them.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "SERVER",
    "METRIC_KEYS",
    "Kind",
    "ModelKind",
    "Split",
    "Field",
    "Phase",
    "Selection",
    "SelectionKey",
    "SummaryKey",
    "InfoKey",
    "BytesKey",
]

SERVER = "__server__"
"""The ``site`` of records that belong to the server (rounds, aggregation)."""


class Kind(StrEnum):
    """``metrics.jsonl``: what a line records."""

    TRAIN = "train"  # one client's local training in a round
    ROUND = "round"  # the server's view of a round (bytes, time)
    EVAL = "eval"  # one client's metrics of one model on one split
    WEIGHTS = "weights"  # one client's aggregation weight (and its factors) in a round
    PERSONALIZE = "personalize"  # one client's post-federation local phase
    AGGREGATE = "aggregate"  # round metrics returned by ``Algorithm.aggregate``
    COMM = "comm"  # the server's view of a non-training exchange (evaluation, personalize): bytes
    FAILURE = "failure"  # a client that raised, timed out or disconnected (``reason``, ``phase``)
    REJECTED = "rejected"  # an update the server's validation refused before aggregation (``reason``)
    PRIVACY = "privacy"  # privacy spent so far (epsilon at delta), per round


class ModelKind(StrEnum):
    """Which model an evaluation record scores."""

    GLOBAL = "global"  # the aggregated model
    PERSONAL = "personal"  # the client's own model (global + its local state)
    UNSEEN = "unseen"  # the model a method uses on a site that never trained


class Split(StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class Phase(StrEnum):
    """``comm`` records: the non-training exchange whose bytes a line counts; ``failure`` and
    ``rejected`` records: the exchange that failed."""

    EVAL = "eval"  # an evaluation broadcast and the clients' metric replies
    FIT = "fit"  # failure and rejected records: a round's local training and its update
    PERSONALIZE = "personalize"  # the post-federation broadcast and the clients' records


class Selection(StrEnum):
    """``eval.select``: which checkpoint the test split is scored on."""

    BEST_VAL = "best_val"  # the round with the best mean validation Dice (per client when personal)
    LAST = "last"  # the last round


class Field(StrEnum):
    """Keys of ``metrics.jsonl`` lines."""

    ROUND = "round"
    SITE = "site"
    KIND = "kind"
    REASON = "reason"  # why a client failed or its update was rejected
    MODEL = "model"
    SPLIT = "split"
    SELECTION = "selection"  # test records: which checkpoint (a Selection value)
    SELECTED_ROUND = "selected_round"  # test records: the round of the scored checkpoint
    BYTES_UP = "bytes_up"  # serialized length of the message(s) client -> server
    BYTES_DOWN = "bytes_down"  # serialized length of the message(s) server -> client
    BYTES_UP_RAW = "bytes_up_raw"  # the same messages serialized without any codec (float32)
    BYTES_DOWN_RAW = "bytes_down_raw"
    PHASE = "phase"  # comm records: which exchange (a Phase value)
    SECONDS = "seconds"
    OVERHEAD_SECONDS = "overhead_seconds"
    CLIENTS = "clients"
    FAILURES = "failures"  # round records: clients whose reply never arrived usable (every attempt counted)
    REJECTIONS = "rejections"  # round records: updates the server's screening refused
    ATTEMPT = "attempt"  # failure records: 0 for a round's first request, then 1, 2... for its retries
    LOSS = "loss"
    WEIGHT = "weight"
    FEDAVG_WEIGHT = "fedavg_weight"  # weights records: the FedAvg weight n_k/N beside the chosen one
    DICE = "dice"
    IOU = "iou"
    HD95 = "hd95"
    PRECISION = "precision"
    RECALL = "recall"
    N = "n"
    SAMPLE_EPSILON = "sample_epsilon"  # train/personalize records under DP-SGD: the client's epsilon so far
    SAMPLE_DELTA = "sample_delta"  # ... at this delta (privacy.sample.delta, default 1/n_k^1.1)
    # client-level DP (``kind: privacy`` lines; ``update_norm`` on train lines)
    EPSILON = "epsilon"  # privacy spent so far, at ``delta``
    DELTA = "delta"
    NOISE_MULTIPLIER = "noise_multiplier"  # z: noise std in units of the clipping norm (on the sum)
    CLIPPING_NORM = "clipping_norm"  # C: L2 bound of each client's update
    SAMPLE_RATE = "sample_rate"  # q = m / K, clients sampled per round over training clients
    ROUNDS = "rounds"  # rounds composed by the accountant
    NOISE_STD = "noise_std"  # std of the noise on each entry of this round's aggregate (z C / m)
    UPDATE_NORM = "update_norm"  # ||w_k - w|| before the client clipped it


METRIC_KEYS: tuple[str, ...] = (Field.DICE, Field.IOU, Field.HD95, Field.PRECISION, Field.RECALL, Field.N)
"""The per-site evaluation metrics, in report order (``n`` = images/volumes scored)."""


class SelectionKey(StrEnum):
    """Keys of ``summary.json["selection"]``."""

    MODE = "mode"  # a Selection value
    ROUND = "round"  # the global model's selected round (None without a global model)
    PER_CLIENT = "per_client"  # {site: round} of the personalised models (personal methods only)


class SummaryKey(StrEnum):
    """Top-level keys of ``summary.json``."""

    ALGORITHM = "algorithm"
    ROUNDS = "rounds"
    JUDGED_BY = "judged_by"  # the ModelKind a method is judged by on participating sites
    SELECTION = "selection"  # {"mode": Selection, "round": int | None, "per_client": {site: round}}
    TEST = "test"  # {model kind: {site: metrics}} on the selected checkpoint
    TEST_LAST = "test_last"  # the same on the last round's model (shown beside it, never chosen on)
    MEAN = "mean"  # {model kind: {"dice": site mean, "dice_image": image-weighted mean}}
    BYTES = "bytes"  # {"up", "down", "total", "up_raw", "down_raw", "total_raw"}: every round and comm line
    FAILURES = "failures"  # {site: {"failure": n, "rejected": n}}: sites with failed or rejected exchanges
    SAMPLE_PRIVACY = "sample_privacy"  # DP-SGD only: {site: {"sample_epsilon", "sample_delta"}} at the run's end
    PRIVACY = "privacy"  # client-level DP: the last ``kind: privacy`` line's epsilon, delta and settings


class InfoKey(StrEnum):
    """Keys of ``run_info.json`` the report and ``fedseg eval`` read."""

    NAME = "name"
    ALGORITHM = "algorithm"
    ALGORITHM_PARAMS = "algorithm_params"  # the algorithm section of the config (with "name")
    HAS_GLOBAL_MODEL = "has_global_model"
    POOLED_DATA = "pooled_data"
    SITES = "sites"  # the evaluating sites
    CLIENTS = "clients"  # the training clients
    SPATIAL_DIMS = "spatial_dims"
    NUM_CLASSES = "num_classes"
    IN_CHANNELS = "in_channels"
    SEED = "seed"
    DEVICE = "device"
    OPTIMIZER_STATE = "optimizer_state"  # the resolved policy: "reset" or "persist"
    JUDGED_BY = "judged_by"
    UNSEEN_POLICY = "unseen_policy"  # what the method uses on a site that never trained (text)
    INIT_CHECKPOINT = "init_checkpoint"  # {"path", "sha256"} of model.init_checkpoint; absent when unset
    AGGREGATION = "aggregation"  # the aggregation section (rule, clip_norm...) the server combined with
    ATTACK = "attack"  # {"kind", "sites", ...} of a simulated attack; absent when the run was not attacked
    PRIVACY = "privacy"  # the privacy section as run (client-level DP: delta, K, m, q, accountant)
    VERSIONS = "versions"  # {fedseg, torch, monai, flwr, python} of the process that ran the server


class BytesKey(StrEnum):
    """Keys of ``summary.json``'s ``bytes``: totals over every ``round`` and ``comm`` line."""

    UP = "up"
    DOWN = "down"
    TOTAL = "total"
    UP_RAW = "up_raw"
    DOWN_RAW = "down_raw"
    TOTAL_RAW = "total_raw"
