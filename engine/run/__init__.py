"""Doing it: targets, limiters, the scheduler, progress, the plan, signals, and the runner that ties them.

Data flow: :mod:`.runner` loads the spec, resolves who answers (:mod:`.targets`), sets up limiters
per quota (:mod:`.quotas`), feeds tasks to :mod:`.scheduler` (records go to results/), shows
:mod:`.progress`, stops on :mod:`.interrupts`, then writes the report. :mod:`.plan` says what a
spec costs before anything is sent.
Usage: ``run_experiment(Path("data/memorisation.toml"))``
"""
