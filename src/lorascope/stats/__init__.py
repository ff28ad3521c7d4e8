"""Statistics (STUDY.md §11) and the success-criteria verdict (§12).

One concept per module:
- ``checks``      input validation shared by every statistic (float64, finite, equal lengths);
- ``describe``    mean, sd, t-CI over seeds; the power notes;
- ``paired``      FT vs LoRA over seeds: paired t, exact Wilcoxon, Cohen's d_z, Hedges' g, TOST;
- ``per_example`` per-example paired tests on the test set: McNemar, paired bootstrap;
- ``multitest``   Holm–Bonferroni within a family;
- ``overhead``    serving overhead (§10) with percentile-bootstrap CIs over requests;
- ``verdict``     criteria A, B, C and A ∧ (B ∨ C) in three-valued logic (plus "missing");
- ``collect``     reading a results folder (training, drift, serving);
- ``seeds``, ``drift_summary``, ``serve_summary``  the stage's parts for training, drift and serving;
- ``validity``    the validity gate (§12): each method vs the strongest trivial baseline;
- ``study_stats`` everything above for a results folder: the document the stats stage writes as stats.json.

Every function takes plain arrays, accumulates in float64, and draws randomness only from an explicit
``numpy.random.Generator``. Degenerate input raises ``lorascope.errors.StatsInputError``.
"""
