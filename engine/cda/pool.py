"""CDA validation in worker processes, beside the engine (`cda_processes` in pfi.yaml).

The XSD + Schematron run (lxml, saxonche) takes ~20-180 ms per report and holds the GIL for
most of it: in one of the engine's threads it takes that time from the reactor (intake's ACKs)
and the journal writer, and a burst of reports slows every channel. In a worker process it holds
another interpreter's GIL; the calling thread waits for the result without holding the engine's.
A document that crashes the validator costs a worker, not the engine. See docs/cda-validation.md.

`CdaProcessPool` has the interface of `CdaChecker` (`warm_up`, `problems`, call), so the route
step and the document channels' check use either. Workers are started with `spawn` (never a fork
of a threaded engine), each compiles the kit's Schematrons once, and the pool is shared by every
engine of the process for the same kit and stages, like the in-process checkers.
"""

from __future__ import annotations

import atexit
import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import structlog

from engine.cda.checker import CdaChecker, kit_directory, kit_problems
from engine.errors import ConfigurationError, EngineError

log = structlog.get_logger("engine.cda")

_worker_checker: CdaChecker | None = None  # in a worker process: its own checker


def _start_worker(directory: str, cache_dir: str, stages: tuple[str, ...], log_level: str) -> None:
    """A worker's initializer: JSON logs on stderr as the engine's, Ctrl-C left to the engine
    (which stops its workers), the kit loaded and compiled as the engine would in-process."""
    import signal

    from engine.cda.checker import shared_checker
    from engine.log import configure_logging

    global _worker_checker
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(log_level)
    _worker_checker = shared_checker(Path(directory), Path(cache_dir), stages)
    _worker_checker.warm_up()


def _worker_problems(content: bytes) -> list[str]:
    assert _worker_checker is not None  # set by the initializer
    return _worker_checker.problems(content)


def _worker_pid() -> int:
    import os

    return os.getpid()


class ValidatorUnavailable(EngineError):
    """The validation workers stopped twice in a row on one document: it is not judged (a route
    step fails with this reason: dead letter and its on_failure steps; a document channel
    answers AR 207, send it again later)."""


class CdaProcessPool:
    def __init__(
        self, directory: Path, cache_dir: Path, stages: tuple[str, ...], processes: int, log_level: str = "info"
    ):
        self.processes = processes
        self._args = (str(directory), str(cache_dir), tuple(stages), log_level)
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()
        self.work = _worker_problems  # what a worker runs per document (a test replaces it)

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ProcessPoolExecutor(
                    self.processes,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start_worker,
                    initargs=self._args,
                )
            return self._executor

    def _discard(self, broken: ProcessPoolExecutor) -> None:
        with self._lock:
            if self._executor is broken:
                self._executor = None
        broken.shutdown(wait=False, cancel_futures=True)

    def warm_up(self) -> None:
        """Start every worker and compile the kit there now (at engine start, not on the first
        report); a kit the workers cannot load fails the start."""
        executor = self._pool()
        try:
            pids = self.worker_pids()
        except BrokenProcessPool as exc:
            self._discard(executor)
            raise ConfigurationError([f"CDA validation workers could not start: {exc}"]) from exc
        log.info("cda.workers_started", processes=len(pids), requested=self.processes)

    def problems(self, content: bytes) -> list[str]:
        """Blocking issues of one CDA document, judged in a worker (the calling thread waits
        without the GIL). A worker that dies is replaced and the document tried once more."""
        for attempt in (1, 2):
            executor = self._pool()
            try:
                return executor.submit(self.work, content).result()
            except BrokenProcessPool:
                self._discard(executor)
                log.error("cda.worker_lost", attempt=attempt, size=len(content))
        raise ValidatorUnavailable("the CDA validation workers stopped twice on this document")

    __call__ = problems

    def worker_pids(self) -> set[int]:
        """The workers' process ids (for tests and operators): starts them if needed."""
        executor = self._pool()
        return {f.result() for f in [executor.submit(_worker_pid) for _ in range(self.processes)]}

    def close(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


_pools: dict[tuple, CdaProcessPool] = {}
_pools_lock = threading.Lock()


def shared_pool(
    setting: str, config_root: Path, cache_dir: Path, stages: tuple[str, ...], processes: int, log_level: str = "info"
) -> CdaProcessPool:
    """The pool of a kit (one per kit, stages and size in the process, closed at exit). Raises
    ConfigurationError without a kit, as `CdaChecker.from_settings` does."""
    problems = kit_problems(setting, config_root)
    if problems:
        raise ConfigurationError(problems)
    directory = kit_directory(setting, config_root)
    key = (directory, tuple(stages), processes)
    with _pools_lock:
        if key not in _pools:
            _pools[key] = CdaProcessPool(directory, Path(cache_dir), tuple(stages), processes, log_level)
        return _pools[key]


@atexit.register
def _close_all() -> None:
    for pool in list(_pools.values()):
        pool.close()
