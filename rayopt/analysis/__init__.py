"""Generalisation sweeps and their analysis (paper §6-8; docs/analysis.md).

``sweep`` (configs, optimiser selection, the resumable Ray runner) -> the journal ->
``scan`` (one pass per directory) -> ``population`` (discovery runs: ranks, Fig. 2,
lineage) and ``stats`` (rliable: IQM + CIs, P(X > Y), profiles) -> ``plots`` (Figs. 2-6)
-> ``report`` (``rayopt analyze``: tables, figures, report.html).
"""
