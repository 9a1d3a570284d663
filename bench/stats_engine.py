"""`pfi` with the programme statistics switched on or off, for bench/stats.py only:

    python bench/stats_engine.py on|off TIMING_FILE run --config DIR --data DIR

`off` removes the counters observer from the events writer and the classification from routing,
so that the two runs differ by the counting alone (the engine itself has no such switch: the
statistics are always kept). `on` also measures the CPU time (of the calling thread) spent in the
three counting functions and writes the totals to TIMING_FILE when the engine stops."""

from __future__ import annotations

import atexit
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.cli import main  # noqa: E402
from engine.journal import events  # noqa: E402
from engine.journal import stats  # noqa: E402
from engine.routing import dispatcher  # noqa: E402

TOTALS = {"classify": [0, 0], "record_messages": [0, 0], "count_event_outcomes": [0, 0], "registry": [0, 0]}


def timed(name: str, function):
    def wrapper(*args):
        started = time.thread_time_ns()
        try:
            return function(*args)
        finally:
            TOTALS[name][0] += time.thread_time_ns() - started
            TOTALS[name][1] += 1

    return wrapper


if __name__ == "__main__":
    mode, timing_file, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
    if mode == "off":
        events.OBSERVERS.remove(stats.count_event_outcomes)
        dispatcher.statistics_facts = lambda contexts, env: []
    else:
        events.OBSERVERS[events.OBSERVERS.index(stats.count_event_outcomes)] = timed(
            "count_event_outcomes", stats.count_event_outcomes
        )
        dispatcher.statistics_facts = timed("classify", dispatcher.statistics_facts)
        stats.record_messages = timed("record_messages", stats.record_messages)
        from engine.patients.registry import PatientRegistry

        PatientRegistry.statistics_views = timed("registry", PatientRegistry.statistics_views)
        atexit.register(lambda: Path(timing_file).write_text(json.dumps(TOTALS)))
    sys.exit(main(argv))
