"""Monitoring as code (deploy/monitoring/): the alert rules, their PrometheusRule and the Grafana
dashboard, checked against what a real sidecar exposes.

- Every metric name and every label a rule or a panel selects, groups by or matches on exists in
  a real scrape of `sendonce-server` (a child process) after Delivers that were delivered,
  exhausted, failed permanently, refused by an open breaker and refused as NOT_FOUND: a renamed
  metric or label turns this red. Labels Prometheus adds to every series (`job`, `instance`, ...)
  and `up` are Prometheus', not the sidecar's.
- The PrometheusRule holds exactly the groups of alerts.yaml (it is generated from it).
- Every alert has a severity, a summary and a description that links an existing section of
  docs/failures.md, and unit tests in alerts_test.yaml that expect it to fire and not to fire.
- Every dashboard query is PromQL that Prometheus itself accepts (`promtool check rules`, which
  `make test-alerts` also runs on alerts.yaml and its tests), every panel and variable reads the
  `${datasource}` variable, and no panel overlaps another.
- End to end: a real Prometheus (Debian's package, as promtool) scrapes a real sidecar whose
  receivers fail in every way the alerts watch; every alert goes pending or firing for the right
  receiver or instance, and every dashboard query answers series.

promtool and prometheus are required under CI=true (.ci/run installs them); elsewhere the tests
that need them skip, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import httpx
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sendonce.v1 import delivery_pb2 as pb
from tests.server.process import Children, free_tcp_port
from tests.support.http_receiver import HttpReceiver, Reply
from tests.support.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "alerts.yaml"
RULE_TESTS = MONITORING / "alerts_test.yaml"
OPERATOR_RULE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
FAILURES = ROOT / "docs" / "failures.md"

# Series and labels that Prometheus makes, not the sidecar: `up` per target; `job`, `instance`
# and the Kubernetes target labels on every series; `le` is the histogram buckets' own label.
PROMETHEUS_SERIES = {"up"}
PROMETHEUS_LABELS = {"job", "instance", "namespace", "pod", "container", "service", "endpoint"}
# Grafana's variables, replaced by a plain value before the query is parsed.
GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b")
SEVERITIES = {"critical", "warning", "info"}
NOTE = pb.Notification(subject="monitoring check", body="a test")

Manifest = dict[str, Any]
T = TypeVar("T")


# --- what a real sidecar exposes --------------------------------------------------------------


@dataclass
class Exposed:
    """One scrape: for every sample name, the label names and the values of each label."""

    labels: dict[str, dict[str, set[str]]] = field(default_factory=dict)

    def add(self, name: str, labels: dict[str, str]) -> None:
        seen = self.labels.setdefault(name, {})
        for label, value in labels.items():
            seen.setdefault(label, set()).add(value)


def receivers_file(failing_port: int, refusing_url: str) -> str:
    return f"""
[[receivers]]
name = "ok"
type = "noop"

[[receivers]]
name = "down"
type = "webhook"
[receivers.retry]
max_attempts = 2
initial_backoff = 0.0
[receivers.breaker]
failures = 2
open_seconds = 600
[receivers.settings]
url = "http://127.0.0.1:{failing_port}/nobody-listens"

