"""The results folder: its layout (every path), which runs are the study's final runs, the one PEFT adapter
reader, and the config a folder was made with. Every stage and every reader goes through this package, so
the statistics, the report and the analysis stages always describe the same runs.

May import: ``lorascope.config``, ``io``, ``manifest``, ``errors`` (and torch / peft for adapters) — nothing
that trains or analyses.
"""
