"""The shared engine loop: out-of-memory ladder (split, fallbacks, mark) and progress."""

from __future__ import annotations

import logging
from contextlib import contextmanager

import pytest

from esmpipe.engine.runner import Progress, run_batches


class FakeOOM(RuntimeError):
    pass


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, FakeOOM)


def _run(batches, run, **kwargs):
    return list(run_batches(batches, run, is_oom=_is_oom, free_memory=lambda: None,
                            out_of_memory=lambda i: "OOM", **kwargs))  # fmt: skip


def test_results_per_batch_in_order() -> None:
    out = _run([[2, 0], [1]], lambda b: [i * 10 for i in b])
    assert out == [([2, 0], [20, 0]), ([1], [10])]


def test_oom_splits_then_marks_single_items() -> None:
    calls: list[list[int]] = []
    freed: list[int] = []

    def run(batch: list[int]) -> list[int]:
        calls.append(batch)
        if len(batch) > 2 or 13 in batch:
            raise FakeOOM
        return [i * 10 for i in batch]

    out = list(run_batches([list(range(10, 17))], run, is_oom=_is_oom,
                           free_memory=lambda: freed.append(1),
                           out_of_memory=lambda i: "OOM"))  # fmt: skip
    (batch, results) = out[0]
    assert batch == list(range(10, 17))
    assert dict(zip(batch, results, strict=True)) == {
        i: ("OOM" if i == 13 else i * 10) for i in range(10, 17)
    }
    assert calls[0] == list(range(10, 17)) and [13] in calls
    assert len(freed) == sum(1 for c in calls if len(c) > 2 or 13 in c)


def test_fallbacks_are_tried_in_order_for_a_single_item_then_reset() -> None:
    state = {"chunk": None}
    seen: list[tuple[list[int], object]] = []

    @contextmanager
    def chunk(size: int):
        state["chunk"] = size
        try:
            yield
        finally:
            state["chunk"] = None

    def run(batch: list[int]) -> list[str]:
        seen.append((batch, state["chunk"]))
        # Item 7 fits only with a chunk of 4 or less; item 8 never fits alone.
        if len(batch) > 1 or (7 in batch and (state["chunk"] is None or state["chunk"] > 4)):
            raise FakeOOM
        if 8 in batch:
            raise FakeOOM
        return [f"{i}@{state['chunk']}" for i in batch]

    out = _run([[6, 7, 8]], run, fallbacks=lambda i: (chunk(s) for s in (16, 8, 4, 2)))
    assert out == [([6, 7, 8], ["6@None", "7@4", "OOM"])]
    assert state["chunk"] is None
    assert [c for b, c in seen if b == [7]] == [None, 16, 8, 4]  # stops at the first that fits
    assert [c for b, c in seen if b == [8]] == [None, 16, 8, 4, 2]  # every level, then marked


def test_other_errors_propagate() -> None:
    def run(batch: list[int]) -> list[int]:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        _run([[1, 2]], run)


def test_wrong_result_count_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="gave 1 results"):
        _run([[1, 2]], lambda b: [0])


def test_progress_lines_have_rate_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    progress = Progress("fold", [100, 100, 200], [1.0, 1.0, 8.0], interval=0.0,
                        clock=lambda: now[0])  # fmt: skip
    caplog.set_level(logging.INFO)
    now[0] = 10.0
    progress.update(2, 200, 2.0)
    # 2 of 10 cost units in 10 s: 40 s to go; 200 residues in 10 s.
    assert "fold: 2/3 sequences (67%), 200 residues, 20 residues/s" in caplog.text
    assert "ETA 0:00:40" in caplog.text
    now[0] = 50.0
    progress.update(1, 200, 8.0)
    assert "3/3 sequences (100%)" in caplog.records[-1].getMessage()
    assert "ETA" not in caplog.records[-1].getMessage()


def test_progress_is_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    progress = Progress("embed", [10] * 5, interval=30.0, clock=lambda: now[0])
    caplog.set_level(logging.INFO)
    for t in (1.0, 2.0, 40.0, 41.0):
        now[0] = t
        progress.update(1, 10)
    assert len(caplog.records) == 1  # only at 40 s; the last (5th) update has not come
    now[0] = 42.0
    progress.update(1, 10)
    assert len(caplog.records) == 2
