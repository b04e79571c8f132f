"""The built-in target: a local OpenAI-compatible server that plays fine-tuned models (a simulation).

Data flow: :mod:`.config` (a leaf: imports only errors) holds what it answers and how it fails;
:mod:`.answers` words replies, :mod:`.http` frames them, :mod:`.server` routes, paces quotas and
injects faults; :mod:`.process` runs it in a child process (``python -m engine.sim``, :mod:`.__main__`).
Usage: ``with SimProcess(SimConfig(facts=facts)) as sim: sim.base_url``
"""
