"""Where alerts are delivered: one class per destination, each building its API's payload.

A sink turns an alert record (:class:`monitor.alerts.Alert` as a dict) into one HTTP request:

* ``alertmanager`` — Alertmanager API v2, ``POST /api/v2/alerts`` with labels, annotations,
  ``startsAt``/``endsAt`` and ``generatorURL``; firing alerts are re-sent while they fire, as
  Alertmanager expects (it resolves alerts that are not re-sent within ``resolve_timeout``);
* ``pagerduty`` — Events API v2, ``trigger`` / ``resolve`` with ``dedup_key`` = the alert's
  fingerprint, so a repeated trigger never opens a second incident;
* ``opsgenie`` — create with ``alias`` = fingerprint, close by alias;
* ``slack`` — an incoming-webhook message;
* ``webhook`` — the alert record itself, as JSON.

One cause pages once: an alert explained by another firing one (``explained_by``: the same
slice's other kind, or an ancestor slice with the same outcomes) is not sent to the paging
sinks (PagerDuty, Opsgenie, Slack); Alertmanager receives it with the label ``incident`` = the
fingerprint of the alert that explains it, so routing grouped by ``incident`` puts both in one
notification; webhooks receive every record.

Secrets (routing keys, API keys, webhook URLs) come from an environment variable or a file
named in the config, are held only by the sink object, and are masked in everything it logs.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SEVERITY_PD = {"page": "critical", "ticket": "warning"}
SEVERITY_OPSGENIE = {"page": "P2", "ticket": "P4"}


class Secret(BaseModel):
    """A secret named, not written: ``{env: PD_ROUTING_KEY}`` or ``{file: /run/secrets/pd}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    env: str | None = None
    file: str | None = None

    def read(self, what: str) -> str:
        if self.env:
            value = os.environ.get(self.env)
            if not value:
                raise ValueError(f"{what}: environment variable {self.env} is not set")
            return value.strip()
        if self.file:
            try:
                return Path(self.file).read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"{what}: cannot read {self.file}: {exc.strerror}") from None
        raise ValueError(f"{what}: give `env` or `file`")


class SinkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    type: Literal["alertmanager", "pagerduty", "opsgenie", "slack", "webhook"]
    url: str | None = None  # API base / endpoint; defaults per type (PagerDuty, Opsgenie)
    secret: Secret | None = None  # routing key / API key / Slack webhook URL / webhook bearer token
    #: route by alert fields: only alerts whose severity and kind are listed reach this sink
    severities: list[str] = Field(default_factory=lambda: ["page", "ticket"])
    #: add ``submission`` to receive confirmed bias-bounty claims (opt-in)
    kinds: list[str] = Field(default_factory=lambda: ["drift", "disparity"])
    send_resolved: bool = True
    timeout_seconds: float = Field(10.0, gt=0)


class DeliveryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    max_attempts: int = Field(10, ge=1)
    backoff_initial_seconds: float = Field(1.0, gt=0)
    backoff_max_seconds: float = Field(300.0, gt=0)
    #: deliveries waiting at most; beyond it the oldest is dropped (and counted)
    outbox_max: int = Field(10_000, ge=1)
    #: Alertmanager: re-send firing alerts this often
    resend_seconds: float = Field(60.0, gt=0)


