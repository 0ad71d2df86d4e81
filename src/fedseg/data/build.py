"""Build the federated dataset named by the ``data`` section of the config."""

from __future__ import annotations

from fedseg.config import DataConfig
from fedseg.data.base import DataError, FederatedData
from fedseg.data.folder import ProgressCallback, load_folder_federation
from fedseg.data.supervision import apply_supervision
from fedseg.data.synthetic import make_synthetic_federation

__all__ = ["build_federated_data"]


def build_federated_data(cfg: DataConfig, seed: int, progress: ProgressCallback | None = None,
                         mixed_shapes: bool = False) -> FederatedData:
    """Load or generate the federation described by ``cfg``.

    Args:
        cfg: data section of the run config. ``source='synthetic'`` generates
            :mod:`fedseg.data.synthetic` data from ``cfg.synthetic`` and ``cfg.split``;
            ``source='folder'`` reads ``cfg.root`` with :mod:`fedseg.data.folder`, ``source='nnunet'``
            nnU-Net raw datasets there (:mod:`fedseg.data.nnunet`, then the same reader). Box- and
            image-supervised sites (``cfg.supervision``) then get weak training splits without
            masks (:func:`fedseg.data.supervision.apply_supervision`).
        seed: run seed (generation, splits and derived box margins are deterministic in it).
        progress: called with ``(cases read, cases in all)`` while real cases are read.
        mixed_shapes: folder cases may differ in shape (``train.patch_size`` is set).

    Returns:
        The in-memory federated data.

    Raises:
        DataError: unknown source, or any problem reading or generating the data.
        ConfigError: ``cfg.supervision`` names an unknown site.
    """
    if cfg.source == "synthetic":
        return apply_supervision(make_synthetic_federation(cfg.synthetic, cfg.split, seed), cfg, seed)
    if cfg.source in ("folder", "nnunet"):
        return apply_supervision(load_folder_federation(cfg, seed, progress, mixed_shapes), cfg, seed)
    raise DataError(f"data.source {cfg.source!r} is unknown; allowed: synthetic, folder, nnunet")
