"""Run reports: ``report.md`` + plots for one run, and comparison tables across runs.

Modules, along the seams of the job: :mod:`~fedseg.report.runs` reads a run directory (which
model judges the method, which checkpoint was tested), :mod:`~fedseg.report.traffic` sums the
bytes on the wire, :mod:`~fedseg.report.fmt` formats numbers, :mod:`~fedseg.report.plots` draws,
:mod:`~fedseg.report.single` writes one run's report and :mod:`~fedseg.report.compare` the
comparison across runs.
"""

from __future__ import annotations

from fedseg.report.compare import comparison_rows, comparison_table, write_comparison
from fedseg.report.runs import ReportError, RunRecords
from fedseg.report.single import write_report

__all__ = ["ReportError", "RunRecords", "comparison_rows", "comparison_table", "write_comparison", "write_report"]
