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

# ---- row fields (one row per slice × metric) -----------------------------------------------
N, E, U = 0, 1, 2  # cumulative outcomes, errors, units
WN, WE, WU, WE2, WU2, WEU = 3, 4, 5, 6, 7, 8  # exponentially decayed window sums
BASE = 9  # baseline (NaN: none yet)
RN, RE, RU, RE2, RU2, REU, RDONE = 10, 11, 12, 13, 14, 15, 16  # reference accumulators
MIN_N, TOL_D, REL_D, TOL_P, REL_P, ALERTABLE = 17, 18, 19, 20, 21, 22  # per-row settings
DSTATE, PSTATE = 23, 24  # 0 ok, 1 firing
SMN, SME, SMU, SON, SOE, SOU = 25, 26, 27, 28, 29, 30  # population / own sums at last block close
CWE, CWU = 31, 32  # decayed complement block sums (the disparity reference)
BLOCKS = 33
WW = 34  # decayed sum of squared weights (for the window's standard error)
NFIELDS = 35

# detector slots
DRIFT_FIRE, DRIFT_RESOLVE, DISP_FIRE, DISP_RESOLVE = 0, 1, 2, 3

# reference modes
REF_NONE, REF_OUTCOMES, REF_TIME = 0, 1, 2

# params vector
P_CAP, P_UMAX, P_GAMMA, P_H, P_HR, P_RESOLVE, P_REFMODE, P_REFN, P_REFSTART, P_REFEND, P_SIGMAS, P_DRIFT, P_DISP = range(13)
NPARAMS = 13

# transition kinds
KIND_DRIFT, KIND_DISPARITY = 0, 1

_EPS = 1e-9