class AlertingLinks(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    #: templates filled from the alert: {model}, {metric}, {kind}, {fingerprint}, {alertname}
    dashboard: str | None = None
    runbook: str = "https://github.com/lastmile-monitor/lastmile/blob/main/deploy/runbooks/{alertname}.md"
    #: severity label per kind of alert
    severity: dict[str, str] = Field(default_factory=lambda: {"drift": "page", "disparity": "page",
                                                              "submission": "ticket"})


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    body: dict[str, Any] | list[Any]
    headers: dict[str, str]


#: a confirmed bias-bounty claim is one notification, not a condition that resolves: Alertmanager
#: lets it expire after this long
CONFIRMATION_TTL_SECONDS = 24 * 3600


def alertname(record: dict[str, Any]) -> str:
    return {"drift": "LastmileSliceDrift", "disparity": "LastmileSliceDisparity",
            "submission": "LastmileSubmissionConfirmed"}.get(record["kind"], "LastmileSliceAlert")


def enrich(record: dict[str, Any], links: AlertingLinks) -> dict[str, Any]:
    """The alert record with its severity and links, as every sink receives it."""
    out = dict(record)
    out["severity"] = links.severity.get(record["kind"], "page")
    fields = {"model": record["model"], "metric": record["metric"], "kind": record["kind"],
              "fingerprint": record["fingerprint"], "alertname": alertname(record)}
    out["runbook_url"] = links.runbook.format(**fields)
    if links.dashboard:
        out["dashboard_url"] = links.dashboard.format(**fields)
    return out


class Sink:
    #: receives alerts explained by another firing one (grouping them itself, or keeping a record)
    receives_explained = True

    def __init__(self, cfg: SinkConfig):
        self.cfg = cfg
        self.name = cfg.name
        self._secret = cfg.secret.read(f"sinks.{cfg.name}.secret") if cfg.secret else None

    def wants(self, record: dict[str, Any]) -> bool:
        if record["state"] == "resolved" and not self.cfg.send_resolved:
            return False
        if record.get("explained_by") is not None and not self.receives_explained:
            return False  # grouped under the alert that explains it, which has paged
        return record["severity"] in self.cfg.severities and record["kind"] in self.cfg.kinds

    def request(self, record: dict[str, Any]) -> Request:
        raise NotImplementedError

    def mask(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text


class AlertmanagerSink(Sink):
    def request(self, record: dict[str, Any]) -> Request:
        labels = {"alertname": alertname(record), "model": record["model"], "metric": record["metric"],
                  "kind": record["kind"], "severity": record["severity"],
                  "component": "submission" if record["kind"] == "submission" else "slice",
                  "incident": record.get("incident") or record["fingerprint"], **record["slice"]}
        alert = {"labels": labels,
                 "annotations": {"summary": record["summary"], "runbook_url": record["runbook_url"],
                                 "value": f"{record['value']:.6g}", "reference": f"{record['reference']:.6g}",
                                 "n": str(record["n"])},
                 "startsAt": record["ts"] if record["state"] == "firing" else record.get("started", record["ts"]),
                 "generatorURL": record.get("dashboard_url") or record["runbook_url"]}
        if record["state"] == "resolved":
            alert["endsAt"] = record["ts"]
        elif record["kind"] == "submission":
            ends = datetime.fromisoformat(record["ts"].replace("Z", "+00:00")) + timedelta(seconds=CONFIRMATION_TTL_SECONDS)
            alert["endsAt"] = ends.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        return Request("POST", (self.cfg.url or "").rstrip("/") + "/api/v2/alerts", [alert], {})  # url: checked


class PagerDutySink(Sink):
    receives_explained = False  # a page: one per cause

    def request(self, record: dict[str, Any]) -> Request:
        body: dict[str, Any] = {"routing_key": self._secret, "dedup_key": record["fingerprint"],
                                "event_action": "trigger" if record["state"] == "firing" else "resolve"}
        if record["state"] == "firing":
            body["payload"] = {"summary": record["summary"][:1024], "source": f"lastmile/{record['model']}",
                               "severity": SEVERITY_PD.get(record["severity"], "critical"),
                               "timestamp": record["ts"], "component": record["metric"], "group": record["model"],
                               "class": record["kind"], "custom_details": _details(record)}
            body["links"] = [{"href": record["runbook_url"], "text": "runbook"}] + (
                [{"href": record["dashboard_url"], "text": "dashboard"}] if record.get("dashboard_url") else [])
        url = self.cfg.url or "https://events.pagerduty.com/v2/enqueue"
        return Request("POST", url, body, {})


class OpsgenieSink(Sink):
    receives_explained = False  # a page: one per cause

    def request(self, record: dict[str, Any]) -> Request:
        base = (self.cfg.url or "https://api.opsgenie.com").rstrip("/")
        headers = {"Authorization": f"GenieKey {self._secret}"}
        if record["state"] == "firing":
            body = {"message": record["summary"][:130], "alias": record["fingerprint"],
                    "description": f"{record['summary']}\nrunbook: {record['runbook_url']}",
                    "priority": SEVERITY_OPSGENIE.get(record["severity"], "P2"), "source": "lastmile",
                    "tags": ["lastmile", record["kind"], record["model"]], "details": _details(record, text=True)}
            return Request("POST", f"{base}/v2/alerts", body, headers)
        return Request("POST", f"{base}/v2/alerts/{record['fingerprint']}/close?identifierType=alias",
                       {"source": "lastmile", "note": record["summary"]}, headers)


class SlackSink(Sink):
    receives_explained = False  # a page: one per cause

    def request(self, record: dict[str, Any]) -> Request:
        icon = ":rotating_light:" if record["state"] == "firing" else ":white_check_mark:"
        links = f"<{record['runbook_url']}|runbook>" + (
            f" · <{record['dashboard_url']}|dashboard>" if record.get("dashboard_url") else "")
        summary = record["summary"].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")  # Slack markup
        text = f"{icon} *{record['state'].upper()}* {record['kind']}: {summary} — {links}"
        return Request("POST", self._secret or self.cfg.url or "", {"text": text}, {})


class WebhookSink(Sink):
    def request(self, record: dict[str, Any]) -> Request:
        headers = {"Authorization": f"Bearer {self._secret}"} if self._secret else {}
        return Request("POST", self.cfg.url or "", record, headers)


def _details(record: dict[str, Any], text: bool = False) -> dict[str, Any]:
    details = {"slice": record["slice"], "value": record["value"], "reference": record["reference"],
               "n": record["n"], "tolerance": record["tolerance"], "fingerprint": record["fingerprint"]}
    return {k: (json.dumps(v) if not isinstance(v, str) else v) for k, v in details.items()} if text else details


SINK_TYPES = {"alertmanager": AlertmanagerSink, "pagerduty": PagerDutySink, "opsgenie": OpsgenieSink,
              "slack": SlackSink, "webhook": WebhookSink}


def build_sink(cfg: SinkConfig) -> Sink:
    """The sink for a validated entry (``monitor.config`` checks urls and secrets, with paths)."""
    return SINK_TYPES[cfg.type](cfg)
