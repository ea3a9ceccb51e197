from __future__ import annotations

import gc
from bisect import bisect_left
import random
import tracemalloc
from dataclasses import asdict

import msgspec
import pytest

from monitor.config import EventsConfig
from monitor.events import Decoder, Event
from monitor.join import LABEL_DELAY_BUCKETS, Joiner, JoinStats, Outcome


def pred(i: str, ts: float, **attrs: str) -> Event:
    return Event("prediction", i, ts, "m", "t1", dict(attrs), "yes", None, None, None)


def fb(i: str, ts: float, label: str = "yes", **attrs: str) -> Event:
    return Event("feedback", i, ts, None, None, dict(attrs), None, label, None, None)


def test_either_arrival_order() -> None:
    j = Joiner(ttl=100, max_pending=10)
    assert j.add(pred("a", 1)) is None
    out = j.add(fb("a", 5))
    assert out is not None and out.ts == 5 and out.label == "yes"
    assert j.add(fb("b", 6)) is None  # feedback first
    out = j.add(pred("b", 2))
    assert out is not None and out.id == "b" and out.ts == 6
    assert j.stats.joined == 2 and j.pending == 0
    assert j.stats.label_delay_count == 2 and j.stats.label_delay_sum == 8


def test_feedback_adds_attributes_but_never_overrides() -> None:
    j = Joiner(ttl=100, max_pending=10)
    j.add(pred("a", 1, accent="scottish"))
    out = j.add(fb("a", 2, accent="irish", gender="female"))
    assert out.attributes == {"accent": "scottish", "gender": "female"}


def test_ttl_expiry_is_by_event_time() -> None:
    j = Joiner(ttl=10, max_pending=10)
    j.add(pred("a", 0))
    j.add(fb("orphan", 1))
    j.add(pred("b", 5))
    assert j.add(fb("a", 10)) is not None  # delay == ttl still joins
    j.add(pred("c", 16))  # watermark 16: b (5) is still within 10s? 16 - 10 = 6 > 5 → b expires
    assert j.stats.expired_unlabelled == 1 and j.stats.expired_orphan == 1
    assert j.add(fb("b", 16.5)) is None  # too late: waits as orphan feedback
    assert j.pending == 2


def test_capacity_evicts_oldest_and_counts() -> None:
    j = Joiner(ttl=1e9, max_pending=3)
    for i in range(5):
        j.add(pred(str(i), i))
    assert j.pending == 3 and j.stats.evicted == 2
    assert j.add(fb("0", 9)) is None  # evicted: cannot join
    assert j.add(fb("4", 9)) is not None


def test_duplicates_are_counted_and_ignored() -> None:
    j = Joiner(ttl=100, max_pending=10)
    j.add(pred("a", 1))
    j.add(pred("a", 1.5))
    assert j.stats.duplicates["prediction"] == 1
    assert j.add(fb("a", 2)) is not None
    assert j.add(fb("a", 3)) is None  # feedback delivered twice
    assert j.add(pred("a", 1)) is None  # prediction replayed after the join
    assert j.stats.duplicates == {"prediction": 2, "feedback": 1, "outcome": 0}
    o = Event("outcome", "z", 4, "m", None, {}, "x", "x", None, None)
    assert j.add(o) is not None and j.add(o) is None
    assert j.stats.duplicates["outcome"] == 1


# ---- the columnar join equals the event-storing one it replaced ---------------------------------


def merge(prediction: Event, feedback: Event) -> Outcome:
    """The join's rule, written plainly (Joiner.add_many has it inline): feedback may add
    attributes (e.g. self-reported ones); it never overrides the prediction's."""
    attrs = prediction.attributes
    if feedback.attributes:
        attrs = {**feedback.attributes, **prediction.attributes}
    return Outcome(
        prediction.id,
        prediction.model or feedback.model or "",
        max(prediction.ts, feedback.ts),
        prediction.tenant if prediction.tenant is not None else feedback.tenant,
        attrs,
        prediction.output,
        feedback.label,
        feedback.errors,
        feedback.units,
        prediction.ts,
    )


