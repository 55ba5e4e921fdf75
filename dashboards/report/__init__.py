"""The bureau's monthly report: a PDF and its PNG charts, from the dashboards' own queries.

``jinsuan report --month 2025-06`` runs :func:`write_report`. Every figure is the rows of a
dashboard panel run by :func:`dashboards.grafana.panel_rows` for the Asia/Shanghai month, so
the report and the dashboards cannot disagree.
"""

from dashboards.report.build import Written, write_report
from dashboards.report.month import Month, ReportError, parse_month

__all__ = ["Month", "ReportError", "Written", "parse_month", "write_report"]
