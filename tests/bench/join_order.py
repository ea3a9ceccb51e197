"""What finding the join's oldest entry costs as the stream goes on: seconds per 250,000 events.

    python -m tests.bench.join_order

Three streams that take the oldest entry on (nearly) every event: predictions at capacity
(``max_pending`` 200,000, half of them labelled soon: eviction), the same under a 600 s TTL
(expiry), and 1.5 M outcome events against a joined-id memory of 10^6 (it forgets its oldest
id on every event once full). Per-block times stay flat when the oldest is found in O(1); a dict
that is asked for its first key after deletions from its front grows slower block by block.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Iterator

from monitor.events import Event
from monitor.join import Joiner

T0 = 1795514400.0
BLOCK = 250_000


def labelled_half(n: int) -> Iterator[Event]:
    rng = random.Random(1)
    for i in range(n):
        yield Event("prediction", f"id-{i}", T0 + i * 0.01, "m", None, {}, "a b", None, None, None)
        if i > 1000 and rng.random() < 0.5:
            k = i - rng.randrange(1000)
            yield Event("feedback", f"id-{k}", T0 + i * 0.01, "m", None, {}, None, "a b", None, None)


def outcomes(n: int) -> Iterator[Event]:
    for i in range(n):
        yield Event("outcome", f"id-{i}", T0 + i * 0.5, "m", None, {}, 0, 0, None, None)


def blocks(joiner: Joiner, events: Iterator[Event]) -> list[float]:
    """Seconds per BLOCK events."""
    times, started = [], time.perf_counter()
    add = joiner.add
    for count, ev in enumerate(events, 1):
        add(ev)
        if count % BLOCK == 0:
            times.append(time.perf_counter() - started)
            started = time.perf_counter()
    return times


def main() -> None:
    gc.disable()
    runs = [("eviction at max_pending 200,000", Joiner(1e9, 200_000), labelled_half(1_000_000)),
            ("expiry, TTL 600 s", Joiner(600.0, 1_000_000), labelled_half(1_000_000)),
            ("10^6 joined ids remembered", Joiner(7 * 86400.0, 1_000_000), outcomes(1_500_000))]
    for name, joiner, events in runs:
        times = blocks(joiner, events)
        print(f"{name:34} seconds per {BLOCK:,} events: " + "  ".join(f"{t:.2f}" for t in times), flush=True)


if __name__ == "__main__":
    main()