class EventJoiner:
    """The join as it was before pending entries were stored in columns (kept as the oracle)."""

    def __init__(self, ttl: float, max_pending: int):
        self.ttl = ttl
        self.max_pending = max_pending
        self.stats = JoinStats()
        self.watermark = float("-inf")
        self._pending: dict[str, Event] = {}
        self._done: dict[str, float] = {}
        self._next_expiry = float("-inf")

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add(self, ev: Event) -> Outcome | None:
        if ev.ts > self.watermark:
            self.watermark = ev.ts
            if ev.ts > self._next_expiry:
                self._expire()
        eid = ev.id
        if eid in self._done:
            self.stats.duplicates[ev.kind] += 1
            return None
        if ev.kind == "outcome":
            if eid in self._pending:
                self.stats.duplicates["outcome"] += 1
                return None
            self._remember(eid, ev.ts)
            self.stats.outcomes_direct += 1
            return Outcome(eid, ev.model or "", ev.ts, ev.tenant, ev.attributes, ev.output, ev.label, ev.errors, ev.units,
                           ev.ts)
        other = self._pending.get(eid)
        if other is None:
            if len(self._pending) >= self.max_pending:
                self._pending.pop(next(iter(self._pending)))
                self.stats.evicted += 1
            self._pending[eid] = ev
            if ev.ts + self.ttl < self._next_expiry:
                self._next_expiry = ev.ts + self.ttl
            return None
        if other.kind == ev.kind:
            self.stats.duplicates[ev.kind] += 1
            return None
        del self._pending[eid]
        prediction, feedback = (other, ev) if ev.kind == "feedback" else (ev, other)
        self._remember(eid, max(ev.ts, other.ts))
        self.stats.joined += 1
        delay = max(0.0, feedback.ts - prediction.ts)
        self.stats.label_delay_sum += delay
        self.stats.label_delay_count += 1
        self.stats.label_delay_buckets[bisect_left(LABEL_DELAY_BUCKETS, delay)] += 1
        return merge(prediction, feedback)

    def _remember(self, eid: str, ts: float) -> None:
        if len(self._done) >= self.max_pending:
            self._done.pop(next(iter(self._done)))
        self._done[eid] = ts
        if ts + self.ttl < self._next_expiry:
            self._next_expiry = ts + self.ttl

    def _expire(self) -> None:
        horizon = self.watermark - self.ttl
        pending, done = self._pending, self._done
        next_expiry = float("inf")
        while pending:
            eid = next(iter(pending))
            ev = pending[eid]
            if ev.ts >= horizon:
                next_expiry = ev.ts + self.ttl
                break
            del pending[eid]
            if ev.kind == "prediction":
                self.stats.expired_unlabelled += 1
            else:
                self.stats.expired_orphan += 1
        while done:
            eid = next(iter(done))
            if done[eid] >= horizon:
                next_expiry = min(next_expiry, done[eid] + self.ttl)
                break
            del done[eid]
        self._next_expiry = next_expiry if next_expiry != float("inf") else self.watermark

    def state(self) -> dict:
        """The checkpoint state this join wrote (format 1: the pending events, msgpack-encoded)."""
        return {"watermark": self.watermark, "next_expiry": self._next_expiry,
                "pending": msgspec.msgpack.encode(list(self._pending.values())),
                "done": msgspec.msgpack.encode(self._done), "stats": asdict(self.stats)}

    def contents(self) -> dict:
        pending = []
        for eid, ev in self._pending.items():
            if ev.kind == "feedback":
                value = ev.label if ev.errors is None and ev.units is None else ("scored", ev.label, ev.errors, ev.units)
            else:
                value = ev.output
            pending.append((eid, ev.kind, ev.ts, ev.model, ev.tenant, dict(ev.attributes), value))
        return {"pending": pending, "done": list(self._done.items()), "watermark": self.watermark,
                "next_expiry": self._next_expiry, "stats": asdict(self.stats)}


def random_stream(seed: int, n: int) -> list[Event]:
    """Predictions, feedback (often first, sometimes with attributes or its own errors/units) and
    outcome events; repeated ids, replays, late and out-of-order events, gaps that expire entries."""
    rng = random.Random(seed)
    accents, tenants = ["scottish", "irish", "welsh"], ["t1", "t2", None]
    events, t = [], 1_000.0
    for _ in range(n):
        t += rng.expovariate(1.0) * (60 if rng.random() < 0.003 else 1)  # now and then a gap past the TTL
        eid = f"r{rng.randrange(n // 3)}"  # ids repeat: joins, duplicates and replays
        ts = t - rng.random() * 20  # out of order
        roll = rng.random()
        attrs = {"accent": rng.choice(accents)} if rng.random() < 0.9 else {}
        if rng.random() < 0.2:
            attrs["device"] = f"d{rng.randrange(3)}"
        if roll < 0.45:
            output = rng.choice(["yes", "no", 1, 0.5, True, None, "the quick brown fox"])
            events.append(Event("prediction", eid, ts, rng.choice(["m1", "m2"]), rng.choice(tenants), attrs, output,
                                None, None, None))
        elif roll < 0.9:
            errors, units = (float(rng.randrange(3)), 4.0) if rng.random() < 0.1 else (None, None)
            events.append(Event("feedback", eid, ts, rng.choice([None, "m1"]), rng.choice(tenants),
                                attrs if rng.random() < 0.3 else {}, None, rng.choice(["yes", "no", 2]), errors, units))
        else:
            events.append(Event("outcome", eid, ts, "m1", None, attrs, "yes", "no", None, None))
    return events