[[receivers]]
name = "refusing"
type = "webhook"
[receivers.settings]
url = "{refusing_url}"
"""


async def scrape_after_delivers(config: Path) -> tuple[str, list[pb.Outcome.ValueType]]:
    """Start a sidecar, Deliver so that every outcome the rules name is counted, scrape it."""
    metrics = f"127.0.0.1:{free_tcp_port()}"
    async with Children() as children, HttpReceiver(400) as refusing:
        await asyncio.to_thread(config.write_text, receivers_file(free_tcp_port(), refusing.url))
        sidecar = await children.replica("--config", str(config), "--metrics-listen", metrics)
        outcomes: list[pb.Outcome.ValueType] = []
        async with sidecar.stub() as stub:
            for uid, channel in [
                ("m-1", "ok"),  # delivered
                ("m-2", "down"),  # failed: nothing listens
                ("m-2", "down"),  # exhausted (max_attempts = 2); the breaker opens
                ("m-3", "down"),  # circuit_open
                ("m-4", "refusing"),  # failed_permanent: HTTP 400
            ]:
                request = pb.DeliverRequest(uid=uid, channel=channel, notification=NOTE)
                answer = await stub.Deliver(request, timeout=30)
                outcomes.append(answer.outcome)
            with pytest.raises(Exception, match="NOT_FOUND"):  # a gRPC error code other than OK
                await stub.Deliver(
                    pb.DeliverRequest(uid="m-5", channel="nobody", notification=NOTE), timeout=10
                )
        async with httpx.AsyncClient() as client:
            reply = await client.get(f"http://{metrics}/metrics", timeout=10)
        reply.raise_for_status()
        await sidecar.terminate()
    return reply.text, outcomes


@pytest.fixture(scope="module")
def exposed(tmp_path_factory: pytest.TempPathFactory) -> Exposed:
    config = tmp_path_factory.mktemp("monitoring") / "receivers.toml"
    text, outcomes = asyncio.run(scrape_after_delivers(config))
    assert outcomes == [
        pb.OUTCOME_DELIVERED,
        pb.OUTCOME_FAILED,
        pb.OUTCOME_EXHAUSTED,
        pb.OUTCOME_CIRCUIT_OPEN,
        pb.OUTCOME_FAILED_PERMANENT,
    ]
    found = Exposed()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.add(sample.name, sample.labels)
    return found


# --- what the rules and the dashboard use -----------------------------------------------------


@dataclass
class Use:
    """A query's selectors (metric name -> its matchers) and the labels it groups or joins by."""

    where: str
    query: str
    selectors: list[tuple[str, list[promql_parser.Matcher]]] = field(default_factory=list)
    grouping: set[str] = field(default_factory=set)


def uses_of(where: str, query: str) -> Use:
    use = Use(where, query)
    expression = promql_parser.parse(GRAFANA_INTERVALS.sub("5m", query))

    def visit(node: promql_parser.Expr) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"{where}: a selector without a metric name: {query}"
            use.selectors.append((node.name, list(node.matchers.matchers)))
        elif isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            use.grouping.update(node.modifier.labels)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            matching = node.modifier.matching
            if matching is not None:
                use.grouping.update(matching.labels)

    promql_parser.walk(expression, visit)
    return use


def alert_rules() -> list[Manifest]:
    with RULES.open() as file:
        groups = yaml.safe_load(file)["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard() -> Manifest:
    with DASHBOARD.open() as file:
        loaded: Manifest = json.load(file)
    return loaded


def dashboard_panels() -> list[Manifest]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>\w+)\)$")


