"""End-to-end figures through a Kafka-compatible broker (tansu, or LASTMILE_TEST_KAFKA):

    python -m tests.bench.kafka_e2e [--outcomes 100000]

1. throughput: the daemon's loop (consume, decode, join, score, slice, detect, checkpoint every
   10 s), with the consumer reading ahead in a second process (the default) and in one process,
   next to a bare kafka-python consumer that only reads and JSON-decodes the same messages,
   measured in one run on the same topics, from first to last message, in rounds that take
   turns (the medians and each round's ratio are printed);
2. checkpoint write / load time and size with 10,000 slices and 1,000,000 pending predictions: a full
   snapshot, incremental checkpoints of one interval's traffic each, and loading a chain of them;
3. restart-to-ready: a daemon killed with -9 and started again, until /readyz answers 200.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import msgspec

from monitor.checkpoint import CheckpointStore
from monitor.config import load_config
from monitor.daemon import Daemon
from monitor.engine import Engine
from monitor.events import Event
from monitor.simulate import SpeechScenario
from tests.kafka_harness import free_port, produce, start_broker

ROOT = Path(__file__).resolve().parents[2]


def bare_consumer(bootstrap: str, topics: list[str], total: int) -> float:
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=f"bare-{time.time()}",
                             auto_offset_reset="earliest", enable_auto_commit=False, max_poll_records=2000,
                             max_poll_interval_ms=10000, session_timeout_ms=6000)
    seen, started = 0, None
    while seen < total:
        for messages in consumer.poll(timeout_ms=500).values():
            if started is None:
                started = time.perf_counter()
            for msg in messages:
                msgspec.json.decode(msg.value)
            seen += len(messages)
    elapsed = time.perf_counter() - started
    consumer.close()
    return total / elapsed


def daemon_loop(cfg_env: dict[str, str], total: int) -> tuple[float, int]:
    cfg = load_config(ROOT / "config" / "asr.yaml", environ=cfg_env)
    daemon = Daemon(cfg, on_alert=lambda a: None, freeze_gc=True)  # as `lastmile run`
    daemon._restore()
    daemon._connect()
    started = None
    while sum(daemon.messages.values()) < total:
        daemon.step()
        if started is None and daemon.messages:
            started = time.perf_counter()
    elapsed = time.perf_counter() - started
    daemon.checkpoint_and_commit()
    daemon._close(commit=False)
    return total / elapsed, daemon.engine.outcomes


def checkpoint_figures(slices: int = 10_000, pending: int = 1_000_000, interval_events: int = 170_000) -> str:
    """Checkpoints with ``slices`` slices and ``pending`` pending predictions: full snapshots, then
    increments until the store's policy asks for a full one again (the longest chain it allows),
    each holding one checkpoint interval of traffic: ``interval_events`` events (10 s at the
    daemon loop's rate), half new predictions, half feedback joining the oldest pending ones."""
    cfg = load_config(ROOT / "config" / "asr.yaml")
    cfg = cfg.model_copy(update={"slices": cfg.slices.model_copy(update={"max_slices": slices * 2,
                                                                         "max_values_per_dimension": slices})})
    engine = Engine(cfg)
    i = 0
    while len(engine.slices) < slices:
        engine.slices.route("asr-en", f"t{i % 7}", {"accent": f"a{i}", "device": f"d{i % 5}", "noise": f"n{i}"})
        i += 1
    words = "the patient reports mild back pain since monday blood pressure is stable no known allergies".split()
    text = " ".join(words)

    def prediction(k: int) -> Event:
        return Event("prediction", f"utt-{k:09d}", 1795514400.0 + k * 0.01, "asr-en", "st-marys",
                     {"accent": "scottish", "device": "handset-a", "noise": "ward-b"}, text, None, None, None)

    for k in range(pending):
        engine.joiner.add(prediction(k))
    offsets = {"predictions": {p: 10**6 for p in range(12)}}
    with tempfile.TemporaryDirectory() as d:
        store = CheckpointStore(d)
        full_writes = []
        for _ in range(6):  # the first ones in a process pay for fresh page-cache memory; then older chains are removed
            t0 = time.perf_counter()
            data, arrays = engine.state()
            path = store.save(offsets, data, arrays)
            full_writes.append(time.perf_counter() - t0)
            del data, arrays
        full_size = path.stat().st_size
        n_slices = len(engine.slices)
        writes, sizes = [], []
        new, oldest = pending, 0
        while (parent := store.delta_parent()) is not None:
            for _ in range(interval_events // 2):  # pending stays at 1M: nothing is evicted
                engine.joiner.add(Event("feedback", f"utt-{oldest:09d}", 1795514400.0 + new * 0.01, None, None, {},
                                        None, text, None, None))
                engine.joiner.add(prediction(new))
                new, oldest = new + 1, oldest + 1
            t0 = time.perf_counter()
            data, arrays = engine.state(delta=True)
            path = store.save(offsets, data, arrays, parent=parent)
            writes.append(time.perf_counter() - t0)
            sizes.append(path.stat().st_size)
            del data, arrays
        live = engine.joiner.pending, engine.joiner.stats.joined
        del engine  # load as a restarted process would: without the old state in memory
        gc.collect()
        t0 = time.perf_counter()
        ckpt = store.latest()
        fresh = Engine(cfg)
        fresh.restore(ckpt.data, ckpt.arrays, ckpt.earlier)
        load_chain = time.perf_counter() - t0
        chain_size = sum(p.stat().st_size for p in ckpt.files)
        assert (fresh.joiner.pending, fresh.joiner.stats.joined) == live
        del ckpt, fresh
        gc.collect()
        for extra in sorted(Path(d).glob("ckpt-*.lmd")):
            extra.unlink()
        t0 = time.perf_counter()
        ckpt = CheckpointStore(d).latest()
        fresh = Engine(cfg)
        fresh.restore(ckpt.data, ckpt.arrays, ckpt.earlier)
        load_full = time.perf_counter() - t0
        assert fresh.joiner.pending == pending and len(fresh.slices) == n_slices
    return (f"checkpoint with {n_slices:,} slices and {pending:,} pending predictions (~{len(words)} words each):\n"
            f"  full snapshot: write {full_writes[0]:.2f}s the first in the process, {sorted(full_writes[3:])[1]:.2f}s "
            f"once older chains are removed (median of the 4th-6th); {full_size / 1e6:.0f} MB; "
            f"load+restore {load_full:.2f}s\n"
            f"  increment of {interval_events:,} events ({interval_events // 2:,} new predictions, "
            f"{interval_events // 2:,} joined): write {sum(writes) / len(writes):.2f}s mean, {max(writes):.2f}s max, "
            f"{sum(sizes) / len(sizes) / 1e6:.1f} MB\n"
            f"  the longest chain before the next full snapshot (full + {len(writes)} increment"
            f"{'s' if len(writes) != 1 else ''}, {chain_size / 1e6:.0f} MB): load+restore {load_chain:.2f}s")


def restart_to_ready(env: dict[str, str], port: int) -> str:
    cmd = [sys.executable, "-m", "monitor", "run", "--config", str(ROOT / "config" / "asr.yaml")]
    full_env = {**os.environ, **env, "LASTMILE__HTTP__PORT": str(port)}

    def wait_ready(proc: subprocess.Popen[bytes], timeout: float = 120) -> float:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1).status == 200:
                    return time.monotonic() - t0
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("not ready")

    first = subprocess.Popen(cmd, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cold = wait_ready(first)
    time.sleep(2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = subprocess.Popen(cmd, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    warm = wait_ready(second)
    second.send_signal(signal.SIGTERM)
    second.wait(timeout=60)
    static_env = {**full_env, "LASTMILE__KAFKA__CLIENT": "{group_instance_id: lastmile-0}",
                  "LASTMILE__KAFKA__GROUP_ID": env["LASTMILE__KAFKA__GROUP_ID"] + "-static"}
    third = subprocess.Popen(cmd, env=static_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_ready(third)
    time.sleep(2)
    third.send_signal(signal.SIGKILL)
    third.wait()
    fourth = subprocess.Popen(cmd, env=static_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    static = wait_ready(fourth)
    fourth.send_signal(signal.SIGTERM)
    fourth.wait(timeout=60)
    return (f"restart to ready: first start {cold:.1f}s; after kill -9 {warm:.1f}s (the dead member's session "
            f"times out first); with static membership (kafka.client.group_instance_id) {static:.1f}s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--outcomes", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of (bare consumer, daemon, daemon without read-ahead), taking turns")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds: at least 1")
    broker = start_broker()
    try:
        preds, fbs = broker.create_topics(4, "predictions", "feedback")
        lines = list(SpeechScenario(outcomes=args.outcomes, seed=1, malformed=0.0).events())
        produce(broker.bootstrap, {"prediction": preds, "feedback": fbs}, lines)
        total = len(lines)
        env = {"LASTMILE__KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap,
               "LASTMILE__KAFKA__TOPICS__PREDICTIONS": preds, "LASTMILE__KAFKA__TOPICS__FEEDBACK": fbs,
               "LASTMILE__KAFKA__MAX_POLL_INTERVAL": "10s", "LASTMILE__KAFKA__SESSION_TIMEOUT": "6s"}
        rounds = []
        for r in range(args.rounds):  # each side in turn: the machine's speed drifts during a run
            bare = bare_consumer(broker.bootstrap, [preds, fbs], total)
            rates = []
            for read_ahead in ("true", "false"):  # a group and a state directory of its own: from the start
                run = {**env, "LASTMILE__KAFKA__READ_AHEAD": read_ahead,
                       "LASTMILE__KAFKA__GROUP_ID": f"bench-{r}-{read_ahead}-{preds}",
                       "LASTMILE__CHECKPOINT__DIRECTORY": tempfile.mkdtemp(prefix="lastmile-bench-")}
                rate, outcomes = daemon_loop(run, total)
                rates.append(rate)
                if read_ahead == "true":
                    restart_env = run  # the restart below loads this daemon's last checkpoint
            rounds.append((bare, *rates))
        bare, rate, rate_one = (statistics.median(x) for x in zip(*rounds))
        print(f"{total:,} messages ({outcomes:,} outcomes), 4 partitions × 2 topics; median of {len(rounds)} rounds:")
        print(f"  bare kafka-python consumer, read + msgspec decode: {bare:>9,.0f} messages/s (one process)")
        print(f"  lastmile daemon loop:                              {rate:>9,.0f} messages/s "
              f"= {rate * outcomes / total:,.0f} outcomes/s (kafka.read_ahead: the consumer in a second process)")
        print(f"  lastmile daemon loop, kafka.read_ahead=false:      {rate_one:>9,.0f} messages/s (one process)")
        by_round = ", ".join(f"{d / b:.2f}" for b, d, _ in rounds)
        by_round_one = ", ".join(f"{d / b:.2f}" for b, _, d in rounds)
        print(f"  ratio daemon / bare consumer: median {statistics.median(d / b for b, d, _ in rounds):.2f} "
              f"(by round: {by_round}); read_ahead=false: median "
              f"{statistics.median(d / b for b, _, d in rounds):.2f} (by round: {by_round_one})", flush=True)
        print(restart_to_ready(restart_env, free_port()), flush=True)
    finally:
        if broker.process is not None:
            broker.process.kill()
    print(checkpoint_figures(), flush=True)


if __name__ == "__main__":
    main()
