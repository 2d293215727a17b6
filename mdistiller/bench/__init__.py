"""The training-step benchmark behind ``tools/bench.py``: :mod:`.flops` (the analytic FLOP bound of a step),
:mod:`.timing` (memory meter, alternating timed rounds), :mod:`.items` (what is timed) and :mod:`.report`
(statistics, ratios, table). Nothing here imports torch at import time, so the command line can still choose
``OMP_WAIT_POLICY`` before torch loads."""
