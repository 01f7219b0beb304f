"""The experiment report: report/index.html (self-contained), PNG figures, summary.json."""

from mi_llm.report.data import ReportData
from mi_llm.report.render import write_report

__all__ = ["ReportData", "write_report"]
