"""The benchmark: the engine against bare HTTP loops on the same sim, for throughput.

Data flow: :mod:`.throughput` starts a sim and runs each contestant (:mod:`.contestants`) in its own
process, then tabulates requests per second.
Usage: ``python -m engine bench --requests 20000``
"""
