"""Configuration: schema, defaults, loading and validation with the path of every bad key.

A config is YAML. Structure and types are checked by pydantic models (unknown keys are
errors, so a typo never silently falls back to a default); cross-field rules (a slice
combination naming an undeclared dimension, FPR without a positive class, ...) are
checked afterwards by :func:`semantic_problems`. :func:`load_config` raises
:class:`ConfigError` carrying *every* problem, each as ``path: message``.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from monitor.sinks import AlertingLinks, DeliveryConfig, Secret, SinkConfig

MetricName = Literal["error_rate", "fpr", "fnr", "wer", "cer", "abs_error", "squared_error"]
#: metrics whose per-outcome error is naturally bounded by its units (so a cap is implied)
BOUNDED_METRICS = {"error_rate": 1.0, "fpr": 1.0, "fnr": 1.0, "wer": 1.0, "cer": 1.0}

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """Seconds from a number or a string such as ``"90s"``, ``"15m"``, ``"7d"``.

    >>> parse_duration("1.5h"), parse_duration(30), parse_duration("250ms")
    (5400.0, 30.0, 0.25)
    """
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '15m', '7d'")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    else:
        raise ValueError(f"{value!r} is not a duration (use seconds or e.g. '90s', '15m', '12h', '7d')")
    if seconds <= 0:
        raise ValueError("a duration must be positive")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FieldMap(_Strict):
    """Where each event field is found (top-level keys of the JSON object)."""

    type: str = "type"
    id: str = "id"
    ts: str = "ts"
    model: str = "model"
    tenant: str = "tenant"
    attributes: str = "attributes"
    output: str = "output"
    label: str = "label"
    errors: str = "errors"
    units: str = "units"


class EventsConfig(_Strict):
    fields: FieldMap = FieldMap()
    #: events longer than this many bytes are rejected as ``oversized``
    max_event_bytes: int = Field(65536, ge=64)
    #: if set, only these model names are accepted (others: ``unknown_model``)
    models: list[str] | None = None
    #: model name given to events that carry none; ``null`` rejects them as ``missing_model``
    default_model: str | None = None
    #: distinct model names accepted before new ones are rejected as ``model_limit``
    max_models: int = Field(64, ge=1)
    #: longest accepted string in ``output`` / ``label`` (characters)
    max_text_chars: int = Field(20000, ge=1)
    #: events timed further ahead than this are rejected as ``future_timestamp`` and move no
    #: watermark: ahead of the wall clock in the daemon, of the stream's robust watermark in replay
    max_future: Duration = 86400.0


class JoinConfig(_Strict):
    #: a prediction (or early feedback) waits this long in event time, then expires
    ttl: Duration = 7 * 86400.0
    #: pending entries kept at most; the oldest is evicted (and counted) beyond it
    max_pending: int = Field(1_000_000, ge=1)


class TextConfig(_Strict):
    lowercase: bool = True
    strip_punctuation: bool = True
    #: keep apostrophes inside words ("don't") when stripping punctuation
    keep_apostrophes: bool = True


class MetricsConfig(_Strict):
    names: list[MetricName] = Field(default_factory=lambda: list[MetricName](["error_rate"]), min_length=1)
    #: the positive class of a binary classifier (string or integer); enables fpr / fnr
    positive_class: str | int | None = None
    text: TextConfig = TextConfig()
    #: per-outcome error is capped at ``error_cap * units`` for the detectors
    #: (default 1.0 for error_rate/fpr/fnr/wer/cer; required for abs_error/squared_error)
    error_cap: float | None = Field(None, gt=0)
    #: an outcome with more units (e.g. reference words) counts in the detectors as this
    #: many units at its own rate; the estimates themselves always use the exact sums
    max_units_per_outcome: float = Field(1.0, gt=0)


class AdmissionConfig(_Strict):
    """Admission of dimension values by frequency once ``max_values_per_dimension`` is full."""

    #: candidate values counted per model × dimension (Space-Saving counters: the memory bound)
    candidates: int = Field(1000, ge=1)
    #: guaranteed occurrences a candidate needs to take a place (and twice the weakest value's count)
    min_count: int = Field(100, ge=1)
    #: value counts halve every this many outcomes of the model, so faded values make room
    half_life: int = Field(100_000, ge=10)


class ProposalsConfig(_Strict):
    """Groups lastmile proposes itself from the ranking, tested on later outcomes (monitor.proposals)."""

    #: off by default: each proposal takes a place in the e-LOND sequence shared with submitters
    enabled: bool = False
    #: propose after every this many outcomes
    every: int = Field(50_000, ge=1000)
    #: proposals each time at most
    count: int = Field(3, ge=1, le=20)
    #: the gap each proposal claims (default: the model's disparity tolerance)
    min_gap: float | None = Field(None, gt=0, lt=1)
    max_outcomes: int = Field(5000, ge=100)
    deadline: Duration = 30 * 86400.0


class SlicesConfig(_Strict):
    dimensions: list[str] = Field(default_factory=list)
    #: which combinations of dimensions to track; the whole population ``[]`` is always tracked.
    #: ``auto``: every combination of up to ``max_level`` dimensions (the slice lattice)
    combinations: list[list[str]] = Field(default_factory=list)
    #: with ``combinations: auto``: the deepest intersections tracked (1, 2 or 3 dimensions)
    max_level: int = Field(2, ge=1, le=3)
    proposals: ProposalsConfig = ProposalsConfig()
    #: values tracked per model and dimension; beyond it, values are admitted by frequency
    max_values_per_dimension: int = Field(200, ge=1)
    admission: AdmissionConfig = AdmissionConfig()
    max_slices: int = Field(20000, ge=1)
    #: below this many outcomes a slice is "insufficient data" and never alerted on
    min_samples: int = Field(200, ge=1)
    #: effective number of recent outcomes in the windowed estimate (exponential decay)
    window: int = Field(1000, ge=10)

    @model_validator(mode="before")
    @classmethod
    def _lattice(cls, data: Any) -> Any:
        """``combinations: auto`` becomes the explicit list, by level then in declared order."""
        if isinstance(data, dict) and data.get("combinations") == "auto":
            dims, level = data.get("dimensions", []), data.get("max_level", 2)
            if isinstance(dims, list) and all(isinstance(d, str) for d in dims) and level in (1, 2, 3):
                data = {**data, "combinations": [list(c) for k in range(1, level + 1)
                                                 for c in itertools.combinations(dims, k)]}
        return data


class ReferenceOutcomes(_Strict):
    #: the model's first this many outcomes (all slices together) are its reference period
    outcomes: int = Field(ge=10)


class ReferenceTime(_Strict):
    start: str | float
    end: str | float


class BaselineConfig(_Strict):
    #: ``reference``: learned from the model's reference period; ``file``: given per slice
    #: (a service card); ``none``: no drift decisions. Slices with no baseline of their own
    #: inherit their nearest ancestors' (the largest of them).
    source: Literal["reference", "file", "none"] = "reference"
    file: str | None = None
    #: for ``file``: slices the file does not list may learn one in the reference period too
    fallback_to_reference: bool = True
    #: the model's reference period: its first N outcomes, or a time range
    reference: Union[ReferenceOutcomes, ReferenceTime] = ReferenceOutcomes(outcomes=50_000)
    #: a slice learns a baseline of its own only from at least this many reference outcomes;
    #: thinner slices (and slices first seen later) inherit one from their ancestors
    min_outcomes: int = Field(1000, ge=10)
    #: a learned baseline is the reference estimate plus this many standard errors
    #: (outcome-level, so correlated words within an utterance are respected)
    margin_sigmas: float = Field(2.0, ge=0)


class DecisionConfig(_Strict):
    enabled: bool = True
    #: absolute tolerance in metric units (e.g. 0.03 = three WER points)
    tolerance: float = Field(0.03, ge=0)
    #: relative tolerance as a fraction of the reference (the larger of the two applies)
    relative_tolerance: float = Field(0.0, ge=0)


class AlertingConfig(_Strict):
    #: expected false alerts per million outcomes of a model, summed over all its slices,
    #: metrics and both kinds of decision (the guarantee stated in the README)
    false_alarms_per_million: float = Field(1.0, gt=0)
    #: a firing alert resolves once the slice is back within this fraction of the tolerance
    resolve_fraction: float = Field(0.5, ge=0, lt=1)
    #: evidence needed to resolve, as an average run length (default: the firing one)
    resolve_arl: float | None = Field(None, gt=1)
    #: never alert on slices made of overflow (``__other__``) values
    alert_on_overflow: bool = False


class ModelOverride(_Strict):
    drift: DecisionConfig | None = None
    disparity: DecisionConfig | None = None
    min_samples: int | None = Field(None, ge=1)


class ReplayConfig(_Strict):
    #: sort events by event time before processing (files may be in any order)
    order_by_event_time: bool = True
    batch_size: int = Field(4096, ge=1)
    #: events held in memory while sorting by event time; more are sorted in runs of this many,
    #: spilled to temporary files and merged (memory does not grow with the input)
    sort_buffer: int = Field(200_000, ge=1000)
    #: where those runs go (deleted at the end); default: the system's temporary directory ($TMPDIR)
    spill_directory: str | None = None
    #: input in event-time order but for events that come after at most this many later-stamped
    #: ones is fed as it is read, with no runs (about twice this many events in memory); an event
    #: later than that sends the replay through runs, from the start. 0: always through runs
    in_order_window: int = Field(4096, ge=0)


class HttpConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)
    #: most per-slice series exported; beyond it the least-used slices are left out (and counted)
    series_budget: int = Field(50_000, ge=10)


class TopicsConfig(_Strict):
    predictions: str | None = "predictions"
    feedback: str | None = "feedback"
    outcomes: str | None = None
    #: bias-bounty submissions: the daemon reads them, and ``POST /v1/submissions`` appends to it
    submissions: str | None = None


#: the one key of a pinned slice's description, ``{"group": <text form>}`` (not a dimension name)
PINNED_DIMENSION = "group"


class SubmissionsConfig(_Strict):
    """Bias bounties: outside evaluators submit a group and a claim (see README, "Bias bounties")."""

    #: the tokens document (``{file: path}`` or ``{env: VAR}``); set: ``POST /v1/submissions`` is on
    tokens: Secret | None = None
    #: false discovery rate across all submissions ever (e-LOND); separate from the alert budget
    alpha: float = Field(0.05, gt=0, lt=1)
    #: request bodies longer than this are refused (413)
    max_body_bytes: int = Field(16384, ge=256, le=1_048_576)
    #: per submitter: requests per minute, and the burst allowed at once (429 beyond)
    rate_per_minute: float = Field(6.0, gt=0)
    burst: int = Field(10, ge=1)
    #: per submitter: submissions still pending at once (429 beyond)
    max_active: int = Field(20, ge=1)
    #: all submitters together: what the engine tests at once (429 beyond; see README for the cost)
    max_pending: int = Field(200, ge=1)
    #: a group with fewer outcomes than this by its deadline is ``untestable``
    min_outcomes: int = Field(100, ge=1)
    #: an accepted submission's test starts this many seconds after the API took it (its ``ts``):
    #: the daemon has read it by then, so it counts the same outcomes a replay of the topics does
    start_delay: float = Field(10.0, ge=0, le=3600)
    #: a confirmed group becomes a tracked slice (``{group: <text>}``) with its own drift and
    #: disparity detectors; a share of the false-alarm budget is kept for these slices
    pin: bool = True
    #: at most this many pinned slices (the budget's share is split between them equally)
    max_pinned: int = Field(16, ge=1, le=1000)


class InvalidLimitConfig(_Strict):
    #: stop (with a clear error) when more than this fraction of the last ``window`` events is invalid
    ratio: float = Field(0.9, gt=0, le=1)
    window: int = Field(1000, ge=1)


class KafkaConfig(_Strict):
    bootstrap_servers: str | list[str] = "localhost:9092"
    group_id: str = "lastmile"
    topics: TopicsConfig = TopicsConfig()
    #: invalid events are produced here with the reason in the ``lastmile-reason`` header (null: off)
    dead_letter_topic: str | None = None
    invalid_limit: InvalidLimitConfig = InvalidLimitConfig()
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    max_poll_records: int = Field(2000, ge=1)
    #: the consumer runs in a second process that fetches the next poll's records while these are
    #: processed (reading and monitoring overlap on two cores; false: one process)
    read_ahead: bool = True
    max_poll_interval: Duration = 300.0
    session_timeout: Duration = 10.0
    #: pause partitions whose event time runs this far ahead of the slowest partition with data
    max_event_time_skew: Duration = 3600.0
    #: a partition with nothing new to read stops holding back event time after this long; until
    #: then its last event time bounds what reaches the detectors, so that events produced while
    #: the others are being read still go through in event-time order (as replay's)
    idle_partition: Duration = 5.0
    #: passed to kafka-python unchanged (security_protocol, sasl_mechanism, sasl_plain_username,
    #: sasl_plain_password, ssl_cafile, ssl_certfile, ssl_keyfile, client_id, ...)
    client: dict[str, Any] = Field(default_factory=dict)


class CheckpointConfig(_Strict):
    directory: str = "lastmile-state"
    #: checkpoint (and then commit offsets) at least this often
    interval: Duration = 10.0
    keep: int = Field(2, ge=1)


class Config(_Strict):
    version: Literal[1] = 1
    events: EventsConfig = EventsConfig()
    join: JoinConfig = JoinConfig()
    metrics: MetricsConfig = MetricsConfig()
    slices: SlicesConfig = SlicesConfig()
    baseline: BaselineConfig = BaselineConfig()
    drift: DecisionConfig = DecisionConfig()
    disparity: DecisionConfig = DecisionConfig(tolerance=0.05)
    alerting: AlertingConfig = AlertingConfig()
    models: dict[str, ModelOverride] = Field(default_factory=dict)
    replay: ReplayConfig = ReplayConfig()
    http: HttpConfig = HttpConfig()
    kafka: KafkaConfig = KafkaConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    #: SIGTERM/SIGINT: finish the batch, checkpoint, commit and exit within this long
    shutdown_grace: Duration = 30.0
    #: where the daemon delivers alerts itself (besides /metrics for Prometheus rules)
    sinks: list[SinkConfig] = Field(default_factory=list)
    submissions: SubmissionsConfig = SubmissionsConfig()
    delivery: DeliveryConfig = DeliveryConfig()
    alert_links: AlertingLinks = AlertingLinks()

    #: directory of the config file, to resolve relative paths (not a config key)
    base_dir: str = Field(".", exclude=True)

    @property
    def primary_metric(self) -> str:
        return self.metrics.names[0]

    def error_cap(self) -> float:
        cap = self.metrics.error_cap
        if cap is not None:
            return cap
        return max(BOUNDED_METRICS.get(name, 1.0) for name in self.metrics.names)

    def resolve_path(self, path: str) -> Path:
        p = Path(path)
        return p if p.is_absolute() else Path(self.base_dir) / p


class ConfigError(Exception):
    """A config that cannot be used; ``problems`` lists ``(path, message)`` pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {path or '<root>'}: {msg}" for path, msg in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


