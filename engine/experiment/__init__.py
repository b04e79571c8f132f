"""What to ask: the spec, the question set, how answers are scored, and the grid of tasks.

Data flow: a spec file (:mod:`.spec`) names a question set (:mod:`.questions`) and a scorer
(:mod:`.scoring`); :mod:`.grid` crosses them into keyed tasks. Nothing here sends a request.
Usage: ``grid = build_grid(load_spec(path), load_questions(path), targets)``
"""