def dashboard_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable (as its selector)."""
    for panel in dashboard_panels():
        for target in panel["targets"]:
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            match = LABEL_VALUES.match(variable["query"]["query"])
            assert match, f"variable {variable['name']}: only label_values(selector, label)"
            label = match["label"]
            yield f"variable {variable['name']}", f"sum by ({label}) ({match['selector']})"


USES = [uses_of(f"alert {rule['alert']}", rule["expr"]) for rule in alert_rules()] + [
    uses_of(where, query) for where, query in dashboard_queries()
]


def problems_with(use: Use, exposed: Exposed) -> list[str]:
    problems: list[str] = []
    names = {name for name, _ in use.selectors}
    for name, matchers in use.selectors:
        if name in PROMETHEUS_SERIES:
            continue
        if name not in exposed.labels:
            problems.append(f"no series {name}")
            continue
        labels = exposed.labels[name]
        for matcher in matchers:
            if matcher.name in PROMETHEUS_LABELS or "$" in matcher.value:
                continue  # Prometheus' own label, or a dashboard variable's value
            values = labels.get(matcher.name)
            if values is None:
                problems.append(f"{name} has no label {matcher.name}")
                continue
            # A value a matcher names, even to exclude it, must be one the sidecar exposes.
            exact = matcher.op in (promql_parser.MatchOp.Equal, promql_parser.MatchOp.NotEqual)
            for wanted in [matcher.value] if exact else matcher.value.split("|"):
                if wanted not in values:
                    problems.append(f'no {name}{{{matcher.name}="{wanted}"}}: {sorted(values)}')
    known = {label for name in names for label in exposed.labels.get(name, {})}
    for label in sorted(use.grouping - PROMETHEUS_LABELS - {"le"} - known):
        problems.append(f"grouped by {label}, a label of none of {sorted(names)}")
    return problems


@pytest.mark.parametrize("use", USES, ids=[use.where for use in USES])
def test_every_metric_and_label_used_is_exposed_by_a_real_sidecar(
    use: Use, exposed: Exposed
) -> None:
    problems = problems_with(use, exposed)
    assert not problems, f"{use.where}: {problems}\n{use.query}"


def test_the_check_fails_on_a_renamed_metric_or_label(exposed: Exposed) -> None:
    """The check above can fail: names a sidecar does not expose are each reported."""
    wrong = uses_of(
        "a query with wrong names",
        'sum by (channel) (rate(sendonce_delivery_total{outcome="gone"}[5m]))'
        ' or sendonce_circuit_state{state="2"}'
        ' or sendonce_deliveries_total{outcome=~"exhausted|expired"}'
        ' or rpc_server_call_duration_seconds_count{rpc_grpc_status_code!="0"}',
    )
    problems = [problem.partition(": ")[0] for problem in problems_with(wrong, exposed)]
    assert problems == [
        "no series sendonce_delivery_total",
        "sendonce_circuit_state has no label state",
        'no sendonce_deliveries_total{outcome="expired"}',
        'no rpc_server_call_duration_seconds_count{rpc_grpc_status_code="0"}',
        "grouped by channel, a label of none of ['rpc_server_call_duration_seconds_count', "
        "'sendonce_circuit_state', 'sendonce_deliveries_total', 'sendonce_delivery_total']",
    ]


# --- the rules ---------------------------------------------------------------------------------


def test_the_prometheusrule_holds_the_rules_of_alerts_yaml() -> None:
    with RULES.open() as file:
        plain = yaml.safe_load(file)
    with OPERATOR_RULE.open() as file:
        [operator] = [doc for doc in yaml.safe_load_all(file) if doc]
    assert operator["apiVersion"] == "monitoring.coreos.com/v1"
    assert operator["kind"] == "PrometheusRule"
    assert set(operator) == {"apiVersion", "kind", "metadata", "spec"}
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", operator["metadata"]["name"])
    assert set(operator["spec"]) == {"groups"}
    assert operator["spec"]["groups"] == plain["groups"]
    # And the file is what the generator writes (`make check-gen` runs the same check).
    generator = [sys.executable, str(ROOT / "scripts" / "gen-prometheusrule.py"), "--check"]
    checked = subprocess.run(generator, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr


# The fields of a rule group and a rule the PrometheusRule CRD accepts, and its duration format.
GROUP_FIELDS = {"name", "interval", "rules", "limit", "partial_response_strategy", "query_offset"}
RULE_FIELDS = {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"}
DURATION = re.compile(
    r"^(0|([0-9]+y)?([0-9]+w)?([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?([0-9]+ms)?)$"
)


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a Markdown file."""
    anchors = set()
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif not in_code and re.match(r"#{1,6} ", line):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", title)))
    return anchors


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_has_a_severity_and_says_what_to_do(rule: Manifest) -> None:
    with RULES.open() as file:
        [group] = yaml.safe_load(file)["groups"]
    assert set(group) <= GROUP_FIELDS
    assert set(rule) <= RULE_FIELDS
    assert DURATION.match(rule.get("for", "0"))
    assert rule["alert"].startswith("Sendonce")
    assert rule["labels"]["severity"] in SEVERITIES
    assert set(rule["annotations"]) == {"summary", "description"}
    links = re.findall(r"docs/failures\.md#([\w-]+)", rule["annotations"]["description"])
    assert links, "the description links the section of docs/failures.md that explains it"
    assert set(links) <= github_anchors(FAILURES.read_text())


def test_every_alert_has_unit_tests_that_fire_it_and_that_do_not() -> None:
    with RULE_TESTS.open() as file:
        tests = yaml.safe_load(file)
    assert tests["rule_files"] == [RULES.name]
    fired: set[str] = set()
    silent: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else silent).add(check["alertname"])
    alerts = {rule["alert"] for rule in alert_rules()}
    assert fired == alerts, "alerts without a test where they fire"
    assert silent == alerts, "alerts without a test where they stay silent"


# --- the dashboard -----------------------------------------------------------------------------

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def test_the_dashboard_reads_its_datasource_from_a_variable() -> None:
    board = dashboard()
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard_panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]
    # No data source uid or id of a particular Grafana anywhere; no dashboard id either.
    text = DASHBOARD.read_text()
    assert set(re.findall(r'"uid": "([^"]*)"', text)) == {"${datasource}", board["uid"]}
    assert "__inputs" not in board
    assert "id" not in board