@pytest.mark.parametrize("seed,ttl,max_pending", [(1, 30.0, 10_000), (2, 30.0, 40), (3, 1e9, 25), (4, 5.0, 200)])
def test_the_columnar_join_equals_the_event_join_it_replaced(seed, ttl, max_pending) -> None:
    old, new = EventJoiner(ttl, max_pending), Joiner(ttl, max_pending)
    stream = random_stream(seed, 6000)
    for i, ev in enumerate(stream):
        expected, got = old.add(ev), new.add(ev)
        assert repr(got) == repr(expected), (i, ev)  # field by field, attribute order included
        if i % 500 == 0:
            assert new.contents() == old.contents()
    assert new.contents() == old.contents()
    s = new.stats
    assert s.joined and s.expired_unlabelled + s.expired_orphan + s.evicted and sum(s.duplicates.values())


def test_checkpointed_joins_continue_like_the_uninterrupted_one() -> None:
    """Full states and increments taken anywhere, restored into new joiners: the same results."""
    stream = random_stream(7, 8000)
    whole = EventJoiner(30.0, 300)
    expected = [repr(whole.add(ev)) for ev in stream]
    rng = random.Random(3)
    current, chain, got = Joiner(30.0, 300), [], []
    for i, ev in enumerate(stream):
        got.append(repr(current.add(ev)))
        if rng.random() < 0.01:
            delta = bool(chain) and rng.random() < 0.8
            data, arrays = current.state(delta=delta)
            assert data["kind"] == ("delta" if delta else "full")
            data, arrays = msgspec.msgpack.decode(msgspec.msgpack.encode(data)), {k: a.copy() for k, a in arrays.items()}
            chain = [*chain, (data, arrays)] if delta else [(data, arrays)]
            if rng.random() < 0.5:  # a restart: the chain is all there is
                current = Joiner(30.0, 300)
                current.restore(chain)
                assert current.contents() == whole_contents_at(stream[:i + 1], 30.0, 300)
                assert _queued(current) == list(current._slot)  # slot → id, None where removed
    assert got == expected
    assert current.contents() == whole.contents()


def _queued(j: Joiner) -> list[str | None]:
    """The pending ids as the slots hold them from the head on (the order expiry and eviction
    take), oldest first."""
    return [eid for eid in j._ids[j._head:] if eid is not None]


def test_the_order_queues_hold_the_dicts_order_and_stay_bounded() -> None:
    """Expiry and eviction take the oldest entry from a queue beside each dict (O(1), where a
    dict's first key costs a scan over what was deleted from its front): the queues list exactly
    the dicts' keys in their order, and joined entries left in the pending queue are bounded,
    before and after a restore."""
    rng = random.Random(5)
    stream, waiting = [], []
    for i in range(40_000):  # most predictions are labelled a little later, some never
        stream.append(pred(f"p{i}", i * 0.01))
        if rng.random() < 0.8:
            waiting.append((i + rng.randrange(1, 400), f"p{i}"))
        waiting.sort()
        while waiting and waiting[0][0] <= i:
            stream.append(fb(waiting.pop(0)[1], i * 0.01))
    stream += random_stream(5, 5000)  # repeats, out of order, gaps
    # a short TTL and a small capacity (the front moves: expiry, eviction), then none at all (the
    # front stays put behind a prediction never labelled: joined entries pile up behind it)
    for ttl, cap in ((3.0, 300), (1e9, 10**6)):
        j = Joiner(ttl, cap)
        for i, ev in enumerate(stream):
            j.add(ev)
            if i % 997 == 0:
                assert _queued(j) == list(j._slot) and list(j._done_order) == list(j._done)
                assert len(j._ids) - j._head <= 2 * j.pending + 4096
            if i == 50_000:
                data, arrays = j.state()
                j = Joiner(ttl, cap)
                j.restore([(data, arrays)])
                assert _queued(j) == list(j._slot) and list(j._done_order) == list(j._done)
        s = j.stats
        assert s.joined > 15_000
        if cap == 300:
            assert s.evicted and s.expired_unlabelled  # every way out of the queue was taken


def whole_contents_at(events: list[Event], ttl: float, max_pending: int) -> dict:
    j = EventJoiner(ttl, max_pending)
    for ev in events:
        j.add(ev)
    return j.contents()


