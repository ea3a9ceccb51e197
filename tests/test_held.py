"""The held outcomes give exactly what a heap of (ts, id, outcome) entries gave."""

from __future__ import annotations

import heapq
import random
from typing import NamedTuple

import pytest

from monitor.held import HeldOutcomes


class Outcome(NamedTuple):
    id: str
    ts: float
    n: int


@pytest.mark.parametrize("seed", range(40))
def test_takes_and_pops_are_a_heaps_pops(seed: int) -> None:
    rng = random.Random(seed)
    held, heap = HeldOutcomes(), []
    clock, serial = 0.0, 0
    for _ in range(300):
        action = rng.random()
        if action < 0.55:  # a run of outcomes: mostly in order, sometimes late, sometimes tied
            run = []
            for _ in range(rng.randint(0, 30)):
                clock += rng.choice([0.0, 0.5, 1.0])
                ts = clock - (rng.choice([0.0, 3.0, 40.0]) if rng.random() < 0.2 else 0.0)
                serial += 1
                run.append(Outcome(f"e{rng.randint(0, 10 ** 6)}-{serial}", ts, serial))
            held.add(run)
            for o in run:
                heapq.heappush(heap, (o.ts, o.id, o))
        elif action < 0.85:  # a release up to a time (sometimes exactly an outcome's time)
            upto = clock - rng.choice([0.0, 0.5, 2.0, 10.0])
            want = []
            while heap and heap[0][0] < upto:
                want.append(heapq.heappop(heap)[2])
            assert held.take_before(upto) == want
        elif action < 0.95:  # one at a time, as while submissions are held
            for _ in range(rng.randint(1, 5)):
                first = heap[0][0] if heap else float("inf")
                assert held.first_ts() == first
                if heap:
                    assert held.pop() == heapq.heappop(heap)[2]
        else:  # a checkpoint and restore
            saved = held.outcomes()
            assert saved == [e[2] for e in sorted(heap)]
            held = HeldOutcomes()
            held.restore(saved)
        assert len(held) == len(heap)
    assert held.take_before(float("inf")) == [heapq.heappop(heap)[2] for _ in range(len(heap))]
    assert len(held) == 0
