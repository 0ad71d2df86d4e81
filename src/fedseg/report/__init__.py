"""Run reports: ``report.md`` + plots for one run, and comparison tables across runs."""

from __future__ import annotations

from fedseg.report.report import (
    ReportError,
    comparison_rows,
    comparison_table,
    write_comparison,
    write_report,
)

__all__ = ["ReportError", "comparison_rows", "comparison_table", "write_comparison", "write_report"]
