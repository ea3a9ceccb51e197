"""Command line: ``lastmile run | replay | submit | demo | check-config | bench``."""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import nullcontext
from pathlib import Path

from monitor import __version__
from monitor.alerts import Alert
from monitor.config import ConfigError, load_config


def _cmd_check_config(args: argparse.Namespace) -> int:
    try:
        cfg = load_config(args.config_file, environ=os.environ)  # what `run` would see
        if cfg.baseline.source == "file" and cfg.baseline.file:
            from monitor.baselines import Baselines

            Baselines.load(cfg.resolve_path(cfg.baseline.file), cfg.primary_metric)
    except ConfigError as exc:
        print(f"{exc.source}: {len(exc.problems)} problem(s)", file=sys.stderr)
        for path, msg in exc.problems:
            print(f"  {path or '<root>'}: {msg}", file=sys.stderr)
        return 1
    from monitor.engine import detectors_per_outcome, thresholds

    h, _, h_pinned = thresholds(cfg)
    pinned = f", {h_pinned:.2f} for confirmed bias-bounty groups" if cfg.submissions.pin else ""
    print(f"{args.config_file}: ok — metrics {cfg.metrics.names}, {1 + len(cfg.slices.combinations)} slice "
          f"combinations, {detectors_per_outcome(cfg)} detectors per outcome, alert threshold ln(ARL)={h:.2f}{pinned}")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from monitor.engine import Engine
    from monitor.replay import replay
    from monitor.table import slice_table

    try:
        cfg = load_config(args.config)
        engine = Engine(cfg)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    with open(args.alerts_out, "w", encoding="utf-8") if args.alerts_out else nullcontext() as alerts_fh:

        def on_alert(alert: Alert) -> None:
            if alerts_fh:
                alerts_fh.write(json.dumps(alert.to_dict()) + "\n")
            if not args.quiet:
                print(f"[{alert.ts}] {alert.state.upper():8} {alert.kind:9} {alert.summary}", file=sys.stderr)

        try:
            alerts = replay(engine, args.files, on_alert=on_alert)
        except FileNotFoundError as exc:
            print(f"lastmile replay: {exc}", file=sys.stderr)
            return 2
    table = slice_table(engine)
    if args.summary_out:
        Path(args.summary_out).write_text(json.dumps(table, indent=1) + "\n", encoding="utf-8")
    verdicts = engine.bounty.take_records()
    if args.verdicts_out:
        with open(args.verdicts_out, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(v) + "\n" for v in verdicts)
    p = table["pipeline"]
    invalid = sum(p["invalid"].values())
    counts = ", ".join(f"{n} {status}" for status, n in engine.bounty.counts().items() if n)
    print(f"replayed {sum(p['events'].values()):,} events ({invalid:,} invalid), {p['outcomes']:,} outcomes, "
          f"{len(table['slices']):,} slice rows, {len(alerts)} alert transitions, {len(table['alerts'])} firing"
          + (f"; submissions: {counts}" if counts else ""), file=sys.stderr)
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from monitor.daemon import run_daemon

    try:
        cfg = load_config(args.config, environ=os.environ)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    return run_daemon(cfg)


def _cmd_demo(args: argparse.Namespace) -> int:
    from monitor.demo import run_demo

    return run_demo(outcomes=args.outcomes, seed=args.seed, port=args.port, pace=args.seconds,
                    config_path=args.config, report=args.report or None)


def _cmd_bench(args: argparse.Namespace) -> int:
    from monitor.bench import run_bench

    return run_bench(config_path=args.config, outcomes=args.outcomes, seed=args.seed)


