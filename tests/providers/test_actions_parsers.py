"""Corporate-action parsers on recorded-shape payloads (tests/providers/payloads/actions/*.json),
one test walks them: the records expected (symbol, kind, ex_date, provider, id, split_from, split_to,
cash_amount), or the text the error must contain."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest

from backfill_dagster.domain.corporate_actions import ActionKind, ActionRecord
from backfill_dagster.providers import alpaca_actions, polygon_actions, yahoo_actions
from backfill_dagster.providers.payload import PayloadError

CASES = sorted((Path(__file__).parent / "payloads" / "actions").glob("*.json"))
MODULES = {"alpaca_actions": alpaca_actions, "polygon_actions": polygon_actions, "yahoo_actions": yahoo_actions}
NEXT = {"alpaca_actions": alpaca_actions.next_page_token, "polygon_actions": polygon_actions.next_url}


def parse(case: dict) -> list[ActionRecord]:
    module, function = case["parser"].split(".")
    return getattr(MODULES[module], function)(case["payload"], **case.get("args", {}))


def test_every_provider_has_cases_and_errors():
    names = [p.stem for p in CASES]
    for prefix in ("alpaca", "polygon", "yahoo"):
        assert any(n.startswith(prefix) and "malformed" in n for n in names), prefix
        assert sum(n.startswith(prefix) for n in names) >= 4, prefix


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_payload_case(path):
    case = json.loads(path.read_text())
    if "error" in case:
        with pytest.raises(PayloadError) as raised:
            parse(case)
        assert case["error"] in str(raised.value)
        return
    expected = [
        ActionRecord(s, ActionKind(k), date.fromisoformat(d), p, i, f, t, c) for s, k, d, p, i, f, t, c in case["records"]
    ]
    assert parse(case) == expected
    module = case["parser"].split(".")[0]
    if module in NEXT:
        assert NEXT[module](case["payload"]) == case["next"]
