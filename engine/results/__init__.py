"""The run directory: its paths, the typed log record, the one writer and the one reader.

Data flow: :mod:`.paths` prepares a directory (``run.json`` from :mod:`.runmeta`, a lock from
:mod:`.lock`); :mod:`.write` appends :class:`~engine.results.record.Record` lines; :mod:`.read`
reads them back as Polars frames for the resume scan, the report and the seed export.
Knows nothing of the spec: callers pass the experiment's name.
Usage: ``read_records(Path("runs/x/results.jsonl"), ["status"])``
"""
