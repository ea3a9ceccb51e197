"""Compiled per-batch update of every slice's estimates and detectors.

The engine hands over a batch of scored outcomes as arrays (slice ids per tracked
combination, errors/units per metric, event times); :func:`process_batch` walks them in
order and updates one row of state per (slice, metric): cumulative sums, a decayed window,
the reference-period accumulators, and four :mod:`monitor.edetector` recursions (drift
fire/resolve, disparity fire/resolve). It does no I/O and allocates nothing per outcome;
alert transitions come back in small output arrays. Numba compiles it once (cached on disk).

Disparity compares a slice with the rest of its model *at the same time* without any
baseline: outcomes are grouped into blocks, each closing at a slice outcome when at least
one complement outcome arrived since the previous close; the increment is the slice's block
error against the complement's block rate (plus tolerance). Under "slice ≤ rest + tolerance"
its mean is ≤ 0 whatever the common rate does, so a model-wide shift never reads as a
disparity. Complement sums are differences of the population row and the slice's own row,
so no per-slice work is done for outcomes outside the slice.
"""

from __future__ import annotations

import os
import tempfile

if "NUMBA_CACHE_DIR" not in os.environ:  # a read-only install still gets a compile cache
    _home = os.path.expanduser("~")
    _writable_home = os.access(_home, os.W_OK)
    _base = os.environ.get("XDG_CACHE_HOME") or (os.path.join(_home, ".cache") if _writable_home else tempfile.gettempdir())
    os.environ["NUMBA_CACHE_DIR"] = os.path.join(_base, "lastmile-numba")

import numba  # noqa: E402
import numpy as np  # noqa: E402

from monitor.rows import NPARAMS, F, P, Ref, Source, new_rows  # noqa: E402

# detector slots: a kind's fire and resolve detectors share one, as only one of them runs at a
# time (by the row's state) and both restart at every transition (rows.DETECTOR_SLOTS)
DRIFT_FIRE = DRIFT_RESOLVE = 0
DISP_FIRE = DISP_RESOLVE = 1

# transition kinds
KIND_DRIFT, KIND_DISPARITY = 0, 1

# plain ints for the compiled code (numba compares floats with ints, not with IntEnum members)
_PENDING = int(Source.PENDING)
_REF_NONE, _REF_OUTCOMES, _REF_TIME = int(Ref.NONE), int(Ref.OUTCOMES), int(Ref.TIME)

_EPS = 1e-9



@numba.njit(cache=True, nogil=True)
def _step(det, r, slot, z, lambdas):
    """CUSUM step for every λ; returns log-mean-exp of the statistics (only when it matters)."""
    k = lambdas.shape[0]
    top = 0.0
    for j in range(k):
        s = det[r, slot, j] + np.log1p(lambdas[j] * z)
        if s < 0.0:
            s = 0.0
        det[r, slot, j] = s
        if s > top:
            top = s
    return top


@numba.njit(cache=True, nogil=True)
def _lme(det, r, slot):
    k = det.shape[2]
    top = det[r, slot, 0]
    for j in range(1, k):
        if det[r, slot, j] > top:
            top = det[r, slot, j]
    acc = 0.0
    for j in range(k):
        acc += np.exp(det[r, slot, j] - top)
    return top + np.log(acc / k)


@numba.njit(cache=True, nogil=True)
def _clear(det, r, slot):
    for j in range(det.shape[2]):
        det[r, slot, j] = 0.0


@numba.njit(cache=True, nogil=True)
def _transition(st, det, r, i, kind, state, reference, n_out, out_i, out_row, out_kind, out_state, out_vals):
    """Flip the row's alert state, restart both detectors of that kind, record the transition."""
    if kind == KIND_DRIFT:
        st[r, F.DSTATE] = state
        _clear(det, r, DRIFT_FIRE)
    else:
        st[r, F.PSTATE] = state
        _clear(det, r, DISP_FIRE)
    out_i[n_out] = i
    out_row[n_out] = r
    out_kind[n_out] = kind
    out_state[n_out] = state
    out_vals[n_out, 0] = st[r, F.WE] / max(st[r, F.WU], _EPS)  # the windowed estimate
    out_vals[n_out, 1] = reference
    out_vals[n_out, 2] = st[r, F.N]
    return n_out + 1


