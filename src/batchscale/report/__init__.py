"""Reports: figures (each drawn on an Axes the caller owns) and self-contained HTML pages."""

from batchscale.report.html import software_versions, write_comparison, write_report

__all__ = ["software_versions", "write_comparison", "write_report"]
