"""A middle process for the orphan tests: spawns an actor, prints its pid,
then waits to be killed. Run as ``python -m tests.actors.orphan_middle
METHOD main|thread RUNTIME_DIR [exit]``; with ``exit`` it returns normally
(without stopping the actor) after reading one line."""

from __future__ import annotations

import sys
import threading


def main() -> None:
    from lightning_db.actors import spawn
    from tests.actors.sample_actors import EchoActor

    method, where, runtime_dir = sys.argv[1:4]
    refs = []

    def start() -> None:
        refs.append(spawn(EchoActor, name=f"orphan-{method}-{where}", runtime_dir=runtime_dir, start_method=method))

    if where == "thread":        # the spawning thread ends at once: no PR_SET_PDEATHSIG, the lifeline must do
        t = threading.Thread(target=start)
        t.start()
        t.join()
    else:
        start()
    ref = refs[0]
    assert ref.ask("echo", "up").result(60) == "up"
    print(ref.pid, flush=True)
    if sys.argv[4:] == ["exit"]:
        sys.stdin.readline()     # until told to exit normally, without stopping the actor
        return
    sys.stdin.read()             # until killed


if __name__ == "__main__":
    main()