def test_a_delta_only_restores_on_the_state_it_continues() -> None:
    j = Joiner(100.0, 1000)
    j.add(pred("a", 1))
    full = j.state()
    j.add(pred("b", 2))
    first = j.state(delta=True)
    j.add(fb("a", 3))
    second = j.state(delta=True)
    fresh = Joiner(100.0, 1000)
    fresh.restore([full, first, second])
    assert fresh.contents() == j.contents()
    with pytest.raises(ValueError, match="does not continue"):
        Joiner(100.0, 1000).restore([full, second])  # the increment between them is missing
    with pytest.raises(ValueError, match="no full snapshot"):
        Joiner(100.0, 1000).restore([first, second])
    again = j.state()  # a new full state: the next increment continues it, not the old chain
    j.add(pred("c", 4))
    third = j.state(delta=True)
    with pytest.raises(ValueError, match="does not continue"):
        Joiner(100.0, 1000).restore([full, first, second, third])
    fresh = Joiner(100.0, 1000)
    fresh.restore([full, first, second, again, third])  # anything before the last full state is ignored
    assert fresh.contents() == j.contents()


def test_a_chain_whose_codes_name_no_context_is_refused() -> None:
    j = Joiner(100.0, 1000)
    j.add(pred("a", 1))
    full = j.state()
    j.add(pred("b", 2, request="q"))
    data, arrays = j.state(delta=True)
    damaged = {**arrays, "code": arrays["code"] + 5}
    with pytest.raises(ValueError, match="context codes"):
        Joiner(100.0, 1000).restore([full, (data, damaged)])
    fresh = Joiner(100.0, 1000)
    fresh.restore([full, (data, arrays)])
    assert fresh.contents() == j.contents()


def test_the_context_table_stays_bounded_with_per_request_attributes() -> None:
    j = Joiner(1e6, 1000)
    j.state()
    for i in range(20_000):
        j.add(Event("prediction", f"p{i}", float(i), "m", None, {"request": f"q{i}"}, "x", None, None, None))
        if i >= 50:
            out = j.add(Event("feedback", f"p{i - 50}", float(i), None, None, {}, None, "y", None, None))
            assert out.attributes == {"request": f"q{i - 50}"}
    assert j.pending == 50 and len(j._ctx) <= 2 * j.pending + 4096
    part = j.state(delta=True)  # the table was compacted (codes changed): a full state instead
    assert part[0]["kind"] == "full"
    fresh = Joiner(1e6, 1000)
    fresh.restore([part])
    assert fresh.contents() == j.contents()


def test_more_than_2_16_attribute_combinations_pending() -> None:
    """Context codes take 2 bytes each until the table outgrows them, then 4: the join and its
    checkpoints (a full state taken before, an increment after) are the same either side."""
    n = (1 << 16) + 1000
    j = Joiner(1e9, 10 * n)
    for i in range(n):
        j.add(pred(f"p{i}", i, request=f"q{i}"))
        if i == n // 2:
            full = j.state()
    assert j._code.itemsize == 4
    delta = j.state(delta=True)
    assert delta[0]["kind"] == "delta"
    fresh = Joiner(1e9, 10 * n)
    fresh.restore([full, delta])
    assert fresh.contents() == j.contents()
    for k in (0, n - 1):
        out = fresh.add(fb(f"p{k}", n))
        assert out is not None and out.attributes == {"request": f"q{k}"}


def test_memory_per_pending_classifier_prediction() -> None:
    """Decoded classifier predictions (id, score output, three shared attributes) kept in the
    join, measured as ``lastmile bench`` measures ASR predictions: at most 300 bytes each."""
    decode = Decoder(EventsConfig()).decode
    rng = random.Random(5)
    lines = [msgspec.json.encode({"type": "prediction", "id": f"req-{i:010d}", "ts": 1795514400.0 + i * 0.01,
                                  "model": "credit", "tenant": f"bank-{i % 5}",
                                  "attributes": {"age_band": rng.choice(["18-25", "26-40", "41-65", "65+"]),
                                                 "gender": rng.choice(["female", "male"]),
                                                 "region": rng.choice(["north", "south", "east", "west"])},
                                  "output": rng.choice([0, 1])})
             for i in range(100_000)]
    joiner = Joiner(7 * 86400, 1_000_000)
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for line in lines:
            joiner.add(decode(line))
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        tracemalloc.stop()
    per = used / joiner.pending
    print(f"{per:.0f} bytes per pending classifier prediction")
    assert joiner.pending == 100_000 and per <= 300, per


@pytest.mark.slow
def test_memory_per_pending_asr_prediction_is_what_the_readme_states() -> None:
    """``lastmile bench``'s own measurement (100,000 pending ASR predictions, ~15 words of text,
    id and text included): at most 300 bytes each, the figure the README gives."""
    from monitor.bench import memory_per_pending
    from monitor.demo import builtin_config
    from monitor.simulate import SpeechScenario

    lines = list(SpeechScenario(outcomes=110_000, seed=1, malformed=0.0).events())
    per, pending = memory_per_pending(builtin_config(), lines)
    assert pending == 100_000 and per <= 300, per
