"""Segmentation metrics: pure per-case functions plus accumulators."""

from __future__ import annotations

from fedseg.metrics.segmentation import METRIC_NAMES, MetricAccumulator, case_metrics

__all__ = ["METRIC_NAMES", "MetricAccumulator", "case_metrics"]
