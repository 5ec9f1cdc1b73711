"""Reports: the Report data object and pure functions that turn it into tables and files."""

from .schema import SCHEMA_VERSION, Report, load_report
from .writers import write_report

__all__ = ["SCHEMA_VERSION", "Report", "load_report", "write_report"]