def test_the_dashboard_shows_what_an_operator_watches() -> None:
    shown = {
        name
        for where, query in dashboard_queries()
        if where.startswith("panel")
        for name, _ in uses_of(where, query).selectors
    }
    assert shown >= {
        "sendonce_deliveries_total",  # by outcome; exhausted and permanent failures
        "sendonce_circuit_state",
        "sendonce_store_up",
        "sendonce_attempt_duration_seconds_bucket",
        "sendonce_attempts_in_flight",
        "sendonce_config_last_reload_successful",
        "rpc_server_call_duration_seconds_count",  # gRPC errors by code
    }


def test_the_dashboard_panels_fit_the_grid_without_overlapping() -> None:
    taken: dict[tuple[int, int], str] = {}
    panels = dashboard()["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels), "panel ids repeat"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def promtool() -> str:
    """promtool's path; a failure under CI (which installs it), a loud skip elsewhere."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("promtool not found: .ci/run installs Debian's prometheus package")
        pytest.skip("no promtool on PATH (apt-get install prometheus): PromQL not checked")
    return path


def test_every_dashboard_query_is_promql_that_prometheus_accepts(tmp_path: Path) -> None:
    rules = [
        {"record": f"dashboard:query_{number}", "expr": GRAFANA_INTERVALS.sub("5m", query)}
        for number, (_, query) in enumerate(dashboard_queries())
    ]
    path = tmp_path / "dashboard-queries.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    checked = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


# --- a real Prometheus scraping a real sidecar -------------------------------------------------


def prometheus_binary() -> str:
    """Prometheus' path (Debian's prometheus package, as promtool); as promtool() otherwise."""
    path = shutil.which("prometheus")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("prometheus not found: .ci/run installs Debian's prometheus package")
        pytest.skip("no prometheus on PATH (apt-get install prometheus): rules not evaluated")
    return path


async def eventually(
    check: Callable[[], Awaitable[T | None]], what: str, timeout: float = 30.0
) -> T:
    """The first answer of `check` that is not None, polled: Prometheus announces no events."""
    try:
        async with asyncio.timeout(timeout):
            while (found := await check()) is None:  # noqa: ASYNC110  # polling an HTTP API
                await asyncio.sleep(0.2)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what}") from None
    return found


class Prometheus:
    """A Prometheus server of the test's own on loopback, scraping and evaluating every second."""

    def __init__(self, binary: str, workdir: Path, metrics: str) -> None:
        self.address = f"127.0.0.1:{free_tcp_port()}"
        self.config = workdir / "prometheus.yml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                    "rule_files": [str(RULES)],
                    "scrape_configs": [
                        {"job_name": "sendonce", "static_configs": [{"targets": [metrics]}]}
                    ],
                }
            )
        )
        self.args = [
            binary,
            f"--config.file={self.config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={self.address}",
        ]
        self.process: asyncio.subprocess.Process | None = None
        self.client = httpx.AsyncClient(base_url=f"http://{self.address}", timeout=10)

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

        async def ready() -> bool | None:
            try:
                return (await self.client.get("/-/ready")).status_code == 200 or None
            except httpx.TransportError:
                return None

        await eventually(ready, "Prometheus ready")

    async def query(self, promql: str) -> list[Manifest]:
        reply = await self.client.get("/api/v1/query", params={"query": promql})
        assert reply.status_code == 200, f"{promql}: {reply.text}"
        result: list[Manifest] = reply.json()["data"]["result"]
        return result

    async def alerts(self) -> dict[str, tuple[str, set[str]]]:
        """Every rule's name -> its state and the receivers (or instances) of its alerts."""
        reply = await self.client.get("/api/v1/rules", params={"type": "alert"})
        rules = [rule for group in reply.json()["data"]["groups"] for rule in group["rules"]]
        for rule in rules:
            assert rule["health"] == "ok", f"{rule['name']}: {rule.get('lastError')}"
        return {
            rule["name"]: (
                rule["state"],
                {a["labels"].get("receiver") or a["labels"]["instance"] for a in rule["alerts"]},
            )
            for rule in rules
        }

    async def stop(self) -> None:
        await self.client.aclose()
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def real_query(query: str) -> str:
    """A dashboard query as Grafana sends it with every job and receiver selected; without the
    `or vector(0)` that shows 0 on a stat panel, so that an empty answer shows."""
    query = query.replace("$__range", "5m").replace("$__rate_interval", "1m")
    query = query.replace('"$job"', '".*"').replace('"$receiver"', '".*"')
    return query.removesuffix(" or vector(0)")