def _cmd_submit(args: argparse.Namespace) -> int:
    """A bias-bounty submission to a running daemon (``POST /v1/submissions``)."""
    import secrets
    import urllib.error
    import urllib.request

    token = os.environ.get(args.token_env, "") if args.token_env else ""
    if args.token_file:
        token = Path(args.token_file).read_text(encoding="utf-8").strip()
    if not token:
        print("lastmile submit: no token (give --token-env VAR or --token-file PATH)", file=sys.stderr)
        return 2
    group: object = args.group
    if args.group.lstrip().startswith("{"):
        try:
            group = json.loads(args.group)
        except ValueError as exc:
            print(f"lastmile submit: --group is not JSON ({exc}); the text form needs no braces around it",
                  file=sys.stderr)
            return 2
    body = {"id": args.id or f"sub-{secrets.token_hex(6)}", "model": args.model, "group": group,
            "claim": {"kind": args.claim, "metric": args.metric, "min_gap": args.min_gap},
            "budget": {"max_outcomes": args.max_outcomes, "deadline": args.deadline}}
    if args.metric is None:
        del body["claim"]["metric"]  # type: ignore[attr-defined]
    request = urllib.request.Request(args.url.rstrip("/") + "/v1/submissions", data=json.dumps(body).encode(),
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            print(resp.read().decode())
            return 0
    except urllib.error.HTTPError as err:
        print(f"lastmile submit: {err.code} {err.read().decode()[:500]}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"lastmile submit: cannot reach {args.url}: {exc}", file=sys.stderr)
        return 1


def _cmd_top(args: argparse.Namespace) -> int:
    """The worst slices by SliceLine score, from a running daemon or a replay's slice table."""
    import urllib.error
    import urllib.request

    from monitor.ranking import top_slices

    try:
        if args.summary:
            table = json.loads(Path(args.summary).read_text(encoding="utf-8"))
        else:
            with urllib.request.urlopen(args.url.rstrip("/") + "/v1/slices", timeout=30) as resp:
                table = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        print(f"lastmile top: cannot read the slice table: {exc}", file=sys.stderr)
        return 1
    if not isinstance(table, dict) or not isinstance(table.get("slices"), list):
        print("lastmile top: not a slice table (replay --summary-out, or GET /v1/slices)", file=sys.stderr)
        return 1
    ranked = top_slices(table, args.k, metrics=[args.metric] if args.metric else None)
    print(f"{'score':>7}  {'slice':<44} {'metric':<10} {'n':>8} {'share':>6} {'rate':>6} {'rest':>6} "
          f"{'window 95% interval':>22}")
    for e in ranked:
        desc = ", ".join(f"{k}={v}" for k, v in e["slice"].items())
        w = e["window"]
        interval = f"[{w['lower']:.3f},{w['upper']:.3f}]" if w["lower"] is not None else "-"
        rest = f"{e['rest']:.3f}" if e["rest"] is not None else "-"
        print(f"{e['score']:7.3f}  {desc[:44]:<44} {e['metric']:<10} {e['n']:>8,} {e['share']:6.1%} "
              f"{e['value']:6.3f} {rest:>6} {interval:>22}")
    print("(ranked by SliceLine's score, effect against support: exploration, never an alert)")
    return 0


def _cmd_audit(args: argparse.Namespace) -> int:
    from monitor.audit import run_audit
    from monitor.config import ConfigError

    try:
        return run_audit(args.files, args.config, args.out, progress=False if args.quiet else None)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"lastmile audit: {exc}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lastmile", description=__doc__)
    parser.add_argument("--version", action="version", version=f"lastmile {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("check-config", help="validate a config and print every problem with its path")
    p.add_argument("config_file", metavar="CFG")
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser("run", help="the daemon: Kafka in; /metrics, health, slice and alert API out",
                       description="Every config key can be overridden from the environment: "
                                   "LASTMILE__SECTION__KEY=value (e.g. LASTMILE__KAFKA__BOOTSTRAP_SERVERS=broker:9092).")
    p.add_argument("--config", required=True, metavar="CFG")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("replay", help="run the engine over JSONL event files")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--config", required=True, metavar="CFG")
    p.add_argument("--alerts-out", metavar="PATH", help="write every alert transition as JSONL")
    p.add_argument("--summary-out", metavar="PATH", help="write the final slice table as JSON")
    p.add_argument("--verdicts-out", metavar="PATH",
                   help="write every bias-bounty verdict record (submitted, then its verdict) as JSONL")
    p.add_argument("--quiet", action="store_true", help="do not print alerts as they happen")
    p.set_defaults(func=_cmd_replay)

    p = sub.add_parser("submit", help="send a bias-bounty submission (a group and a claim) to a running daemon")
    p.add_argument("--url", default="http://127.0.0.1:9464", help="the daemon's HTTP address")
    p.add_argument("--token-env", metavar="VAR", help="environment variable holding your bearer token")
    p.add_argument("--token-file", metavar="PATH", help="file holding your bearer token")
    p.add_argument("--model", required=True)
    p.add_argument("--group", required=True,
                   help="text form (accent in {scottish, nigerian-english} and noise = ward-b) or a JSON tree")
    p.add_argument("--claim", choices=("disparity", "drift"), default="disparity")
    p.add_argument("--metric", default=None, help="default: the model's first metric")
    p.add_argument("--min-gap", type=float, required=True, help="the gap claimed, in metric units (0.05 = 5 points)")
    p.add_argument("--max-outcomes", type=int, default=5000, help="group outcomes to test on at most")
    p.add_argument("--deadline", default="30d", help="how long to test for (e.g. 30d)")
    p.add_argument("--id", default=None, help="default: a random id")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("audit", help="an HTML report (and its JSON) of an evaluator's data set, by the replay engine")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--config", required=True, metavar="CFG")
    p.add_argument("--out", default="report.html", metavar="PATH", help="the report; its JSON goes beside it")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_audit)

    p = sub.add_parser("top", help="the worst slices by SliceLine score (shown, never alerted on)")
    p.add_argument("--url", default="http://127.0.0.1:9464", help="a running daemon's HTTP address")
    p.add_argument("--summary", metavar="PATH", help="a slice table from replay --summary-out instead")
    p.add_argument("-k", type=int, default=10, help="how many")
    p.add_argument("--metric", default=None)
    p.set_defaults(func=_cmd_top)

    p = sub.add_parser("demo", help="a seeded speech service with a last-mile incident, no servers needed")
    p.add_argument("--config", default=None, metavar="CFG", help="default: the built-in speech config")
    p.add_argument("--outcomes", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--port", type=int, default=9464, help="serve /metrics here while running (0: off)")
    p.add_argument("--seconds", type=float, default=15.0, help="pace the stream over about this long (0: flat out)")
    p.add_argument("--report", default="lastmile-demo-report.html", metavar="PATH",
                   help="write the audit report here at the end ('' for none)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("bench", help="engine throughput beside JSON decoding, and memory per slice / pending prediction")
    p.add_argument("--config", default=None, metavar="CFG", help="default: config/asr.yaml's built-in copy")
    p.add_argument("--outcomes", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=1)
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
