"""The stress harness: ``lightning-db stress`` drives load from client
processes and faults (killed or paused workers, a killed server, a full
disk, damaged tables, dropped connections) against either mode, then proves
with the checkers of :mod:`lightning_db.check` that every key stayed
linearizable and nothing acknowledged was lost.

``run.py`` is the entry (``StressConfig``, ``run_stress``, ``main``);
``client.py`` the client processes; ``workload.py`` the mixes and key
distributions; ``target.py`` the database driven; ``faults.py`` the
injector; ``history.py`` merging; ``checkers.py`` the verdicts;
``live.py`` and ``report.py`` what a person sees.
"""

from .run import StressConfig, StressResult, main, run_stress

__all__ = ["StressConfig", "StressResult", "main", "run_stress"]