async def test_the_alerts_fire_and_every_panel_shows_data_on_a_real_prometheus(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    """Prometheus scrapes a sidecar on Redis whose receivers exhaust, refuse, stay open and are
    slow; then a reload fails and Redis stops: every alert but SidecarDown goes pending or
    firing (alerts with a `for` stay pending here), each for the receiver that caused it, and
    every dashboard query answers series. Then the sidecar is killed: SidecarDown too."""
    binary = prometheus_binary()
    metrics = f"127.0.0.1:{free_tcp_port()}"
    config = tmp_path / "receivers.toml"
    prometheus = Prometheus(binary, tmp_path, metrics)
    async with (
        Children() as children,
        HttpReceiver(400) as refusing,
        HttpReceiver(Reply(200), Reply(200, delay=5.5)) as slow,
    ):
        slow_receiver = f"""
[[receivers]]
name = "slow"
type = "webhook"
[receivers.settings]
url = "{slow.url}"
timeout = 10.0
"""
        good = receivers_file(free_tcp_port(), refusing.url) + slow_receiver
        await asyncio.to_thread(config.write_text, good)
        sidecar = await children.replica(
            "--config", str(config), "--metrics-listen", metrics,
            "--store", own_redis.url, "--store-check-interval", "0.2",
        )  # fmt: skip
        await prometheus.start()
        try:
            async with sidecar.stub() as stub:

                async def deliver(uid: str, channel: str) -> pb.Outcome.ValueType:
                    request = pb.DeliverRequest(uid=uid, channel=channel, notification=NOTE)
                    return (await stub.Deliver(request, timeout=30)).outcome

                # A first, quick attempt creates the duration series; once Prometheus has it, a
                # slow one raises the rate of its upper buckets (rate() needs two samples).
                assert await deliver("p-0", "slow") == pb.OUTCOME_DELIVERED

                async def scraped() -> bool | None:
                    found = await prometheus.query(
                        'sendonce_attempt_duration_seconds_count{receiver="slow"}'
                    )
                    return True if found else None

                await eventually(scraped, "the first attempt's duration in Prometheus")
                outcomes = list(
                    await asyncio.gather(
                        deliver("p-1", "slow"),
                        deliver("p-2", "ok"),
                        deliver("p-3", "refusing"),
                        deliver("p-4", "down"),
                    )
                )
                outcomes.append(await deliver("p-4", "down"))  # exhausted; the breaker opens
                await asyncio.to_thread(config.write_text, "[[receivers]]\nname = 'Bad Name'\n")
                async with httpx.AsyncClient() as client:
                    reload = await client.post(f"http://{metrics}/-/reload", timeout=10)
                own_redis.stop()
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await deliver("p-5", "ok")
            assert outcomes == [
                pb.OUTCOME_DELIVERED,
                pb.OUTCOME_DELIVERED,
                pb.OUTCOME_FAILED_PERMANENT,
                pb.OUTCOME_FAILED,
                pb.OUTCOME_EXHAUSTED,
            ]
            assert reload.status_code == 500
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

            expected = {
                "SendonceDeliveriesExhausted": ("firing", {"down"}),
                "SendonceDeliveriesFailingPermanently": ("firing", {"refusing"}),
                "SendonceCircuitOpen": ("pending", {"down"}),
                "SendonceStoreDown": ("pending", {metrics}),
                "SendonceAttemptLatencyHigh": ("pending", {"slow"}),
                "SendonceConfigReloadFailed": ("pending", {metrics}),
                "SendonceSidecarDown": ("inactive", set()),
            }

            seen: dict[str, tuple[str, set[str]]] = {}

            async def raised() -> bool | None:
                seen.clear()
                seen.update(await prometheus.alerts())
                return True if seen == expected else None

            with contextlib.suppress(AssertionError):
                await eventually(raised, "the alerts expected")
            assert seen == expected

            # rate() needs two samples of a series: the UNAVAILABLE series may need a scrape more.
            empty: list[str] = []

            async def every_panel_has_data() -> bool | None:
                empty[:] = [
                    f"{where}: {query}"
                    for where, query in dashboard_queries()
                    if not await prometheus.query(real_query(query))
                ]
                return True if not empty else None

            with contextlib.suppress(AssertionError):
                await eventually(every_panel_has_data, "data for every dashboard query", 10)
            assert not empty, "dashboard queries without data:\n" + "\n".join(empty)

            await sidecar.kill()

            async def down() -> bool | None:
                state, instances = (await prometheus.alerts())["SendonceSidecarDown"]
                return True if (state, instances) == ("pending", {metrics}) else None

            await eventually(down, "SendonceSidecarDown pending for the killed sidecar")
        finally:
            await prometheus.stop()
