"""The engine: events → joined outcomes → per-slice estimates → drift and disparity alerts.

Data flows one way. :meth:`Engine.feed` takes raw event bytes (or decoded events), counts
and skips invalid ones, joins predictions with feedback, scores each outcome and routes it to
its slices; outcomes are buffered and handed to the compiled :mod:`monitor.kernel` in
batches. Alert transitions come back in event order. Nothing here does I/O: replay, the
demo and the Kafka daemon feed it and publish what it returns.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
from collections import Counter
from itertools import chain
from operator import attrgetter
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import msgspec
import numpy as np

from monitor import rows as K
from monitor.compiled import kernel, preload
from monitor.alerts import Alert, fingerprint
from monitor.bounty import Batch, BountyBook, Hypothesis
from monitor.baselines import Baselines, Lineage
from monitor.config import PINNED_DIMENSION, Config, DecisionConfig, ReferenceOutcomes, ReferenceTime
from monitor.edetector import LAMBDAS
from monitor.events import Decoder, Event, InvalidEvent, parse_ts
from monitor.future import FutureGuard
from monitor.held import HeldOutcomes
from monitor.join import Joiner, Outcome
from monitor.scoring import Scorer
from monitor.rows import F
from monitor.predicate import Tree, to_text
from monitor.slices import SliceIndex, SliceKey
from monitor.submissions import Submission, parse_submission

log = logging.getLogger("lastmile")

_OUT_CAPACITY = 4096
_JOIN_RUN = 1024  # events feed_many joins together
_ROW_BLOCK = 64  # slice rows an incremental checkpoint writes together (when any of them changed)
_KINDS = ("drift", "disparity")
_OTHER_KIND = {"drift": "disparity", "disparity": "drift"}
_OWN = (K.Source.FILE, K.Source.REFERENCE)
_KIND, _TS = attrgetter("kind"), attrgetter("ts")


class Provenance(NamedTuple):
    source: str | None  # "file" | "reference" | "inherited" | None (no baseline yet, or none)
    ancestor: dict[str, str] | None  # inherited: the slice it came from
    first_seen: float | None  # a new slice (first seen after its model's reference period): when


def decision_enabled(cfg: Config, kind: str) -> bool:
    """Is drift / disparity decided for some model (globally or by a per-model override)?"""
    if kind == "drift" and cfg.baseline.source == "none":
        return False  # nothing to drift from
    overrides = (getattr(o, kind) for o in cfg.models.values())
    return getattr(cfg, kind).enabled or any(d is not None and d.enabled for d in overrides)


def detectors_per_outcome(cfg: Config) -> int:
    """How many detector increments one outcome can cause: what the false-alarm budget divides by."""
    combos = 1 + sum(1 for c in cfg.slices.combinations if c)
    metrics = len(cfg.metrics.names)
    per = 0
    if decision_enabled(cfg, "drift"):
        per += combos * metrics
    if decision_enabled(cfg, "disparity"):
        per += (combos - 1) * metrics
    return max(per, 1)


def pinned_detectors(cfg: Config) -> int:
    """Detector increments per outcome one pinned group (a confirmed bias bounty) can cause."""
    if not cfg.submissions.pin:
        return 0
    return len(cfg.metrics.names) * (int(decision_enabled(cfg, "drift")) + int(decision_enabled(cfg, "disparity")))


def thresholds(cfg: Config) -> tuple[float, float, float]:
    """(fire, resolve, pinned fire) thresholds h = ln(ARL) from the stated false-alarm budget.

    Each detector increment may raise a false alarm with long-run frequency ≤ e^-h, and one
    outcome causes at most ``detectors_per_outcome`` increments in the declared slices, plus
    ``pinned_detectors`` in each of at most ``submissions.max_pinned`` pinned groups. With
    ``ARL = (detectors_per_outcome + pinned_detectors) × 10^6 / false_alarms_per_million`` for a
    declared slice and ``ARL × max_pinned`` for a pinned one, the expected number of false alerts
    per million outcomes of a model, over all its slices, stays within the budget.
    """
    arl = (detectors_per_outcome(cfg) + pinned_detectors(cfg)) * 1e6 / cfg.alerting.false_alarms_per_million
    resolve_arl = cfg.alerting.resolve_arl or arl
    return math.log(arl), math.log(resolve_arl), math.log(arl * cfg.submissions.max_pinned)


class Engine:
    """The engine; with ``ordered``, joined outcomes are held and reach the detectors in event-time
    order, (ts, id), as the caller's watermark passes them (:meth:`release`): replay and the daemon
    then see the same sequence however files were split or partitions interleaved."""

    def __init__(self, cfg: Config, baselines: Baselines | None = None, ordered: bool = False,
                 wall_clock: Callable[[], float] | None = None):
        """``wall_clock``: event times are bounded by it (the daemon); without it, by the stream's
        robust watermark (replay). See :mod:`monitor.future`."""
        preload()  # the compiled kernel loads while the first events are decoded, joined and routed
        self.cfg = cfg
        self.ordered = ordered
        self._held = HeldOutcomes()  # outcomes awaiting release
        #: heap of submissions awaiting release: they register in event-time order among the outcomes
        self._held_subs: list[tuple[float, str, str, int, Submission]] = []  # (ts, submitter, id, seq, ·)
        self._sub_seq = 0
        self.last_event_ts: float | None = None  # of the last valid event of the last feed_many
        self.scorer = Scorer(cfg.metrics)
        self.decoder = Decoder(cfg.events, unscorable=self.scorer.unscorable, submission=self._parse_submission,
                               text_scorable=self.scorer.text_scorable)
        self.future = FutureGuard(cfg.events.max_future, wall_clock)
        self.joiner = Joiner(cfg.join.ttl, cfg.join.max_pending)
        self.slices = SliceIndex(cfg.slices)
        self.slices.busy = self._busy
        self.slices.before_admission = self._flush_before_admission
        self.slices.outcome_counts = self._slice_outcomes
        self._early: list[Alert] = []  # alerts of a flush made while routing, handed out next
        #: own learned baselines of retired slices (key → first seen, baseline per metric): a value
        #: that fades and comes back keeps what it learned in the reference period
        self._remembered: dict[tuple[str, int, tuple[str, ...]], tuple[float, list[float]]] = {}
        self.lineage = Lineage(self.slices.combos)
        self.metrics = tuple(cfg.metrics.names)
        self.bounty = BountyBook(self.slices.dimensions, self.metrics, cfg.submissions.alpha,
                                 cfg.submissions.min_outcomes, cfg.error_cap(), cfg.metrics.max_units_per_outcome,
                                 baseline=self._group_baseline, reference_closed=self._model_reference_closed,
                                 population=lambda model: self.slices.find(model, 0, ()))
        proposals = cfg.slices.proposals
        self._propose_every = proposals.every if proposals.enabled else 0
        # for the submissions' tests, while any is pending: prediction times and watched groups
        self._tracking = False
        self._buf_pred: list[float] = []
        self._buf_watch: list[tuple[int, ...]] = []
        if baselines is None and cfg.baseline.source == "file" and cfg.baseline.file:
            baselines = Baselines.load(cfg.resolve_path(cfg.baseline.file), cfg.primary_metric)
        self.baselines = baselines
        self.events: Counter[str] = Counter()  # valid events by kind
        self.invalid: Counter[str] = Counter()  # invalid events by reason
        self.outcomes = 0
        self.watermark = float("-inf")
        self.h_fire, self.h_resolve, self.h_pinned = thresholds(cfg)
        self.lambdas = np.array(LAMBDAS, dtype=np.float64)
        self.params = self._params()
        self.st, self.det = K.new_rows(0, len(LAMBDAS))
        self._rows_ready = 0
        self._row_digests: list[bytes] | None = None  # of the rows as last checkpointed (see state())
        self._buf_rows: list[list[int]] = []
        self._buf_eu: list[tuple[float, ...]] = []  # (errors, units) of each metric, flat
        self._buf_ts: list[float] = []
        self.active: dict[str, Alert] = {}  # fingerprint → firing alert
        self._out = (np.zeros(_OUT_CAPACITY, np.int64), np.zeros(_OUT_CAPACITY, np.int64),
                     np.zeros(_OUT_CAPACITY, np.int64), np.zeros(_OUT_CAPACITY, np.int64),
                     np.zeros((_OUT_CAPACITY, 3), np.float64))

    # ---- setup -------------------------------------------------------------------------------
    @property
    def is_new(self) -> bool:
        """Nothing has been fed to it yet, so :meth:`reset` would lose nothing."""
        return not (self.events or self.invalid or self.outcomes or self.joiner.pending or self._held
                    or self._held_subs or self.future.seen or self.active)

    def reset(self) -> None:
        """Back to a new engine's state, with the same settings (replay's in-order attempt gave up)."""
        Engine.__init__(self, self.cfg, self.baselines, self.ordered, self.future.wall_clock)

    def _params(self) -> np.ndarray:
        cfg = self.cfg
        p = np.zeros(K.NPARAMS, dtype=np.float64)
        p[K.P.CAP] = cfg.error_cap()
        p[K.P.UMAX] = cfg.metrics.max_units_per_outcome
        p[K.P.GAMMA] = 1.0 - 1.0 / cfg.slices.window
        p[K.P.HR] = self.h_resolve
        p[K.P.RESOLVE] = cfg.alerting.resolve_fraction
        ref = cfg.baseline.reference
        if cfg.baseline.source == "none" or (cfg.baseline.source == "file" and not cfg.baseline.fallback_to_reference):
            p[K.P.REFMODE] = K.Ref.NONE
        elif isinstance(ref, ReferenceOutcomes):
            p[K.P.REFMODE] = K.Ref.OUTCOMES
            p[K.P.REFN] = ref.outcomes
        else:
            assert isinstance(ref, ReferenceTime)
            p[K.P.REFMODE] = K.Ref.TIME
            p[K.P.REFSTART] = parse_ts(ref.start)
            p[K.P.REFEND] = parse_ts(ref.end)
        p[K.P.DRIFT] = 1.0 if decision_enabled(cfg, "drift") else 0.0
        p[K.P.DISP] = 1.0 if decision_enabled(cfg, "disparity") else 0.0
        return p

    def decision(self, model: str, kind: str) -> DecisionConfig:
        override = self.cfg.models.get(model)
        dec = getattr(override, kind, None) if override else None
        return dec or getattr(self.cfg, kind)

    def _init_rows(self) -> None:
        """Give every newly tracked slice its rows (one per metric) with its settings and, where it
        can have one already, its baseline."""
        n_metrics = len(self.metrics)
        needed = len(self.slices) * n_metrics
        if needed > self.st.shape[0]:
            grow = max(needed, 2 * self.st.shape[0], 64)
            st, det = K.new_rows(grow, len(LAMBDAS))
            st[: self.st.shape[0]] = self.st
            det[: self.det.shape[0]] = self.det
            self.st, self.det = st, det
        cfg = self.cfg
        first = self._rows_ready // n_metrics
        reused = [sid for sid in self.slices.take_reused() if sid < first]
        if reused:  # ids of retired slices, given to new ones: their rows start afresh
            blank_st, blank_det = K.new_rows(1, len(LAMBDAS))
            rows = np.array([sid * n_metrics + m for sid in reused for m in range(n_metrics)], dtype=np.int64)
            self.st[rows], self.det[rows] = blank_st[0], blank_det[0]
        fresh = [*reused, *range(first, len(self.slices))]
        for sid in fresh:
            key = self.slices.keys[sid]
            if key.combo < 0:
                continue  # retired again before any outcome reached it
            desc = self.slices.describe(sid)
            override = cfg.models.get(key.model)
            drift, disp = self.decision(key.model, "drift"), self.decision(key.model, "disparity")
            min_n = (override.min_samples if override and override.min_samples else None) or cfg.slices.min_samples
            alertable = cfg.alerting.alert_on_overflow or not self.slices.is_overflow(sid)
            remembered = self._remembered.pop((key.model, key.combo, key.values), None)
            for m, metric in enumerate(self.metrics):
                row = self.st[sid * n_metrics + m]
                if remembered is not None:  # a value that faded and came back: not new, its own baseline
                    row[F.FIRST] = remembered[0]
                    if not math.isnan(remembered[1][m]):
                        row[F.BASE], row[F.BSRC] = remembered[1][m], K.Source.REFERENCE
                row[F.MIN_N] = min_n
                row[F.TOL_D] = drift.tolerance
                row[F.REL_D] = drift.relative_tolerance
                row[F.TOL_P] = disp.tolerance if disp.enabled else -1.0
                row[F.REL_P] = disp.relative_tolerance
                row[F.ALERTABLE] = 1.0 if alertable else 0.0
                row[F.H] = self.h_pinned if key.combo == self.slices.pin_combo else self.h_fire
                given = self.baselines.lookup(key.model, desc, metric) if self.baselines is not None else None
                if not drift.enabled or cfg.baseline.source == "none":
                    row[F.BSRC] = K.Source.NONE
                elif given is not None:
                    row[F.BASE] = given
                    row[F.BSRC] = K.Source.FILE
        self._rows_ready = len(self.slices) * n_metrics
        # slices first seen after their model's reference period (or with none) inherit at once
        self._inherit(sid for sid in fresh if self.slices.keys[sid].combo >= 0 and self._reference_closed(sid))

    def _busy(self, sid: int) -> bool:
        """A slice with an alert firing: its values keep their place (see :mod:`monitor.admission`)."""
        n_metrics = len(self.metrics)
        rows = self.st[sid * n_metrics: min((sid + 1) * n_metrics, self._rows_ready)]
        return bool((rows[:, F.DSTATE] > 0).any() or (rows[:, F.PSTATE] > 0).any())

    def _slice_outcomes(self) -> np.ndarray:
        """Outcomes each slice id has received (the most of any metric's row): what admission of
        whole slices compares. Rows of reused ids are reset first, so a new slice starts at 0."""
        self._init_rows()
        n, n_metrics = len(self.slices), len(self.metrics)
        return self.st[: n * n_metrics, F.N].reshape(n, n_metrics).max(axis=1)

    def _settle(self, ts: float) -> list[Alert]:
        """After a batch: retired slices' ids become reusable, and their own learned baselines are
        remembered. One still firing is resolved, as it is no longer tracked: that can only happen
        when routes were computed ahead of the detectors (simulations calling
        :meth:`process_scored`); through :meth:`feed_many` a firing value is never retired."""
        alerts: list[Alert] = []
        n_metrics = len(self.metrics)
        for sid, key in self.slices.settle():
            desc = self.slices.describe_key(key)
            rows = self.st[sid * n_metrics: (sid + 1) * n_metrics]
            if (rows[:, F.BSRC] == K.Source.REFERENCE).any():
                self._remembered[(key.model, key.combo, key.values)] = (
                    float(rows[0, F.FIRST]), [float(b) if src == K.Source.REFERENCE else math.nan
                                              for b, src in zip(rows[:, F.BASE], rows[:, F.BSRC])])
            for m, metric in enumerate(self.metrics):
                row = self.st[sid * n_metrics + m]
                for slot, (kind, field) in enumerate((("drift", F.DSTATE), ("disparity", F.PSTATE))):
                    firing = self.active.pop(fingerprint(key.model, desc, kind, metric), None)
                    if row[field] > 0:  # stopped firing: its slot restarts, as at a transition (rows.DETECTOR_SLOTS)
                        row[field] = 0.0
                        self.det[sid * n_metrics + m, slot] = 0.0
                    if firing is not None:
                        alerts.append(Alert.make(kind, "resolved", key.model, desc, metric, firing.value,
                                                 firing.reference, firing.n, ts, firing.tolerance,
                                                 baseline_source=firing.baseline_source,
                                                 baseline_from=firing.baseline_from,
                                                 explained_by=firing.explained_by, incident=firing.incident))
        return alerts

    def _ancestors(self, sid: int) -> list[list[tuple[int, tuple[str, ...]]]]:
        """The slice's tracked ancestors, nearest first (a pinned group's: the slices containing it)."""
        key = self.slices.keys[sid]
        if key.combo == self.slices.pin_combo:
            return self.slices.pinned_ancestors(sid)
        return self.lineage.ancestors(key.combo, key.values)

    def _reference_closed(self, sid: int) -> bool:
        if self.params[K.P.REFMODE] == K.Ref.NONE:
            return True
        pop = self.slices.find(self.slices.keys[sid].model, 0, ()) * len(self.metrics)
        return pop < self._rows_ready and not math.isnan(self.st[pop, F.MREF_CLOSED])

    def _close_reference(self, model_row: int) -> None:
        """The model's reference period is over: slices with enough reference outcomes get their own
        baseline (estimate + margin); every other slice of the model inherits one."""
        n_metrics = len(self.metrics)
        model = self.slices.keys[model_row // n_metrics].model
        sids = [sid for sid, key in enumerate(self.slices.keys) if key.model == model]
        rows = np.array([sid * n_metrics + m for sid in sids for m in range(n_metrics)], dtype=np.int64)
        st = self.st[rows]
        learn = (st[:, F.BSRC] == K.Source.PENDING) & (st[:, F.RN] >= self.cfg.baseline.min_outcomes) & (st[:, F.RU] > 0)
        # a pinned group was confirmed worse than it should be: it never learns that as its baseline
        learn &= np.repeat([self.slices.keys[sid].combo != self.slices.pin_combo for sid in sids], n_metrics)
        ru = np.where(learn, st[:, F.RU], 1.0)
        rate = st[:, F.RE] / ru
        ss = st[:, F.RE2] - 2.0 * rate * st[:, F.REU] + rate * rate * st[:, F.RU2]
        se = np.sqrt(np.maximum(ss, 0.0)) / ru
        base = np.minimum(rate + self.cfg.baseline.margin_sigmas * se, self.params[K.P.CAP])
        st[learn, F.BASE] = base[learn]
        st[learn, F.BSRC] = K.Source.REFERENCE
        self.st[rows] = st
        self._inherit(sids)

    def _inherit(self, sids: Iterable[int]) -> None:
        """Rows still without a baseline take the largest own baseline (file or reference) among
        their nearest ancestors that have one; none anywhere up to the population: no drift test."""
        n_metrics = len(self.metrics)
        st, keys = self.st, self.slices.keys
        for sid in sids:
            key = keys[sid]
            for m in range(n_metrics):
                row = st[sid * n_metrics + m]
                if row[F.BSRC] != K.Source.PENDING:
                    continue
                row[F.BSRC] = K.Source.NONE
                for level in self._ancestors(sid):
                    best, best_sid = -1.0, -1
                    for combo, values in level:
                        a = self.slices.find(key.model, combo, values)
                        if a < 0:
                            continue
                        arow = st[a * n_metrics + m]
                        if arow[F.BSRC] in _OWN and arow[F.BASE] > best:
                            best, best_sid = arow[F.BASE], a
                    if best_sid >= 0:
                        row[F.BASE], row[F.BSRC], row[F.BANC] = best, K.Source.INHERITED, best_sid
                        break

    # ---- input -------------------------------------------------------------------------------
    def feed(self, raw: bytes | str) -> list[Alert]:
        """One raw event (a JSON object); invalid ones are counted by reason and skipped."""
        return self.feed_many((raw,))

    def feed_many(self, raws: Iterable[bytes | str],
                  on_invalid: Callable[[int, str], None] | None = None, submissions: bool = True) -> list[Alert]:
        """Many raw events (the daemon's hot path): decoded a batch at a time, screened, and joined
        and scored a run at a time (:meth:`feed_events`' bookkeeping is inlined here).

        ``on_invalid(index, reason)`` hears of each rejected event (the daemon dead-letters it).
        ``submissions``: whether these raws may carry bias-bounty submissions (the daemon accepts
        them only from the submissions topic, which only the authenticated API writes to).
        """
        alerts: list[Alert] = []
        invalid, events, join = self.invalid, self.events, self.joiner.add_many
        watermark, last_ts = self.watermark, None
        future = self.future
        wall_bound = future.wall_bound() if future.wall_clock is not None else None
        # valid events are joined a run at a time, and the outcomes go on to scoring and the
        # detectors a run at a time, in order: anything that must come after them (a submission,
        # events let through by the screen) sends both runs first
        run: list[Event] = []
        joined: list[Outcome] = []
        for i, ev in enumerate(self.decoder.decode_stream(raws)):
            if isinstance(ev, InvalidEvent):
                invalid[ev.reason] += 1
                if on_invalid is not None:
                    on_invalid(i, ev.reason)
                continue
            if type(ev) is Submission:
                if submissions:
                    alerts += self._accept_many(joined + join(run))
                    joined, run = [], []
                    alerts += self._accept_submission(ev)
                else:
                    invalid["bad_submission"] += 1
                    if on_invalid is not None:
                        on_invalid(i, "bad_submission")
                continue
            ts = ev.ts
            if wall_bound is not None:
                if ts > wall_bound:
                    invalid["future_timestamp"] += 1
                    if on_invalid is not None:
                        on_invalid(i, "future_timestamp")
                    continue
            elif future.held or ts > future.bound:
                alerts += self._accept_many(joined + join(run))
                joined, run = [], []
                self.last_event_ts = last_ts
                for moved in self.screen(ev):  # often none: held for now, or rejected
                    alerts += self.feed_event(moved)
                last_ts, watermark = self.last_event_ts, self.watermark
                continue
            else:
                future.note(ts)
            events[ev.kind] += 1
            last_ts = ts
            if ts > watermark:
                watermark = self.watermark = ts
            run.append(ev)
            if len(run) >= _JOIN_RUN:
                joined += join(run)
                run = []
        self.last_event_ts = last_ts
        return alerts + self._accept_many(joined + join(run))

    def screen(self, ev: Event | Submission) -> list[Event | Submission]:
        """The events that may go on now, by :mod:`monitor.future`'s bound on event time: usually
        ``[ev]``; none when ``ev`` is too far ahead (rejected as ``future_timestamp``, or held);
        a held run, in arrival order, when the stream has really moved there. Judged in arrival
        order (:meth:`feed_many` does it; replay before it sorts by event time)."""
        future = self.future
        if not isinstance(ev, Event):  # a submission: not screened, it moves no watermark
            return [ev]
        if future.wall_clock is not None:
            if ev.ts <= future.wall_bound():
                return [ev]
            self.invalid["future_timestamp"] += 1
            return []
        if not future.held and ev.ts <= future.bound:
            future.note(ev.ts)
            return [ev]
        gone, rejected = future.judge(ev)
        if rejected:
            self.invalid["future_timestamp"] += rejected
        return list(gone)

    def screen_end(self) -> list[Event | Submission]:
        """End of input: events still held by :meth:`screen` go on or are rejected."""
        gone, rejected = self.future.drain()
        if rejected:
            self.invalid["future_timestamp"] += rejected
        return list(gone)

    def feed_event(self, ev: Event | Submission) -> list[Alert]:
        """One decoded event that passed :meth:`screen`."""
        return self.feed_events([ev])

    def feed_events(self, items: list[Event | Submission]) -> list[Alert]:
        """Decoded events that passed :meth:`screen`, in order (replay's hot path): the events
        between submissions are joined as one run."""
        alerts: list[Alert] = []
        start = 0
        subs = [i for i, x in enumerate(items) if type(x) is Submission] if Submission in set(map(type, items)) else []
        for end in [*subs, len(items)]:
            run: list[Event] = items[start:end] if start or end < len(items) else items  # type: ignore[assignment]
            if run:
                self.events.update(map(_KIND, run))
                top = max(map(_TS, run))
                if top > self.watermark:
                    self.watermark = top
                self.last_event_ts = run[-1].ts
                alerts += self._accept_many(self.joiner.add_many(run))
            if end < len(items):
                alerts += self._accept_submission(items[end])  # type: ignore[arg-type]
            start = end + 1
        return alerts

    def screen_many(self, items: list[Event | Submission]) -> list[Event | Submission]:
        """:meth:`screen` of each, in order, and the events that may go on now (in replay). The
        common case in bulk: nothing held, and every time within the bound as the stream's latest
        time moves (each event's bound is the latest before it plus ``max_future``)."""
        future = self.future
        if future.wall_clock is not None or future.held or not items or Submission in set(map(type, items)):
            return [x for item in items for x in self.screen(item)]
        times = np.fromiter(map(_TS, items), dtype=np.float64, count=len(items))
        latest = np.maximum.accumulate(times)
        bounds = np.empty_like(times)
        bounds[0] = future.bound
        np.maximum(latest[:-1], future.top, out=bounds[1:])
        bounds[1:] += future.max_future  # (the same sum note() makes)
        beyond = np.flatnonzero(times > bounds)
        ok = int(beyond[0]) if beyond.size else len(items)
        if ok:
            future.seen += ok
            if latest[ok - 1] > future.top:
                future.top = float(latest[ok - 1])
                future.bound = future.top + future.max_future
        if ok == len(items):
            return items
        return items[:ok] + [x for item in items[ok:] for x in self.screen(item)]

    def _accept_many(self, outcomes: list[Outcome]) -> list[Alert]:
        """Joined outcomes, in order: held for event-time order, or on to the detectors now."""
        if not outcomes:
            return []
        if self.ordered:
            self._held.add(outcomes)
            return []
        return self.add_outcomes(outcomes)

    def release(self, upto: float, final: bool = False) -> list[Alert]:
        """Held outcomes with event time before ``upto`` go on to the detectors, in (ts, id) order.

        The caller promises that no outcome earlier than ``upto`` is still to come (a watermark).
        Held submissions register in the same order, before the outcomes of their time, once an
        event at or after their time has been read (or at the end of input: ``final``); a
        submission's deadline is decided before anything later goes through. So what a test
        counts, and the discoveries made before each submission, are fixed by event time alone.
        """
        alerts: list[Alert] = []
        held, subs, book = self._held, self._held_subs, self.bounty
        sub_upto = upto if final else min(upto, self.watermark)
        if not subs and book.next_deadline >= upto:  # the usual case: outcomes only
            return self.add_outcomes(held.take_before(upto))
        while True:
            t_o = held.first_ts()
            if t_o >= upto:
                t_o = math.inf
            t_s = subs[0][0] if subs and subs[0][0] < sub_upto else math.inf
            t = min(t_o, t_s)
            if t == math.inf:
                break
            if t > book.next_deadline:
                alerts += self.expire_submissions(t)
            if t_s <= t_o:
                alerts += self._submit(heapq.heappop(subs)[-1])
            else:
                alerts += self.add_outcome(held.pop())
        return alerts

    def drain(self) -> list[Alert]:
        """Everything held and buffered through the detectors (end of input), events held for
        their time (:meth:`screen_end`) first."""
        alerts: list[Alert] = []
        for ev in self.screen_end():
            alerts += self.feed_event(ev)
        alerts += self.release(math.inf, final=True) + self.flush()
        for h in self.bounty.expire(self.watermark):
            self._pin(h)
        self._after_verdicts()
        return alerts + self.bounty.take_confirmations()

    @property
    def held(self) -> int:
        return len(self._held)

    @property
    def held_submissions(self) -> int:
        return len(self._held_subs)

    def add_outcome(self, o: Outcome) -> list[Alert]:
        return self.add_outcomes([o])

    def add_outcomes(self, outcomes: list[Outcome]) -> list[Alert]:
        """Joined outcomes, in order, on to the detectors: scored as a run, then routed and
        buffered one by one (routing may flush the buffer: an admission is decided on the state
        every earlier outcome left)."""
        alerts: list[Alert] = []
        route = self.slices.route_with_groups
        batch_size, propose_every = self.cfg.replay.batch_size, self._propose_every
        # (flush empties the buffers in place: these stay the engine's)
        buf_rows, buf_eu, buf_ts, buf_pred, buf_watch = \
            self._buf_rows, self._buf_eu, self._buf_ts, self._buf_pred, self._buf_watch
        unscorable = 0
        for o, scores in zip(outcomes, self.scorer.score_many(outcomes)):
            if scores is None:
                unscorable += 1
                continue
            self.outcomes += 1
            rows, watched = route(o.model, o.tenant, o.attributes)  # first: it may flush
            buf_rows.append(rows)
            if self._tracking:  # (changes only when the buffers are empty, so the lists stay aligned)
                buf_pred.append(o.pred_ts if o.pred_ts is not None else o.ts)
                buf_watch.append(watched)
            buf_eu.append(scores)
            buf_ts.append(o.ts)
            if self._early:  # from a flush routing asked for (admission)
                alerts += self._early
                self._early = []
            if propose_every and self.outcomes % propose_every == 0:  # a point fixed by the data
                alerts += self.flush() + self._propose(o.ts)
            elif len(buf_ts) >= batch_size:
                alerts += self.flush()
        if unscorable:
            self.invalid["unscorable"] += unscorable
        return alerts

    # ---- bias-bounty submissions ------------------------------------------------------------
    def expire_submissions(self, upto: float) -> list[Alert]:
        """Decide submissions whose deadline is before ``upto`` (no outcome earlier than it is still
        to come)."""
        if not self.bounty.pending or not math.isfinite(upto):
            return []
        alerts = self.flush()
        for h in self.bounty.expire(upto):
            self._pin(h)
        self._after_verdicts()
        return alerts + self.bounty.take_confirmations()

    def _parse_submission(self, obj: Any) -> Submission:
        models = self.cfg.events.models
        return parse_submission(obj, dimensions=self.slices.dimensions, metrics=self.metrics, cap=self.cfg.error_cap(),
                                models=frozenset(models) if models is not None else None)

    def _accept_submission(self, sub: Submission) -> list[Alert]:
        """A valid submission: with ``ordered``, held to register in event-time order, after every
        outcome earlier than its time and before every later one, so that its e-LOND level (the
        discoveries before it) and what it counts do not depend on when it was read."""
        self.events["submission"] += 1
        if self.ordered:
            self._sub_seq += 1  # (orders exact duplicates, which the book then merges)
            heapq.heappush(self._held_subs, (sub.ts, sub.submitter, sub.id, self._sub_seq, sub))
            return []
        return self._submit(sub)

    def _submit(self, sub: Submission) -> list[Alert]:
        """A submission joins the tests after every outcome routed before it has gone through
        (so its e-LOND level does not depend on batch sizes); outcomes predicted before it never
        count for it."""
        alerts = self.flush()
        h = self.bounty.submit(sub)
        if h.status == "pending" and h.watch < 0:
            h.watch = self.slices.watch(sub.model, sub.group)
        self._tracking = bool(self.bounty.pending)  # the buffers are empty: the lists start aligned
        self._after_verdicts()
        return alerts

    def _propose(self, ts: float) -> list[Alert]:
        """The best-ranked untracked groups become submissions of lastmile's own, tested only on
        outcomes predicted after now (:mod:`monitor.proposals`)."""
        from monitor.proposals import SUBMITTER, candidates
        from monitor.table import slice_rows

        cfg = self.cfg.slices.proposals
        tracked = {frozenset(self.slices.dimensions[d] for d in combo) for combo in self.slices.combos}
        alerts: list[Alert] = []
        for model, metric, tree in candidates({"slices": slice_rows(self)}, tracked, cfg.count):
            gap = cfg.min_gap or self.decision(model, "disparity").tolerance
            obj = {"id": "proposal", "ts": math.nextafter(ts, math.inf), "model": model, "submitter": SUBMITTER,
                   "group": tree, "claim": {"kind": "disparity", "metric": metric, "min_gap": gap},
                   "budget": {"max_outcomes": cfg.max_outcomes, "deadline": cfg.deadline}}
            try:
                sub = self._parse_submission(obj)
            except ValueError as exc:  # e.g. a value the predicate language refuses: not proposed
                log.info("not proposed (%s): %s", tree, exc)
                continue
            if sub.hypothesis in self.bounty.hypotheses:
                continue
            alerts += self._submit(dataclasses.replace(sub, id=f"{SUBMITTER}-{sub.hypothesis}"))
        return alerts

    def _model_reference_closed(self, model: str) -> bool:
        """Are the model's baselines settled (its reference period over, or none kept)?"""
        if self.params[K.P.REFMODE] == K.Ref.NONE:
            return True
        pop = self.slices.find(model, 0, ())
        return pop >= 0 and pop * len(self.metrics) < self._rows_ready and self._reference_closed(pop)

    def _group_baseline(self, model: str, group: Tree, metric: str) -> float | None:
        """A submitted group's baseline, as a tracked slice's is inherited: the largest own
        baseline (file or reference) among the nearest tracked slices containing the group."""
        n_metrics, m = len(self.metrics), self.metrics.index(metric)
        for level in self.slices.group_ancestors(group):
            best: float | None = None
            for combo, values in level:
                sid = self.slices.find(model, combo, values)
                value: float | None = None
                if sid >= 0 and sid * n_metrics + m < self._rows_ready:
                    row = self.st[sid * n_metrics + m]
                    if row[F.BSRC] in _OWN:
                        value = float(row[F.BASE])
                elif self.baselines is not None:  # not tracked (yet): the baseline file may still name it
                    value = self.baselines.lookup(model, self.slices.describe_key(SliceKey(model, combo, values)),
                                                  metric)
                if value is not None and (best is None or value > best):
                    best = value
            if best is not None:
                return best
        return None

    def _pin(self, h: Hypothesis) -> int:
        """A confirmed group becomes a tracked slice (``submissions.pin``, up to ``max_pinned``):
        outcomes routed from now on that hold it reach its rows. Returns its id, or -1."""
        sub = self.cfg.submissions
        if not sub.pin or h.watch < 0:
            return -1
        before = self.slices.pinned
        if before >= sub.max_pinned and self.slices.pinned_slice(h.watch) < 0 \
                and self.slices.find_slice(h.sub.model, {PINNED_DIMENSION: to_text(h.sub.group)}) < 0:
            log.warning("submission %s confirmed, but %d groups are pinned already (submissions.max_pinned): "
                        "not tracked as a slice", h.sub.id, before)
            return -1
        sid = self.slices.pin(h.watch)
        self._init_rows()
        return sid if self.slices.pinned > before else -1

    def _after_verdicts(self) -> None:
        """Hypotheses decided since: routing stops telling their group (unless it is pinned)."""
        for h in self.bounty.take_finished():
            if h.watch >= 0 and self.slices.pinned_slice(h.watch) < 0:
                self.slices.unwatch(h.watch)

    def _flush_before_admission(self) -> None:
        """Routing is about to decide an admission: the outcomes buffered so far go through the
        detectors first, so that what is busy (firing) reflects every earlier outcome."""
        self._early += self.flush()

    # ---- the batch ---------------------------------------------------------------------------
    def flush(self) -> list[Alert]:
        """Run the buffered outcomes through the kernel; returns the alert transitions in order."""
        if not self._buf_ts:
            return []
        buf = self._buf_rows
        if self.slices.pinned:  # routes of outcomes in pinned groups are longer: -1 pads the rest
            rows = np.full((len(buf), max(map(len, buf))), -1, dtype=np.int64)
            for i, r in enumerate(buf):
                rows[i, :len(r)] = r
        else:  # (every route as long: one per combination; fromiter is ~2x np.array on a list of lists)
            width = len(buf[0])
            rows = np.fromiter(chain.from_iterable(buf), dtype=np.int64, count=len(buf) * width).reshape(len(buf), width)
        n_eu = 2 * len(self.metrics)
        eu = np.fromiter(chain.from_iterable(self._buf_eu), dtype=np.float64,
                         count=len(self._buf_ts) * n_eu).reshape(len(self._buf_ts), len(self.metrics), 2)
        ts = np.array(self._buf_ts, dtype=np.float64)
        pred, watched = self._buf_pred[:], self._buf_watch[:]
        for buffer in (self._buf_rows, self._buf_eu, self._buf_ts, self._buf_pred, self._buf_watch):
            buffer.clear()  # (in place: add_outcomes holds them)
        if not self._tracking:
            return self.process_scored(rows, eu, ts)
        batch = Batch.build(rows[:, 0].copy(), np.array(pred, dtype=np.float64), ts, eu, watched)
        alerts = self._process_tested(rows, eu, ts, batch)
        self._after_verdicts()
        self._tracking = bool(self.bounty.pending)
        return alerts + self.bounty.take_confirmations()

    def process_scored(self, rows: np.ndarray, eu: np.ndarray, ts: np.ndarray) -> list[Alert]:
        """The batch path on arrays: ``rows[i]`` from :meth:`SliceIndex.route`, ``eu[i, metric] = (errors, units)``.

        Simulations with millions of outcomes use it directly; events reach it through :meth:`flush`.
        """
        self._begin_batch()
        alerts: list[Alert] = []
        pos = 0
        while pos < len(ts):
            part, pos, _ = self._run(rows, eu, ts, pos, len(ts))
            alerts += part
        return alerts + self._settle(float(ts[-1])) if len(ts) else alerts

    def _process_tested(self, rows: np.ndarray, eu: np.ndarray, ts: np.ndarray, batch: Batch) -> list[Alert]:
        """:meth:`process_scored` while submissions are tested: the claims are fed the batch, and
        a group confirmed at one outcome is tracked from the next on (the kernel runs up to there,
        the group's column is added, and it goes on), so where batches end never matters."""
        self._begin_batch()
        pins = self.bounty.advance(batch)
        alerts: list[Alert] = []
        pos, n = 0, len(ts)
        while True:
            stop = pins[0][0] if pins else n
            part, pos, closed = self._run(rows, eu, ts, pos, stop)
            alerts += part
            if closed is not None:  # drift claims waiting for this model's baselines start here
                at = float(self.st[self.slices.find(closed, 0, ()) * len(self.metrics), F.MREF_CLOSED])
                pins = sorted(pins + self.bounty.reference_closed_for(closed, at, batch, pos), key=lambda p: p[0])
                continue
            while pins and pins[0][0] <= pos:
                h = pins.pop(0)[1]
                alerts.append(self.bounty.confirmation(h))  # in event order, after the deciding outcome's
                sid = self._pin(h)  # -1: not pinned, or pinned already (its routes hold it)
                later = batch.members.get(h.watch, np.zeros(0, np.int64))
                later = later[later >= pos]
                if sid >= 0 and later.size:
                    column = np.full((n, 1), -1, dtype=np.int64)
                    column[later, 0] = sid
                    rows = np.hstack([rows, column])
            if pos >= n and not pins:
                break
        return alerts + self._settle(float(ts[-1])) if n else alerts

    def _begin_batch(self) -> None:
        self._init_rows()
        n_metrics = len(self.metrics)
        for sid in self.slices.retiring():  # outcomes routed before its value was retired: counted, never alerted
            self.st[sid * n_metrics: (sid + 1) * n_metrics, F.ALERTABLE] = 0.0

    def _run(self, rows: np.ndarray, eu: np.ndarray, ts: np.ndarray, start: int,
             end: int) -> tuple[list[Alert], int, str | None]:
        """Outcomes ``start..end-1`` through the kernel; stops early when a model's reference period
        closes (returns that model, after setting its baselines) so the caller can act on it."""
        self._init_rows()
        alerts: list[Alert] = []
        room = 2 * rows.shape[1] * len(self.metrics) + 1  # the kernel needs this much before each outcome
        if self._out[0].shape[0] < room:
            self._out = (np.zeros(room, np.int64), np.zeros(room, np.int64), np.zeros(room, np.int64),
                         np.zeros(room, np.int64), np.zeros((room, 3), np.float64))
        out_i, out_row, out_kind, out_state, out_vals = self._out
        process_batch = kernel().process_batch  # (loaded in the background since the engine was made)
        while start < end:
            n_out, start, closed = process_batch(self.st, self.det, rows, eu, ts, self.params, self.lambdas, start,
                                                   end, out_i, out_row, out_kind, out_state, out_vals)
            for j in range(n_out):
                alert = self._alert(int(out_row[j]), int(out_kind[j]), int(out_state[j]), out_vals[j],
                                    float(ts[out_i[j]]))
                alerts.append(alert)
                if alert.state == "resolved":
                    alerts += self._regroup(alert.fingerprint, float(ts[out_i[j]]))
            if closed >= 0:
                self._close_reference(int(closed))
                return alerts, start, self.slices.keys[int(closed) // len(self.metrics)].model
        return alerts, start, None

    # ---- checkpointing -------------------------------------------------------------------------
    def layout(self) -> dict[str, Any]:
        """What the state's shape depends on; a checkpoint only loads into the same layout."""
        return {"metrics": list(self.metrics), "dimensions": list(self.slices.dimensions),
                "combinations": [list(c) for c in self.slices.combos], "lambdas": list(LAMBDAS),
                "fields": [f.name for f in F]}

    def state(self, delta: bool = False) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """Everything needed to continue exactly where this engine is: plain data and arrays.

        Buffered outcomes must have been flushed (their alerts handed out) first. ``delta``: the
        join — the bulk of the state, pending predictions and joined ids — and the slice rows as
        only their changes since the previous ``state()`` or ``restore()`` (an incremental
        checkpoint; rows in blocks of 64, a block written when its digest changed); the rest is
        always whole. Such a state restores on top of the ones before it (``restore``'s ``earlier``).
        """
        if self._buf_ts:
            raise RuntimeError("flush() before taking the engine's state")
        self._init_rows()
        n = self._rows_ready
        join, join_arrays = self.joiner.state(delta)
        data = {
            "layout": self.layout(),
            "models": list(self.decoder.seen_models()),
            "events": dict(self.events), "invalid": dict(self.invalid), "outcomes": self.outcomes,
            "watermark": self.watermark, "rows": n,
            "active": [a.to_dict() for a in self.active.values()],
            "join": join, "slices": self.slices.state(), "future": self.future.state(),
            "bounty": self.bounty.state(),
            "remembered": [[m, c, list(v), first, bases] for (m, c, v), (first, bases) in self._remembered.items()],
            "held": msgspec.msgpack.encode(self._held.outcomes()),
            "held_submissions": [entry[-1].to_dict() for entry in sorted(self._held_subs, key=lambda e: e[:4])],
        }
        st, det, block = self.st[:n], self.det[:n], _ROW_BLOCK
        digests = K.row_digests(st, det, block)
        before = self._row_digests if delta else None
        if before is None:
            arrays = {"st": st.copy(), "det": det.copy()}
        else:
            changed = np.array([b >= len(before) or before[b] != d for b, d in enumerate(digests)], dtype=bool)
            at = np.flatnonzero(np.repeat(changed, block)[:n]).astype(np.int64)
            arrays = {"rows_at": at, "st_at": st[at], "det_at": det[at]}
        self._row_digests = digests  # what the next incremental state is relative to
        arrays.update({f"join.{name}": a for name, a in join_arrays.items()})
        return data, arrays

    def restore(self, data: dict[str, Any], arrays: dict[str, np.ndarray],
                earlier: Iterable[tuple[dict[str, Any], dict[str, np.ndarray]]] = ()) -> None:
        """Continue from ``state()``'s data and arrays. ``earlier``: when they are an incremental
        state, the (data, arrays) of the states before it, oldest first, from the last full one
        (a checkpoint chain: :attr:`monitor.checkpoint.Checkpoint.earlier`)."""
        if data["layout"] != self.layout():
            theirs, ours = data["layout"], self.layout()
            differ = {k: (theirs.get(k), ours[k]) for k in ours if theirs.get(k) != ours[k]}
            if set(differ) <= {"fields", "lambdas"}:
                raise ValueError("the checkpoint was written by a different version of lastmile (its state layout "
                                 f"differs: {sorted(differ)}); move the checkpoint directory aside to start afresh")
            raise ValueError("the checkpoint was taken with a different config: "
                             + "; ".join(f"{k} was {a}, is now {b}" for k, (a, b) in differ.items())
                             + ": they must match to continue (see README, 'Checkpoints')")
        self.decoder.admit(data["models"])
        self.events, self.invalid = Counter(data["events"]), Counter(data["invalid"])
        self.outcomes, self.watermark = data["outcomes"], data["watermark"]
        chain = [*earlier, (data, arrays)]
        if "format" not in data["join"]:  # written before the join was stored in columns: one whole state
            self.joiner.restore(data["join"])
        else:
            self.joiner.restore([(d["join"], {k[5:]: a for k, a in arr.items() if k.startswith("join.")})
                                 for d, arr in chain])
        if "future" in data:  # keys added after the layout was named: absent from older checkpoints
            self.future.restore(data["future"])
        if "bounty" in data:
            self.bounty.restore(data["bounty"])
        self._tracking = bool(self.bounty.pending)
        self._remembered = {(m, c, tuple(v)): (first, bases) for m, c, v, first, bases in data.get("remembered", [])}
        self._held.restore(msgspec.msgpack.decode(data["held"], type=list[Outcome]))
        subs = (Submission.from_dict(d) for d in data.get("held_submissions", []))
        self._held_subs = [(sub.ts, sub.submitter, sub.id, i, sub) for i, sub in enumerate(subs)]
        heapq.heapify(self._held_subs)
        self._sub_seq = len(self._held_subs)
        self.slices.restore(data["slices"])
        n = data["rows"]
        self.st, self.det = K.new_rows(max(n, 64), len(LAMBDAS))
        whole = [i for i, (_, a) in enumerate(chain) if "st" in a]  # then only the blocks that changed
        if not whole:
            raise ValueError("an incremental checkpoint restores only on top of the ones before it (earlier)")
        full, *increments = (a for _, a in chain[whole[-1]:])
        m = min(n, len(full["st"]))  # (checkpoints from before fire and resolve shared a slot hold four)
        self.st[:m], self.det[:m] = full["st"][:m], K.merge_detector_slots(full["st"][:m], full["det"][:m])
        for a in increments:  # (only ever written with today's slots)
            at = a["rows_at"]
            if len(at) and (at.min() < 0 or at.max() >= n):
                raise ValueError("an incremental checkpoint's slice rows lie outside the state")
            self.st[at], self.det[at] = a["st_at"], a["det_at"]
        self._rows_ready = n
        # thresholds come from this config, not the one the checkpoint was written with
        pinned = np.repeat([key.combo == self.slices.pin_combo for key in self.slices.keys], len(self.metrics))
        self.st[:n, F.H] = np.where(pinned[:n], self.h_pinned, self.h_fire)
        self.active = {a["fingerprint"]: Alert(**a) for a in data["active"]}
        # the next incremental state is relative to this one (see state())
        self._row_digests = K.row_digests(self.st[:n], self.det[:n], _ROW_BLOCK)

    # ---- where a slice's baseline came from, and alerts --------------------------------------
    def provenance(self, sid: int, m: int, st: np.ndarray | None = None) -> Provenance:
        """Where row (sid, metric m)'s baseline came from, and whether the slice is new (first seen
        after its model's reference period). ``st``: a consistent copy of the state to read."""
        st = self.st if st is None else st
        n_metrics = len(self.metrics)
        row = st[sid * n_metrics + m]
        source = K.SOURCE_NAMES.get(K.Source(int(row[F.BSRC])))
        ancestor = int(row[F.BANC])
        closed = st[self.slices.find(self.slices.keys[sid].model, 0, ()) * n_metrics, F.MREF_CLOSED]
        first = row[F.FIRST]
        new = not math.isnan(closed) and (first > closed or (first == closed and row[F.RN] == 0))
        return Provenance(source, self.slices.describe(ancestor) if source == "inherited" else None,
                          float(first) if new else None)

    def _explanation(self, sid: int, m: int, kind: str) -> Alert | None:
        """An already-firing alert that explains this one: the other kind on the same slice, or
        either kind on an ancestor holding the same outcomes or whose windowed rate lies inside
        this slice's 95% interval. One cause then pages once."""
        n_metrics = len(self.metrics)
        key = self.slices.keys[sid]
        metric = self.metrics[m]
        row = self.st[sid * n_metrics + m]
        other = self.active.get(fingerprint(key.model, self.slices.describe(sid), _OTHER_KIND[kind], metric))
        if other is not None:
            return other
        interval = K.window_interval(row)
        for level in self._ancestors(sid):
            for combo, values in level:
                a = self.slices.find(key.model, combo, values)
                if a < 0:
                    continue
                desc = self.slices.describe(a)
                arow = self.st[a * n_metrics + m]
                rate = K.window_interval(arow)
                if not (arow[F.N] == row[F.N] or (interval is not None and rate is not None
                                                   and interval[1] <= rate[0] <= interval[2])):
                    continue
                for k in (kind, _OTHER_KIND[kind]):
                    firing = self.active.get(fingerprint(key.model, desc, k, metric))
                    if firing is not None:
                        return firing
        return None

    def _regroup(self, cause: str, ts: float) -> list[Alert]:
        """The alert with fingerprint ``cause`` resolved: alerts it explained that still fire are
        re-issued (as firing) under another firing cause, or on their own, so that they page."""
        out: list[Alert] = []
        for fp, a in list(self.active.items()):
            if a.incident != cause or fp == cause:
                continue
            sid = self.slices.find_slice(a.model, a.slice)
            other = self._explanation(sid, self.metrics.index(a.metric), a.kind) if sid >= 0 else None
            if other is not None and other.incident == cause:  # itself regrouped in this pass
                explained_by, incident = other.slice, other.fingerprint
            elif other is not None:
                explained_by, incident = other.slice, other.incident
            else:
                explained_by, incident = None, None
            self.active[fp] = again = a.regrouped(explained_by, incident, ts)
            out.append(again)
        return out

    def _alert(self, row: int, kind: int, state: int, vals: np.ndarray, ts: float) -> Alert:
        n_metrics = len(self.metrics)
        sid, m = divmod(row, n_metrics)
        key = self.slices.keys[sid]
        desc = self.slices.describe(sid)
        value, reference, n = float(vals[0]), float(vals[1]), int(vals[2])
        kind_name = _KINDS[kind]
        dec = self.decision(key.model, kind_name)
        tolerance = max(dec.tolerance, dec.relative_tolerance * reference)
        prov = self.provenance(sid, m)
        fp = fingerprint(key.model, desc, kind_name, self.metrics[m])
        if state:
            cause = self._explanation(sid, m, kind_name)
            explained_by, incident = (cause.slice, cause.incident) if cause is not None else (None, None)
        else:
            firing = self.active.get(fp)
            explained_by, incident = (firing.explained_by, firing.incident) if firing is not None else (None, None)
        drift = kind_name == "drift"
        alert = Alert.make(kind_name, "firing" if state else "resolved", key.model, desc, self.metrics[m], value,
                           reference, n, ts, tolerance, baseline_source=prov.source if drift else None,
                           baseline_from=prov.ancestor if drift else None, first_seen=prov.first_seen,
                           explained_by=explained_by, incident=incident)
        if state:
            self.active[alert.fingerprint] = alert
        else:
            self.active.pop(alert.fingerprint, None)
        return alert
