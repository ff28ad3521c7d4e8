"""The study report: one self-contained HTML page, its Markdown twin and the short summary.md, built from a
results folder — every human-readable output of a study (the CLI prints sections of it).

``load`` reads the folder into plain data (the final runs through ``results.selection``, as the statistics),
``sections_*`` turn it into blocks, ``build`` orders them (the stages declare theirs), ``render`` writes HTML and
Markdown, ``diagram`` draws the study flow from the stage declarations, ``write`` writes the files."""
