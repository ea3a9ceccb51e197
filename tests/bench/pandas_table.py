"""`lastmile replay` against the per-slice table computed with pandas, on the same machine and file.

    python -m tests.bench.pandas_table [--outcomes 1000000] [--every 10000] [--keep DIR]

Needs the bench extra (``pip install -e ".[bench]"``: pandas and orjson). The events are
``tests.bench.process.generate``'s outcome events (precomputed word errors). The pandas script is
the one an analyst would write for the same numbers: decode every line with orjson, then one
group-by sum of errors and units per tracked combination of config/asr.yaml (the population
too). It runs once at the end, and, like a monitor, every ``--every`` outcomes: recomputed over
everything so far, and kept up to date by adding each new chunk's sums to the table so far. Its
final table is checked against replay's summary (n, errors and units of every slice), so both
give the same numbers; only lastmile also runs the detectors and gives the alerts.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from tests.bench.process import CONFIG, generate, run_lastmile


def load(events: Path) -> object:
    """The outcome events as a pandas DataFrame (decoded with orjson)."""
    import orjson
    import pandas as pd

    rows, names = [], []
    with open(events, "rb") as fh:
        for line in fh:
            ev = orjson.loads(line)
            rows.append((ev["tenant"], *ev["attributes"].values(), ev["errors"], ev["units"]))
            names = names or list(ev["attributes"])
    return pd.DataFrame(rows, columns=["tenant", *names, "errors", "units"])


def table(df: object, combinations: list[list[str]]) -> dict[tuple[tuple[str, str], ...], tuple[int, float, float]]:
    """{slice: (n, errors, units)} for the population and every combination."""
    out: dict[tuple[tuple[str, str], ...], tuple[int, float, float]] = {
        (): (len(df), float(df["errors"].sum()), float(df["units"].sum()))}  # type: ignore[index, arg-type]
    for combo in combinations:
        sums = df.groupby(combo, sort=False)[["errors", "units"]].agg(["count", "sum"])  # type: ignore[attr-defined]
        for key, row in zip(sums.index, sums.itertuples(index=False)):
            values = key if isinstance(key, tuple) else (key,)
            out[tuple(zip(combo, values))] = (int(row[0]), float(row[1]), float(row[3]))
    return out


def main() -> None:
    import yaml

    ap = argparse.ArgumentParser()
    ap.add_argument("--outcomes", type=int, default=1_000_000)
    ap.add_argument("--every", type=int, default=10_000, help="pandas recomputes the table every this many outcomes")
    ap.add_argument("--keep", type=Path, default=None, help="reuse (or keep) the event file in this directory")
    args = ap.parse_args()
    combinations = [list(c) for c in yaml.safe_load(CONFIG.read_text())["slices"]["combinations"]]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        folder = args.keep or tmp
        folder.mkdir(parents=True, exist_ok=True)
        events = folder / f"outcomes-{args.outcomes}.jsonl"
        if not events.exists():
            generate(events, args.outcomes)

        took, peak, _ = run_lastmile(["replay", str(events), "--config", str(CONFIG), "--quiet",
                                      "--summary-out", str(tmp / "slices.json")])
        started = time.perf_counter()
        df = load(events)
        final = table(df, combinations)
        once = time.perf_counter() - started
        started = time.perf_counter()
        df = load(events)
        running: dict[tuple[tuple[str, str], ...], tuple[int, float, float]] = {}
        for start in range(0, args.outcomes, args.every):  # each new chunk's sums added to the table so far
            for key, (n, errors, units) in table(df.iloc[start:start + args.every], combinations).items():  # type: ignore[attr-defined]
                was = running.get(key, (0, 0.0, 0.0))
                running[key] = (was[0] + n, was[1] + errors, was[2] + units)
        chunked = time.perf_counter() - started
        assert running == final
        started = time.perf_counter()
        df = load(events)
        for upto in range(args.every, args.outcomes + 1, args.every):
            final = table(df.iloc[:upto], combinations)  # type: ignore[attr-defined]
        recomputed = time.perf_counter() - started

        rows = json.loads((tmp / "slices.json").read_text())["slices"]
        ours = {tuple(sorted(r["slice"].items())): (r["n"], r["errors"], r["units"]) for r in rows
                if r["metric"] == "wer"}
        theirs = {tuple(sorted(k)): v for k, v in final.items()}
        same = sum(ours.get(k) == v for k, v in theirs.items())
        print(f"{args.outcomes:,} outcome events ({events.stat().st_size / 1e6:,.0f} MB of JSONL), "
              f"{len(theirs)} slices:")
        print(f"  lastmile replay (fresh process, detectors and alerts too)  {took:6.1f} s, peak RSS {peak:,.0f} MB")
        print(f"  pandas + orjson, the table once at the end                 {once:6.1f} s")
        print(f"  pandas + orjson, the table recomputed every {args.every:,} outcomes {recomputed:6.1f} s")
        print(f"  pandas + orjson, the table updated by chunks of {args.every:,}     {chunked:6.1f} s")
        print(f"  same n, errors and units: {same}/{len(theirs)} slices ({len(ours)} in replay's table)")


if __name__ == "__main__":
    main()