@numba.njit(cache=True, nogil=True)
def process_batch(st, det, rows, eu, ts, params, lambdas, start, end, out_i, out_row, out_kind, out_state, out_vals):
    """Update state for outcomes ``start..end-1`` of the batch; stop early after an outcome that caused
    alert transitions (the engine explains them from the state as of that outcome), or when a
    model's reference period closes (the engine then sets every baseline of that model).

    rows[i, c]  slice id of outcome i in combination c (c = 0: the population; -1: none, as for
                the columns of pinned groups it is not in)
    eu[i, m]    (errors, units) of outcome i for metric m; (0, 0) = not applicable
    Returns (transitions written, index of the next unprocessed outcome, population row of the
    model whose reference period just closed or -1).
    """
    n_out_max = out_i.shape[0]
    n_metrics = eu.shape[1]
    n_combos = rows.shape[1]
    cap = params[P.CAP]
    umax = params[P.UMAX]
    g = params[P.GAMMA]
    hr = params[P.HR]
    resolve = params[P.RESOLVE]
    refmode = int(params[P.REFMODE])
    drift_on = params[P.DRIFT] > 0.0
    disp_on = params[P.DISP] > 0.0
    n_out = 0
    i = start
    while i < end:
        if n_out + 2 * n_combos * n_metrics > n_out_max:
            break
        t = ts[i]
        # -- the model's reference period: one clock per model, in its population row
        model = rows[i, 0] * n_metrics
        in_reference = False
        closes = False
        if refmode != _REF_NONE and st[model, F.MREF_CLOSED] != st[model, F.MREF_CLOSED]:
            if refmode == _REF_TIME and t >= params[P.REFEND]:
                st[model, F.MREF_CLOSED] = t  # closes before this outcome, which is tested as usual
                return n_out, i, model
            if refmode == _REF_OUTCOMES:
                in_reference = True
                st[model, F.MREF_SEEN] += 1.0
                closes = st[model, F.MREF_SEEN] >= params[P.REFN]
            else:
                in_reference = t >= params[P.REFSTART]
                if in_reference:
                    st[model, F.MREF_SEEN] += 1.0
        for m in range(n_metrics):
            e = eu[i, m, 0]
            u = eu[i, m, 1]
            if e == 0.0 and u == 0.0:
                continue
            ec = min(e, cap * u)  # detectors see errors capped at cap × units
            scale = max(umax, u)  # ... and long outcomes at their own rate over umax units
            pop = rows[i, 0] * n_metrics + m
            for c in range(n_combos):
                if rows[i, c] < 0:
                    continue
                r = rows[i, c] * n_metrics + m
                h = st[r, F.H]
                # -- estimates
                if st[r, F.FIRST] != st[r, F.FIRST]:  # NaN: the row's first outcome (or its slice's, remembered)
                    st[r, F.FIRST] = t
                st[r, F.N] += 1.0
                st[r, F.E] += e
                st[r, F.U] += u
                st[r, F.WN] = g * st[r, F.WN] + 1.0
                st[r, F.WE] = g * st[r, F.WE] + e
                st[r, F.WU] = g * st[r, F.WU] + u
                st[r, F.WE2] = g * st[r, F.WE2] + e * e
                st[r, F.WU2] = g * st[r, F.WU2] + u * u
                st[r, F.WEU] = g * st[r, F.WEU] + e * u
                st[r, F.WW] = g * g * st[r, F.WW] + 1.0
                # -- inside the reference period, rows still waiting for a baseline learn one
                if in_reference and st[r, F.BSRC] == _PENDING:
                    st[r, F.RN] += 1.0
                    st[r, F.RE] += e
                    st[r, F.RU] += u
                    st[r, F.RE2] += e * e
                    st[r, F.RU2] += u * u
                    st[r, F.REU] += e * u
                alertable = st[r, F.ALERTABLE] > 0.0 and st[r, F.N] >= st[r, F.MIN_N]
                # -- drift: this slice against its baseline (NaN until it has one)
                b = st[r, F.BASE]
                if drift_on and b == b:
                    tol = max(st[r, F.TOL_D], st[r, F.REL_D] * b)
                    if st[r, F.DSTATE] == 0.0:
                        bf = max(b + tol, 1e-4)
                        z = (ec - bf * u) / (bf * scale)
                        top = _step(det, r, DRIFT_FIRE, z, lambdas)
                        if top >= h and alertable and _lme(det, r, DRIFT_FIRE) >= h:
                            n_out = _transition(st, det, r, i, KIND_DRIFT, 1, b,
                                                n_out, out_i, out_row, out_kind, out_state, out_vals)
                    else:
                        br = b + resolve * tol
                        room = cap - br
                        if room > _EPS:
                            z = (br * u - ec) / (room * scale)
                            top = _step(det, r, DRIFT_RESOLVE, z, lambdas)
                            if top >= hr and _lme(det, r, DRIFT_RESOLVE) >= hr:
                                n_out = _transition(st, det, r, i, KIND_DRIFT, 0, b,
                                                    n_out, out_i, out_row, out_kind, out_state, out_vals)
                # -- disparity: this slice against the rest of its model, block by block
                if c == 0 or not disp_on or st[r, F.TOL_P] < 0.0:  # TOL_P < 0: disabled for this model
                    continue
                kc = (st[pop, F.N] - st[r, F.SMN]) - (st[r, F.N] - st[r, F.SON])
                if kc < 1.0:
                    continue  # no complement outcome since the last close: keep the block open
                es = st[r, F.E] - st[r, F.SOE]
                us = st[r, F.U] - st[r, F.SOU]
                ks = st[r, F.N] - st[r, F.SON]
                ecomp = (st[pop, F.E] - st[r, F.SME]) - es
                ucomp = (st[pop, F.U] - st[r, F.SMU]) - us
                st[r, F.SMN] = st[pop, F.N]
                st[r, F.SME] = st[pop, F.E]
                st[r, F.SMU] = st[pop, F.U]
                st[r, F.SON] = st[r, F.N]
                st[r, F.SOE] = st[r, F.E]
                st[r, F.SOU] = st[r, F.U]
                if ucomp <= _EPS:
                    continue
                st[r, F.BLOCKS] += 1.0
                st[r, F.CWE] = g * st[r, F.CWE] + ecomp
                st[r, F.CWU] = g * st[r, F.CWU] + ucomp
                rc = min(ecomp / ucomp, cap)
                tolp = max(st[r, F.TOL_P], st[r, F.REL_P] * rc)
                es_c = min(es, cap * us)
                bscale = max(umax * ks, us)
                comp_n = st[pop, F.N] - st[r, F.N]
                if st[r, F.PSTATE] == 0.0:
                    z = (es_c - (rc + tolp) * us) / ((cap + tolp) * bscale)
                    top = _step(det, r, DISP_FIRE, z, lambdas)
                    if top >= h and alertable and comp_n >= st[r, F.MIN_N] and _lme(det, r, DISP_FIRE) >= h:
                        rest = st[r, F.CWE] / max(st[r, F.CWU], _EPS)
                        n_out = _transition(st, det, r, i, KIND_DISPARITY, 1, rest,
                                            n_out, out_i, out_row, out_kind, out_state, out_vals)
                else:
                    z = ((rc + resolve * tolp) * us - es_c) / (cap * bscale)
                    top = _step(det, r, DISP_RESOLVE, z, lambdas)
                    if top >= hr and _lme(det, r, DISP_RESOLVE) >= hr:
                        rest = st[r, F.CWE] / max(st[r, F.CWU], _EPS)
                        n_out = _transition(st, det, r, i, KIND_DISPARITY, 0, rest,
                                            n_out, out_i, out_row, out_kind, out_state, out_vals)
        i += 1
        if closes:
            st[model, F.MREF_CLOSED] = t
            return n_out, i, model
        if n_out > 0:  # the engine reads the state as of this outcome to explain its transitions
            return n_out, i, -1
    return n_out, i, -1


def warm() -> None:
    """Load (or compile) :func:`process_batch` for the argument types the engine passes, on an
    empty batch: what the first real batch would otherwise wait for."""
    st, det = new_rows(1, 1)
    ints = np.zeros(1, np.int64)
    process_batch(st, det, np.zeros((1, 1), np.int64), np.zeros((1, 1, 2)), np.zeros(1), np.zeros(NPARAMS),
                  np.ones(1), 0, 0, ints, ints, ints, ints, np.zeros((1, 3)))
