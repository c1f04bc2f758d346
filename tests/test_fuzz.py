"""Fuzzing: the atheris harness for the token parser, and a state machine for the sorted list."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from twisted.internet.task import Clock

from numd.counter.replies import ListReply, format_values
from numd.service import NumberService

HARNESS = Path(__file__).parent / "fuzz_protocol.py"


def test_atheris_harness_finds_nothing() -> None:
    """20,000 coverage-guided inputs through the counter protocol break no invariant."""
    try:
        import atheris  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the machine
        pytest.skip(f"atheris is not installed here ({e}); the hypothesis tests still run")
    result = subprocess.run(
        [sys.executable, str(HARNESS), "-runs=20000", "-seed=1"],
        capture_output=True,
        timeout=240,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 20000 runs" in result.stderr


INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


class SortedListMachine(RuleBasedStateMachine):
    """The service's sorted list behaves like a plain sorted Python list."""

    def __init__(self) -> None:
        super().__init__()
        self.service = NumberService(Clock(), random.Random(0))
        self.model: list[int] = []
        self.cached_replies = {cap: ListReply(self.service, cap) for cap in (64, 100, 400)}

    @rule(values=st.lists(st.one_of(INT64, st.integers(-5, 5)), min_size=1, max_size=30))
    def merge(self, values: list[int]) -> None:
        """Merging adds every value, duplicates kept."""
        self.service.merge(values)
        self.model = sorted(self.model + values)

    @rule(values=st.lists(st.integers(min_value=2**63, max_value=2**70), min_size=1, max_size=3))
    def merge_out_of_range(self, values: list[int]) -> None:
        """An out-of-range value is refused and changes nothing."""
        with pytest.raises(ValueError):
            self.service.merge([1, *values])

    @rule()
    def clear(self) -> None:
        """Clearing empties the list."""
        self.service.clear()
        self.model = []

    @rule(cap=st.integers(min_value=64, max_value=400))
    def reply(self, cap: int) -> None:
        """The array reply is the list's prefix, within the cap, marked when cut."""
        reply = format_values(self.service.values, cap)
        assert len(reply) <= cap
        text = reply.decode()
        if text.endswith("]") and not text.endswith("...]"):
            shown = [int(v) for v in text[1:-1].split(",")] if text != "[]" else []
            assert shown == self.model
        else:
            head, size = text.rsplit("/", 1)
            assert int(size) == len(self.model)
            shown = [int(v) for v in head[1:-5].split(",")] if head != "[...]" else []
            assert shown == self.model[: len(shown)]
            assert len(shown) < len(self.model)

    @rule(cap=st.sampled_from([64, 100, 400]))
    def cached_reply(self, cap: int) -> None:
        """The cached array reply is always the one formatted afresh."""
        assert self.cached_replies[cap].reply() == format_values(self.service.values, cap)

    @invariant()
    def same_as_model(self) -> None:
        """The list always equals the model."""
        assert list(self.service.values) == self.model


TestSortedList = SortedListMachine.TestCase
TestSortedList.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
