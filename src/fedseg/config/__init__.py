"""Run configuration: YAML validated by pydantic, one module per section.

``base`` (the strict base model and :class:`ConfigError`), ``data``, ``model`` (common fields and
one typed config per model, :data:`MODEL_CONFIGS`), ``loss``, ``train``, ``federation``, ``eval``,
``codec``, ``flower``, ``run`` (:class:`RunConfig`, the checks that span sections) and
``loading`` (YAML, ``--set`` overrides, error messages that name the key and the allowed ones).
Every name is importable from ``fedseg.config``.
"""

from __future__ import annotations

from fedseg.config.aggregation import AggregationConfig
from fedseg.config.attack import AttackConfig
from fedseg.config.base import ConfigError, StrictModel
from fedseg.config.codec import CodecConfig
from fedseg.config.data import (
    DataConfig,
    LabelCorruptionConfig,
    PartitionConfig,
    PreprocessConfig,
    SplitConfig,
    SyntheticDataConfig,
    WeakLabelConfig,
)
from fedseg.config.eval import EvalConfig, SlidingWindowConfig
from fedseg.config.federation import FederationConfig
from fedseg.config.flower import FlowerConfig, FlowerDPConfig
from fedseg.config.loading import apply_overrides, config_from_dict, load_config
from fedseg.config.loss import LossConfig
from fedseg.config.model import MODEL_CONFIGS, FedBCSUNetConfig, ModelConfig, TransUNetConfig, UNetConfig
from fedseg.config.model import SAMConfig
from fedseg.config.privacy import ClientDPConfig, PrivacyConfig, SampleDPConfig
from fedseg.config.run import RunConfig
from fedseg.config.train import AugmentConfig, TrainConfig

__all__ = [
    "StrictModel",
    "SplitConfig",
    "SyntheticDataConfig",
    "PreprocessConfig",
    "PartitionConfig",
    "DataConfig",
    "LabelCorruptionConfig",
    "WeakLabelConfig",
    "ModelConfig",
    "UNetConfig",
    "TransUNetConfig",
    "FedBCSUNetConfig",
    "SAMConfig",
    "MODEL_CONFIGS",
    "LossConfig",
    "AugmentConfig",
    "TrainConfig",
    "SlidingWindowConfig",
    "FederationConfig",
    "EvalConfig",
    "FlowerDPConfig",
    "AggregationConfig",
    "AttackConfig",
    "ClientDPConfig",
    "SampleDPConfig",
    "PrivacyConfig",
    "FlowerConfig",
    "CodecConfig",
    "RunConfig",
    "ConfigError",
    "load_config",
    "apply_overrides",
    "config_from_dict",
]
