"""``lastmile bench``: what monitoring costs next to merely reading the stream, and memory bounds.

Everything runs on one core in this process, on the same in-memory JSON lines:

* decode only: the same lines through a plain JSON decoder (msgspec and the standard
  library; orjson too when installed) — the floor any consumer pays;
* the engine: decode + validate + join + score (WER with rapidfuzz) + slice + detectors,
  for prediction/feedback pairs and for pre-joined outcome events;
* the statistics kernel alone on pre-scored arrays;
* memory per tracked slice and per pending (unlabelled) prediction, by tracemalloc.
"""

from __future__ import annotations

import gc
import json
import time
import tracemalloc
from typing import Any
from collections.abc import Callable

import msgspec
import numpy as np

from monitor.compiled import kernel
from monitor.config import Config, load_config
from monitor.demo import builtin_config, builtin_config_text
from monitor.engine import Engine
from monitor.join import Joiner
from monitor.simulate import SpeechScenario


def _rate(fn: Callable[[], Any], count: int, repeat: int = 3) -> float:
    """Best of ``repeat`` runs, in items per second."""
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return count / best


def _outcome_lines(lines: list[bytes]) -> list[bytes]:
    """The same data as pre-joined ``outcome`` events (a service that joins upstream)."""
    preds: dict[str, dict[str, Any]] = {}
    out = []
    for line in lines:
        ev = msgspec.json.decode(line)
        if ev["type"] == "prediction":
            preds[ev["id"]] = ev
        elif ev["id"] in preds:
            joined = dict(preds.pop(ev["id"]), type="outcome", label=ev["label"])
            out.append(msgspec.json.encode(joined))
    return out


def _engine_run(cfg: Config, lines: list[bytes]) -> Callable[[], None]:
    def run() -> None:
        engine = Engine(cfg)
        engine.feed_many(lines)
        engine.flush()

    return run


_FIRST_EVENT = r"""
import sys
from monitor.config import load_config
from monitor.demo import builtin_config
from monitor.engine import Engine
cfg = load_config(sys.argv[1]) if len(sys.argv) > 1 else builtin_config()
engine = Engine(cfg)
engine.feed_many([sys.stdin.buffer.readline().strip()])
print("first", engine.outcomes + sum(engine.events.values()), flush=True)
engine.flush()
print("kernel", flush=True)
"""


def startup(config_path: str | None, line: bytes, repeat: int = 3) -> tuple[float, float]:
    """Seconds from starting a fresh ``python`` until the first event has been decoded, joined and
    routed, and until the first batch has been through the compiled kernel (warm compile cache);
    the best of ``repeat`` runs."""
    import subprocess
    import sys

    first = kern = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _FIRST_EVENT, *([config_path] if config_path else [])],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=False)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line + b"\n")
        proc.stdin.close()
        marks = {}
        for out in proc.stdout:
            marks[out.split()[0].decode()] = time.perf_counter() - t0
        if proc.wait() != 0 or set(marks) != {"first", "kernel"}:
            raise RuntimeError("the start-up probe failed")
        first, kern = min(first, marks["first"]), min(kern, marks["kernel"])
    return first, kern


def replay_end_to_end(config_path: str | None, lines: list[bytes],
                      rounds: int = 3) -> list[tuple[float, float, float]]:
    """``lastmile replay`` of ``lines`` written to a file, in a fresh process (start-up included),
    beside a loop that only reads the same file and decodes each line with the standard library's
    ``json`` and with msgspec: seconds for each, in ``rounds`` rounds that take turns, so that a
    change in the machine's speed during the run reaches both sides of a ratio alike."""
    import os
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "events.jsonl")
        with open(path, "wb") as fh:
            fh.write(b"\n".join(lines) + b"\n")
        if config_path is None:  # the built-in asr.yaml, as a file
            config_path = os.path.join(tmp, "asr.yaml")
            with open(config_path, "w", encoding="utf-8") as cfg_fh:
                cfg_fh.write(builtin_config_text())
        cmd = [sys.executable, "-m", "monitor.cli", "replay", path, "--config", config_path, "--quiet"]

        def replay_file() -> float:
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # (no tty: no progress bar)
            if proc.returncode:
                raise RuntimeError(f"lastmile replay failed: {proc.stderr.decode()[-2000:]}")
            return time.perf_counter() - t0

        def decode_file(fn: Callable[[bytes], Any]) -> float:
            t0 = time.perf_counter()
            with open(path, "rb") as fh:
                for line in fh:
                    fn(line)
            return time.perf_counter() - t0

        return [(replay_file(), decode_file(json.loads), decode_file(msgspec.json.decode)) for _ in range(rounds)]


def memory_per_slice(cfg: Config, slices: int = 10_000) -> tuple[float, int]:
    """Bytes per tracked slice: index entries plus estimate/detector state for every metric."""
    cfg = cfg.model_copy(update={"slices": cfg.slices.model_copy(update={"max_slices": slices * 2,
                                                                          "max_values_per_dimension": slices})})
    engine = Engine(cfg)
    kernel()  # loaded by a background thread, whose allocations tracemalloc would count too
    dims = cfg.slices.dimensions
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    i = 0
    while len(engine.slices) < slices:
        engine.slices.route("m", f"t{i % 7}", {d: f"{d}-{i}" for d in dims})
        i += 1
    engine._init_rows()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return used / len(engine.slices), len(engine.slices)


