"""Time and peak memory of `lastmile replay` (event-time order, the default) on N outcome events,
and the bytes an event takes in replay's spilled runs.

    python -m tests.bench.replay_memory [--outcomes 1000000 10000000] [--set join.ttl=60s] [--keep DIR]

The events are ``tests.bench.process.generate``'s (precomputed word errors, one every half second, in
order). Each replay runs in its own process with config/asr.yaml (peak memory is that process's
maximum resident set size). ``--set key=value`` overrides a config key: ``replay.sort_buffer``
above N sorts everything in memory, as replay did before it spilled runs; ``join.ttl=60s`` keeps
the engine's own memory (the ids joined within the TTL, remembered against duplicates, up to
``join.max_pending``) from growing with N, so what grows is replay's.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tests.bench.process import config_with, generate, run_lastmile


def run_bytes(events: Path, config: Path, sample: int = 100_000) -> float:
    """Bytes a decoded, sorted event takes in one of replay's runs (the spill files)."""
    from itertools import islice

    from monitor.config import load_config
    from monitor.engine import Engine
    from monitor.replay import Runs

    engine = Engine(load_config(config))
    with open(events, "rb") as fh:
        decoded = [ev for ev in engine.decoder.decode_stream(islice(fh, sample))]
    decoded.sort(key=lambda ev: ev.ts)
    with Runs() as runs:
        runs.spill(decoded)
        return runs.paths[0].stat().st_size / len(decoded)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--outcomes", type=int, nargs="+", default=[1_000_000])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a key of config/asr.yaml (e.g. replay.sort_buffer=2000000, join.ttl=60s)")
    ap.add_argument("--keep", type=Path, default=None, help="reuse (or keep) the event files in this directory")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        config = config_with(args.set, tmp)
        for n in args.outcomes:
            folder = args.keep or tmp
            folder.mkdir(parents=True, exist_ok=True)
            events = folder / f"outcomes-{n}.jsonl"
            if not events.exists():
                generate(events, n)
            if n == args.outcomes[0]:
                print(f"runs on disk: {run_bytes(events, config):.0f} bytes an event (the file's first 100,000, "
                      f"as replay spills them)", flush=True)
            took, peak, stderr = run_lastmile(["replay", str(events), "--config", str(config), "--quiet",
                                               "--summary-out", str(tmp / "slices.json"),
                                               "--alerts-out", str(tmp / "alerts.jsonl")])
            summary = next(line for line in stderr.splitlines() if line.startswith("replayed"))
            settings = f", {' '.join(args.set)}" if args.set else ""
            print(f"lastmile replay, {n:,} outcome events ({events.stat().st_size / 1e6:,.0f} MB of JSONL{settings}): "
                  f"{took:.1f} s, peak RSS {peak:,.0f} MB  [{summary}]", flush=True)


if __name__ == "__main__":
    main()
