"""The report: aggregation with honest intervals, its model, renderers and charts.

Data flow: :mod:`.build` reads a log through results/, scopes it to the run's grid (:mod:`.scope`),
aggregates (:mod:`.stats`, :mod:`.tables`) into a :class:`~engine.report.model.Report`; :mod:`.render`
and :mod:`.charts` draw it; :mod:`.write` saves ``report.md`` and the PNGs.
Usage: ``write_report("runs/memorisation")``
"""