def _loc_to_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("ReferenceOutcomes", "ReferenceTime") or str(part).startswith(("function-", "union[")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def semantic_problems(cfg: Config) -> list[tuple[str, str]]:
    """Cross-field rules the schema cannot express."""
    problems: list[tuple[str, str]] = []
    dims = cfg.slices.dimensions
    if len(set(dims)) != len(dims):
        problems.append(("slices.dimensions", "dimensions must be distinct"))
    if PINNED_DIMENSION in dims:
        problems.append((f"slices.dimensions[{dims.index(PINNED_DIMENSION)}]",
                         f"{PINNED_DIMENSION!r} is reserved: it names the slices of confirmed bias-bounty groups"))
    for i, combo in enumerate(cfg.slices.combinations):
        for j, dim in enumerate(combo):
            if dim not in dims:
                problems.append((f"slices.combinations[{i}][{j}]", f"unknown dimension {dim!r} (declared: {dims})"))
        if len(set(combo)) != len(combo):
            problems.append((f"slices.combinations[{i}]", "a dimension appears twice"))
    seen: set[frozenset[str]] = set()
    for i, combo in enumerate(cfg.slices.combinations):
        key = frozenset(combo)
        if key in seen:
            problems.append((f"slices.combinations[{i}]", f"combination {combo} is listed twice"))
        seen.add(key)
    names = cfg.metrics.names
    if len(set(names)) != len(names):
        problems.append(("metrics.names", "a metric is listed twice"))
    if ("fpr" in names or "fnr" in names) and cfg.metrics.positive_class is None:
        problems.append(("metrics.positive_class", "fpr/fnr need the positive class of the binary classifier"))
    if any(n in ("abs_error", "squared_error") for n in names) and cfg.metrics.error_cap is None:
        problems.append(("metrics.error_cap", "abs_error/squared_error are unbounded: set the largest error per unit "
                                              "the detectors should count (e.g. 10.0)"))
    if any(n in ("wer", "cer") for n in names) and len(names) > 1:
        problems.append(("metrics.names", "wer/cer compare texts; they cannot be mixed with other metrics"))
    if cfg.baseline.source == "file":
        if not cfg.baseline.file:
            problems.append(("baseline.file", "baseline.source is 'file' but no file is given"))
        elif not cfg.resolve_path(cfg.baseline.file).is_file():
            problems.append(("baseline.file", f"no such file: {cfg.resolve_path(cfg.baseline.file)}"))
    ref = cfg.baseline.reference
    if isinstance(ref, ReferenceOutcomes) and cfg.baseline.min_outcomes > ref.outcomes:
        problems.append(("baseline.min_outcomes", f"{cfg.baseline.min_outcomes} is more than the whole reference period "
                                                  f"(baseline.reference.outcomes = {ref.outcomes}): no slice could learn "
                                                  "a baseline"))
    if isinstance(cfg.baseline.reference, ReferenceTime):
        from monitor.events import parse_ts

        bounds = []
        for bound in ("start", "end"):
            try:
                bounds.append(parse_ts(getattr(cfg.baseline.reference, bound)))
            except ValueError as exc:
                problems.append((f"baseline.reference.{bound}", str(exc)))
        if len(bounds) == 2 and bounds[0] >= bounds[1]:
            problems.append(("baseline.reference", "start must be before end"))
    cap = cfg.error_cap()
    for path, dec in (("drift", cfg.drift), ("disparity", cfg.disparity)):
        if dec.enabled and dec.tolerance >= cap:
            problems.append((f"{path}.tolerance", f"must be below the error cap {cap}"))
    for model in cfg.models:
        if cfg.events.models is not None and model not in cfg.events.models:
            problems.append((f"models.{model}", f"not in events.models {cfg.events.models}"))
    sink_names = [s.name for s in cfg.sinks]
    for i, sink in enumerate(cfg.sinks):
        if sink_names.count(sink.name) > 1:
            problems.append((f"sinks[{i}].name", f"sink name {sink.name!r} is used twice"))
        if sink.type in ("alertmanager", "webhook") and not sink.url:
            problems.append((f"sinks[{i}].url", f"required for {sink.type}"))
        if sink.type in ("pagerduty", "opsgenie") and sink.secret is None:
            problems.append((f"sinks[{i}].secret", f"{sink.type} needs its key: {{env: VAR}} or {{file: path}}"))
        if sink.type == "slack" and sink.secret is None and not sink.url:
            problems.append((f"sinks[{i}].secret", "slack needs its webhook URL, as `secret` (it is one) or `url`"))
    if cfg.metrics.max_units_per_outcome < 1 and cfg.primary_metric in ("wer", "cer"):
        problems.append(("metrics.max_units_per_outcome", "must be at least 1 word/character"))
    if cfg.submissions.tokens is not None and not cfg.kafka.topics.submissions:
        problems.append(("submissions.tokens", "the submission API appends to kafka.topics.submissions: set it too"))
    return problems


ENV_PREFIX = "LASTMILE__"


def env_overrides(environ: Mapping[str, str]) -> dict[tuple[str, ...], tuple[str, Any]]:
    """``LASTMILE__KAFKA__BOOTSTRAP_SERVERS=broker:9092`` → {("kafka", "bootstrap_servers"): (var, value)}.

    Sections and keys are separated by a double underscore and lower-cased; values are read as
    YAML scalars or flow collections (``true``, ``5``, ``[a, b]``, ``{x: 1}``), so every config
    value can be set from a container's environment.

    >>> env_overrides({"LASTMILE__JOIN__TTL": "2d", "LASTMILE__SLICES__MIN_SAMPLES": "50", "HOME": "/root"})
    {('join', 'ttl'): ('LASTMILE__JOIN__TTL', '2d'), ('slices', 'min_samples'): ('LASTMILE__SLICES__MIN_SAMPLES', 50)}
    """
    out = {}
    for var, raw in environ.items():
        if not var.startswith(ENV_PREFIX):
            continue
        path = tuple(part.lower() for part in var[len(ENV_PREFIX):].split("__") if part)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if path:
            out[path] = (var, value)
    return out


def _apply_overrides(data: dict[str, Any], overrides: dict[tuple[str, ...], tuple[str, Any]]) -> None:
    for path, (_var, value) in sorted(overrides.items()):
        node = data
        for key in path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[path[-1]] = value


def parse_config(data: Any, source: str = "<config>", base_dir: str = ".",
                 environ: Mapping[str, str] | None = None) -> Config:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [("", f"the config must be a mapping, got {type(data).__name__}")])
    overrides = env_overrides(environ) if environ is not None else {}
    if overrides:
        data = copy.deepcopy(data)
        _apply_overrides(data, overrides)
    by_path = {".".join(path): var for path, (var, _) in overrides.items()}

    def where(path: str) -> str:
        var = next((v for p, v in by_path.items() if path == p or path.startswith(p + ".") or path.startswith(p + "[")), None)
        return f"{path} (from {var})" if var else path

    try:
        cfg = Config.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        problems = [(where(_loc_to_path(err["loc"])), err["msg"]) for err in exc.errors()]
        raise ConfigError(source, problems) from None
    problems = [(where(path), msg) for path, msg in semantic_problems(cfg)]
    if problems:
        raise ConfigError(source, problems)
    return cfg


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Load and validate a YAML config; ``environ`` (e.g. ``os.environ``) may override any key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(str(path), [("", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(str(path), [("", f"not valid YAML: {where}{getattr(exc, 'problem', exc)}")]) from None
    return parse_config(data, str(path), str(path.parent), environ)


def default_config() -> Config:
    return parse_config({})