def new_rows(count: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    st = np.zeros((count, NFIELDS), dtype=np.float64)
    st[:, BASE] = np.nan
    det = np.zeros((count, 4, k), dtype=np.float64)
    return st, det


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
def _clear(det, r, a, b):
    for j in range(det.shape[2]):
        det[r, a, j] = 0.0
        det[r, b, j] = 0.0


@numba.njit(cache=True, nogil=True)
def _transition(st, det, r, i, kind, state, reference, n_out, out_i, out_row, out_kind, out_state, out_vals):
    """Flip the row's alert state, restart both detectors of that kind, record the transition."""
    if kind == KIND_DRIFT:
        st[r, DSTATE] = state
        _clear(det, r, DRIFT_FIRE, DRIFT_RESOLVE)
    else:
        st[r, PSTATE] = state
        _clear(det, r, DISP_FIRE, DISP_RESOLVE)
    out_i[n_out] = i
    out_row[n_out] = r
    out_kind[n_out] = kind
    out_state[n_out] = state
    out_vals[n_out, 0] = st[r, WE] / max(st[r, WU], _EPS)  # the windowed estimate
    out_vals[n_out, 1] = reference
    out_vals[n_out, 2] = st[r, N]
    return n_out + 1


@numba.njit(cache=True, nogil=True)
def process_batch(st, det, rows, eu, ts, params, lambdas, start, out_i, out_row, out_kind, out_state, out_vals):
    """Update state for outcomes ``start..`` of the batch; stop early if the output could overflow.

    rows[i, c]  slice id of outcome i in combination c (c = 0: the population)
    eu[i, m]    (errors, units) of outcome i for metric m; (0, 0) = not applicable
    Returns (number of transitions written, index of the next unprocessed outcome).
    """
    n_out_max = out_i.shape[0]
    n_metrics = eu.shape[1]
    n_combos = rows.shape[1]
    cap = params[P_CAP]
    umax = params[P_UMAX]
    g = params[P_GAMMA]
    h = params[P_H]
    hr = params[P_HR]
    resolve = params[P_RESOLVE]
    refmode = int(params[P_REFMODE])
    drift_on = params[P_DRIFT] > 0.0
    disp_on = params[P_DISP] > 0.0
    n_out = 0
    i = start
    while i < rows.shape[0]:
        if n_out + 2 * n_combos * n_metrics > n_out_max:
            break
        t = ts[i]
        for m in range(n_metrics):
            e = eu[i, m, 0]
            u = eu[i, m, 1]
            if e == 0.0 and u == 0.0:
                continue
            ec = min(e, cap * u)  # detectors see errors capped at cap × units
            scale = max(umax, u)  # ... and long outcomes at their own rate over umax units
            pop = rows[i, 0] * n_metrics + m
            for c in range(n_combos):
                r = rows[i, c] * n_metrics + m
                # -- estimates
                st[r, N] += 1.0
                st[r, E] += e
                st[r, U] += u
                st[r, WN] = g * st[r, WN] + 1.0
                st[r, WE] = g * st[r, WE] + e
                st[r, WU] = g * st[r, WU] + u
                st[r, WE2] = g * st[r, WE2] + e * e
                st[r, WU2] = g * st[r, WU2] + u * u
                st[r, WEU] = g * st[r, WEU] + e * u
                st[r, WW] = g * g * st[r, WW] + 1.0
                # -- reference period → baseline (outcomes used to learn it are not tested for drift)
                in_reference = False
                if st[r, RDONE] == 0.0 and refmode != REF_NONE:
                    learn = refmode == REF_OUTCOMES or (params[P_REFSTART] <= t < params[P_REFEND])
                    if learn:
                        st[r, RN] += 1.0
                        st[r, RE] += e
                        st[r, RU] += u
                        st[r, RE2] += e * e
                        st[r, RU2] += u * u
                        st[r, REU] += e * u
                    done = (refmode == REF_OUTCOMES and st[r, RN] >= params[P_REFN]) or (
                        refmode == REF_TIME and t >= params[P_REFEND]
                    )
                    if done:
                        st[r, RDONE] = 1.0
                        enough = refmode == REF_OUTCOMES or st[r, RN] >= st[r, MIN_N]  # a time range may be thin
                        if st[r, RU] > 0.0 and enough:
                            rate = st[r, RE] / st[r, RU]
                            ss = st[r, RE2] - 2.0 * rate * st[r, REU] + rate * rate * st[r, RU2]
                            se = np.sqrt(max(ss, 0.0)) / st[r, RU]
                            st[r, BASE] = min(rate + params[P_SIGMAS] * se, cap)
                    in_reference = learn or done
                alertable = st[r, ALERTABLE] > 0.0 and st[r, N] >= st[r, MIN_N]
                # -- drift: this slice against its own baseline
                b = st[r, BASE]
                if drift_on and b == b and not in_reference:
                    tol = max(st[r, TOL_D], st[r, REL_D] * b)
                    if st[r, DSTATE] == 0.0:
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
                if c == 0 or not disp_on or st[r, TOL_P] < 0.0:  # TOL_P < 0: disabled for this model
                    continue
                kc = (st[pop, N] - st[r, SMN]) - (st[r, N] - st[r, SON])
                if kc < 1.0:
                    continue  # no complement outcome since the last close: keep the block open
                es = st[r, E] - st[r, SOE]
                us = st[r, U] - st[r, SOU]
                ks = st[r, N] - st[r, SON]
                ecomp = (st[pop, E] - st[r, SME]) - es
                ucomp = (st[pop, U] - st[r, SMU]) - us
                st[r, SMN] = st[pop, N]
                st[r, SME] = st[pop, E]
                st[r, SMU] = st[pop, U]
                st[r, SON] = st[r, N]
                st[r, SOE] = st[r, E]
                st[r, SOU] = st[r, U]
                if ucomp <= _EPS:
                    continue
                st[r, BLOCKS] += 1.0
                st[r, CWE] = g * st[r, CWE] + ecomp
                st[r, CWU] = g * st[r, CWU] + ucomp
                rc = min(ecomp / ucomp, cap)
                tolp = max(st[r, TOL_P], st[r, REL_P] * rc)
                es_c = min(es, cap * us)
                bscale = max(umax * ks, us)
                comp_n = st[pop, N] - st[r, N]
                if st[r, PSTATE] == 0.0:
                    z = (es_c - (rc + tolp) * us) / ((cap + tolp) * bscale)
                    top = _step(det, r, DISP_FIRE, z, lambdas)
                    if top >= h and alertable and comp_n >= st[r, MIN_N] and _lme(det, r, DISP_FIRE) >= h:
                        rest = st[r, CWE] / max(st[r, CWU], _EPS)
                        n_out = _transition(st, det, r, i, KIND_DISPARITY, 1, rest,
                                            n_out, out_i, out_row, out_kind, out_state, out_vals)
                else:
                    z = ((rc + resolve * tolp) * us - es_c) / (cap * bscale)
                    top = _step(det, r, DISP_RESOLVE, z, lambdas)
                    if top >= hr and _lme(det, r, DISP_RESOLVE) >= hr:
                        rest = st[r, CWE] / max(st[r, CWU], _EPS)
                        n_out = _transition(st, det, r, i, KIND_DISPARITY, 0, rest,
                                            n_out, out_i, out_row, out_kind, out_state, out_vals)
        i += 1
    return n_out, i