def memory_per_pending(cfg: Config, lines: list[bytes], count: int = 100_000) -> tuple[float, int]:
    """Bytes per pending prediction: what the join keeps of a decoded prediction (its id, output
    text, event time and attribute combination) and the decoded event's garbage, if any."""
    engine = Engine(cfg)
    kernel()  # loaded in a background thread since the engine was created: not counted here
    preds = []
    for line in lines:
        ev = engine.decoder.decode(line)
        if ev.kind == "prediction":
            preds.append(line)
            if len(preds) == count:
                break
    joiner = Joiner(cfg.join.ttl, cfg.join.max_pending)
    decode = engine.decoder.decode
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for line in preds:
        joiner.add(decode(line))
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return used / joiner.pending, joiner.pending


def run_bench(config_path: str | None = None, outcomes: int = 200_000, seed: int = 1, out: Any = None) -> int:
    import sys

    out = out or sys.stdout
    cfg = load_config(config_path) if config_path else builtin_config()
    scenario = SpeechScenario(outcomes=outcomes, seed=seed, malformed=0.0)
    lines = list(scenario.events())
    outcome_lines = _outcome_lines(lines)
    print(f"config: {config_path or 'built-in asr.yaml'}; {len(lines):,} prediction/feedback lines "
          f"({sum(map(len, lines)) / len(lines):.0f} bytes avg), {len(outcome_lines):,} outcome lines; one core",
          file=out)
    _engine_run(cfg, lines[:2000])()  # compile / warm the kernel outside the timings

    decoders: list[tuple[str, Callable[[bytes], Any]]] = [("msgspec.json.decode", msgspec.json.decode),
                                                          ("json.loads (stdlib)", json.loads)]
    try:
        import orjson

        decoders.insert(1, ("orjson.loads", orjson.loads))
    except ImportError:
        pass
    def decode_all(fn: Callable[[bytes], Any]) -> Callable[[], None]:
        def run() -> None:
            for x in lines:
                fn(x)

        return run

    decode_rates = {name: _rate(decode_all(fn), len(lines)) for name, fn in decoders}

    n_out = len(outcome_lines)
    eng_pairs = _rate(_engine_run(cfg, lines), len(lines))
    eng_outcomes = _rate(_engine_run(cfg, outcome_lines), n_out)
    dec_outcomes = _rate(lambda: [msgspec.json.decode(x) for x in outcome_lines], n_out)
    joined_per_line = n_out / len(lines)

    print("\nthroughput (best of 3)", file=out)
    for name, r in decode_rates.items():
        print(f"  decode only, {name:22} {r:>11,.0f} lines/s", file=out)
    print(f"  engine, prediction+feedback lines  {eng_pairs:>11,.0f} lines/s = {eng_pairs * joined_per_line:,.0f} "
          f"outcomes/s", file=out)
    for name, r in decode_rates.items():
        print(f"    ratio engine / decode only ({name}): {eng_pairs / r:.2f}", file=out)
    print(f"  engine, outcome lines              {eng_outcomes:>11,.0f} outcomes/s "
          f"(ratio to msgspec decode of the same lines: {eng_outcomes / dec_outcomes:.2f})", file=out)

    engine = Engine(cfg)
    engine.feed_many(lines)
    engine.flush()
    rows = np.array([engine.slices.route("asr-en", "t", {"accent": "a", "device": "d", "noise": "n"})] * 200_000)
    eu = np.tile(np.array([[[2.0, 12.0]]]), (200_000, 1, 1))
    ts = np.arange(200_000, dtype=float)
    kern = _rate(lambda: engine.process_scored(rows, eu, ts), 200_000)
    print(f"  statistics kernel alone ({rows.shape[1]} slices/outcome) {kern:>9,.0f} outcomes/s", file=out)

    rounds = replay_end_to_end(config_path, lines)
    replay_s, json_s, msgspec_s = map(min, zip(*rounds))
    first, kern = startup(config_path, outcome_lines[0])
    print(f"\nend to end: lastmile replay of the {len(lines):,} lines from a file, in a fresh process "
          f"(best of {len(rounds)} rounds, each side in turn)", file=out)
    print(f"  lastmile replay                    {len(lines) / replay_s:>11,.0f} lines/s ({replay_s:.2f} s, "
          f"start-up included)", file=out)
    print(f"  read + json.loads (stdlib)         {len(lines) / json_s:>11,.0f} lines/s "
          f"(ratio replay / this: {json_s / replay_s:.2f}; by round: "
          f"{', '.join(f'{j / r:.2f}' for r, j, _ in rounds)})", file=out)
    print(f"  read + msgspec.json.decode         {len(lines) / msgspec_s:>11,.0f} lines/s "
          f"(ratio: {msgspec_s / replay_s:.2f})", file=out)
    print(f"  start-up: first event processed {first:.2f} s after the process started; first batch "
          f"through the compiled kernel at {kern:.2f} s (warm compile cache)", file=out)

    per_slice, n_slices = memory_per_slice(cfg)
    per_pending, n_pending = memory_per_pending(cfg, lines)
    print("\nmemory (tracemalloc)", file=out)
    print(f"  per tracked slice      {per_slice:>7,.0f} bytes  ({n_slices:,} slices, "
          f"{len(cfg.metrics.names)} metric(s), estimates + 4 detectors in 2 slots × 10 λ)", file=out)
    print(f"  per pending prediction {per_pending:>7,.0f} bytes  ({n_pending:,} pending, ~{scenario_words(lines)} "
          f"words of output text each, id and text included)", file=out)
    return 0


def scenario_words(lines: list[bytes]) -> int:
    sample = [msgspec.json.decode(x) for x in lines[:2000]]
    words = [len(e["output"].split()) for e in sample if e["type"] == "prediction"]
    return round(sum(words) / max(len(words), 1))
