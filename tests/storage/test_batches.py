"""BatchQueue: what a group-commit writer thread takes in one batch."""

from __future__ import annotations

import threading

from hephaestus.storage._batches import BatchQueue


def test_a_batch_is_everything_queued_up_to_the_limit() -> None:
    batches: BatchQueue[int] = BatchQueue(3)
    for item in range(5):
        batches.put(item)
    assert batches.take() == [0, 1, 2]
    assert batches.take() == [3, 4]


def test_stop_ends_after_what_was_queued_before_it() -> None:
    batches: BatchQueue[int] = BatchQueue(10)
    batches.put(1)
    batches.put(2)
    batches.stop()
    batches.put(3)  # after the stop: never taken
    assert batches.take() == [1, 2]
    assert batches.take() is None
    assert batches.take() is None


def test_take_waits_for_a_producer_in_another_thread() -> None:
    batches: BatchQueue[str] = BatchQueue(10)
    producer = threading.Thread(target=batches.put, args=("late",))
    producer.start()
    assert batches.take() == ["late"]
    producer.join()
    batches.stop()
    assert batches.take() is None
