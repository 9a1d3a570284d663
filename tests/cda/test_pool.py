"""CDA validation in worker processes (engine/cda/pool.py): the verdict of the in-process check,
given by another process, surviving the death of its worker, a document that kills its workers
left unjudged (a failed route step, not an engine crash), refusing to start on a kit it cannot
load, and used by an engine configured with `cda_processes`."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from engine.cda.checker import CdaChecker
from engine.cda.pool import CdaProcessPool, ValidatorUnavailable, _worker_problems, shared_pool
from engine.errors import ConfigurationError

STAGES = ("conformance", "dmp")


@pytest.fixture(scope="module")
def pool(cda_kit: Path, tmp_path_factory) -> CdaProcessPool:
    cache = tmp_path_factory.mktemp("pool-cache")
    pool = CdaProcessPool(cda_kit / "TestContenuCDA-3-0", cache, STAGES, processes=1)
    pool.warm_up()
    yield pool
    pool.close()


@pytest.fixture(scope="module")
def local(cda_kit: Path, tmp_path_factory) -> CdaChecker:
    return CdaChecker.from_settings(str(cda_kit / "TestContenuCDA-3-0"), Path("."), tmp_path_factory.mktemp("c"))


def _documents(cda_kit: Path) -> dict[str, bytes]:
    invalid = cda_kit / "derived" / "invalid-variants"
    return {
        "valid": (cda_kit / "TestContenuCDA-3-0" / "ExemplesCDA" / "IMG_CR_IMG_2024.01.xml").read_bytes(),
        "bad xsd": (invalid / "INVALID_xsd_bogus_element.xml").read_bytes(),
        "bad schematron": (invalid / "INVALID_sch_no_conclusion.xml").read_bytes(),
        "not xml": b"<ClinicalDocument",
    }


def test_the_workers_give_the_in_process_verdict(pool, local, cda_kit):
    for name, document in _documents(cda_kit).items():
        assert pool.problems(document) == local.problems(document), name
    assert pool(_documents(cda_kit)["valid"]) == []
    assert pool(_documents(cda_kit)["bad xsd"]) and pool(_documents(cda_kit)["bad schematron"])


def test_validation_runs_in_another_process(pool):
    pids = pool.worker_pids()
    assert len(pids) == 1 and os.getpid() not in pids


def test_a_killed_worker_is_replaced_and_the_document_judged(pool, cda_kit):
    (victim,) = pool.worker_pids()
    os.kill(victim, signal.SIGKILL)
    assert pool.problems(_documents(cda_kit)["bad xsd"])  # judged by a new worker
    assert victim not in pool.worker_pids()


def test_a_kit_the_workers_cannot_load_fails_the_start(tmp_path):
    kit = tmp_path / "kit"  # the XSD `pfi check` looks for, and nothing else
    (kit / "infrastructure" / "cda").mkdir(parents=True)
    (kit / "infrastructure" / "cda" / "CDA_extended.xsd").write_text("<xs:schema/>")
    broken = shared_pool(str(kit), tmp_path, tmp_path / "cache", STAGES, 1)
    with pytest.raises(ConfigurationError, match="CDA validation workers could not start"):
        broken.warm_up()


def test_an_engine_validates_in_its_workers(tmp_path, cda_kit):
    from twisted.internet import reactor

    from engine.config.load import load_config
    from engine.service import Engine

    (tmp_path / "channels").mkdir()
    (tmp_path / "routes.yaml").write_text("routes: []\n")
    (tmp_path / "pfi.yaml").write_text(f"cda_kit: {cda_kit / 'TestContenuCDA-3-0'}\ncda_processes: 1\n")
    engine = Engine(load_config(tmp_path), tmp_path / "data", reactor, with_metrics=False)
    checker = engine.cda_checker("full")
    assert isinstance(checker, CdaProcessPool)
    assert checker.problems(_documents(cda_kit)["valid"]) == []
    (tmp_path / "pfi.yaml").write_text(f"cda_kit: {cda_kit / 'TestContenuCDA-3-0'}\ncda_processes: 0\n")
    in_threads = Engine(load_config(tmp_path), tmp_path / "data2", reactor, with_metrics=False)
    assert isinstance(in_threads.cda_checker("full"), CdaChecker)


def _crash(content: bytes) -> list[str]:
    """Stands for a validator that kills its process on a document (runs in the worker)."""
    os._exit(3)


def test_a_document_that_kills_its_workers_is_not_judged(cda_kit, tmp_path):
    pool = CdaProcessPool(cda_kit / "TestContenuCDA-3-0", tmp_path, (), processes=1)  # XSD only: quick
    pool.work = _crash
    try:
        with pytest.raises(ValidatorUnavailable, match="stopped twice"):
            pool.problems(b"<ClinicalDocument/>")
        pool.work = _worker_problems  # the pool itself survived: the next document is judged
        assert pool.problems(b"<ClinicalDocument")  # judged: not XML
    finally:
        pool.close()


def test_a_route_step_turns_an_unjudged_document_into_an_invalid_plan():
    from engine.config.routes import Route, label_steps
    from engine.demo import fictional_report
    from engine.journal.plans import Plan
    from engine.routing.context import MessageContext
    from engine.routing.plan import Environment, run_steps

    def unavailable(content: bytes) -> list[str]:
        raise ValidatorUnavailable("the CDA validation workers stopped twice on this document")

    route = Route.model_validate({"name": "reports", "steps": [{"label": "check", "validate": "cda"}]})
    label_steps(route)
    ctx = MessageContext("U-1", "in", fictional_report("REP-1", 1), 0.0)
    plan = Plan("U-1")
    run_steps(route, route.steps, ctx, ctx.raw, Environment({}, Path("."), cda_validator=unavailable), plan)
    assert plan.state == "invalid"
    assert "stopped twice on this document" in plan.events[-1][1]
