"""The study report (issue 6): one self-contained HTML page and a Markdown twin built from a results folder.

``load`` reads the folder into plain data, ``sections_*`` turn it into blocks, ``render`` writes HTML and
Markdown, ``diagram`` draws the study flow, ``stage`` is the DAG's last job."""

from lorascope.report.stage import run_report_stage, write_report

__all__ = ["run_report_stage", "write_report"]
