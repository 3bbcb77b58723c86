"""A run whose step waits for a provider pool slot sleeps until its next claim check: Dagster's own
interval is never above zero, so its executor loop never slept (orchestration/pool_wait.py)."""

from __future__ import annotations

import time

import dagster as dg
import pytest
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.utils import make_new_run_id

from backfill_dagster.orchestration import pool_wait

POOL = "provider_alpaca"


@pytest.fixture
def waiting(instance):
    """A run's concurrency context whose step was refused the pool's one slot (another run has it)."""
    instance.event_log_storage.set_concurrency_slots(POOL, 1)
    holder = instance.create_run_for_job(dg.GraphDefinition("holder").to_job(), run_id=make_new_run_id())
    with InstanceConcurrencyContext(instance, holder) as held:
        assert held.claim(POOL, "bars_m15")
        run = instance.create_run_for_job(dg.GraphDefinition("waiter").to_job(), run_id=make_new_run_id())
        with InstanceConcurrencyContext(instance, run) as context:
            assert not context.claim(POOL, "bars_m15")  # refused: the one slot is taken
            yield context


def test_a_refused_claim_waits_until_its_next_check(waiting):
    wait = waiting.interval_to_next_pending_claim_check()
    assert 0.5 < wait <= 1.0  # Dagster's first re-check comes 1 s after a refusal
    assert not waiting.claim(POOL, "bars_m15")  # asked again before then: not due, still pending
    assert 0 < waiting.interval_to_next_pending_claim_check() <= wait


def test_dagster_s_own_interval_never_waits(waiting):
    pool_wait.uninstall()
    try:
        assert waiting.interval_to_next_pending_claim_check() <= 0  # the busy loop this module ends
    finally:
        pool_wait.install()


def test_a_due_check_and_no_pending_claim_wait_nothing(waiting):
    waiting._pending_timeouts["bars_m15"] = time.time() - 5  # its check is overdue
    assert waiting.interval_to_next_pending_claim_check() == 0.0
    waiting._pending_claims.clear()
    assert waiting.interval_to_next_pending_claim_check() == 0.0


def test_the_definitions_install_it():
    import backfill_dagster.definitions  # noqa: F401

    assert InstanceConcurrencyContext.interval_to_next_pending_claim_check is pool_wait.interval_to_next_pending_claim_check
