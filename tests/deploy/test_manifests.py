"""The Kubernetes manifests of deploy/kubernetes/, each overlay rendered by `kubectl kustomize`
(as `kubectl apply -k` would) and checked offline, as a cluster and the sidecar would take them.

- The native sidecar (an init container with `restartPolicy: Always`) is ready before the
  controller starts; the plain variant is the same sidecar as a second container. Disruption
  budgets only where there are replicas to spare; network policies admit Prometheus to the
  metrics port and only the controller's pods to Redis.

- Every object validates against Kubernetes' own JSON schemas (strict: an unknown or misspelt
  field fails) for the oldest version the manifests support and the newest the schema package
  ships. The ServiceMonitor is a CRD outside those schemas: its structure is checked by hand.
- The references between objects resolve: mounts and volumes, ConfigMaps, Secrets and their keys,
  Services and the pods they select, ports named by probes, the ServiceMonitor and its Service.
- The sidecar's arguments use only flags `sendonce-server --help` lists (or that issue 5 plans),
  every file they name is mounted from the object that should provide it, and the shutdown
  timings fit together.
- The sidecar really starts with each variant's arguments and files (materialised in a temporary
  directory, addresses moved to loopback): health answers without a token as the kubelet's probe
  needs, other calls need the token the controller is given, and /metrics answers.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path, PurePosixPath
from typing import Any

import grpc
import kubernetes_validate  # type: ignore[import-untyped]  # no type information shipped
import pytest
import pytest_asyncio
import yaml

from sendonce.v1 import delivery_pb2 as pb
from sendonce.v1 import delivery_pb2_grpc
from sendonce_server.config import ReceiversFile
from tests.server.process import Children, free_tcp_port

Manifest = dict[str, Any]

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
# Each overlay, rendered as `kubectl apply -k` would, and the oldest Kubernetes it is for: native
# sidecars are on by default from 1.29; gRPC probes, which the plain variant needs, from 1.27.
VARIANTS = {"sqlite": "1.29", "redis": "1.29", "sqlite-plain-sidecar": "1.27"}
NATIVE = ["sqlite", "redis"]
SHARED = ["servicemonitor.yaml"]  # applied beside any overlay
# Custom resources: no core schema; checked by hand below.
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
# Flags issue 5 ("Ready for production") adds to the server. The manifests may use them before
# `sendonce-server --help` lists them; every other flag must be listed there.
PLANNED_FLAGS = {
    "--metrics-listen",
    "--auth-token-file",
    "--log-format",
    "--tls-cert-file",
    "--tls-key-file",
    "--tls-client-ca-file",
}
SIDECAR = "sendonce"
SERVICE = "sendonce.v1.DeliveryService"
# Seconds the process may take to exit after its grace ends, before the kubelet's SIGKILL.
EXIT_MARGIN = 3
# What the controller itself takes to exit after SIGTERM, as the pod's grace period assumes: a
# native sidecar is stopped only after that.
CONTROLLER_EXIT = 5


# Where no kubectl is installed: the standalone kustomize at the version kubectl 1.32 embeds,
# built from the Go module proxy into .venv/gobin (as scripts/gen-proto does the protoc plugins).
KUSTOMIZE = "sigs.k8s.io/kustomize/kustomize/v5@v5.5.0"


def kustomize_command() -> list[str]:
    """`kubectl kustomize`, else `kustomize build` (installed with Go if need be).

    With neither kubectl nor Go: skipped, or failed under CI=true.
    """
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    gobin = ROOT / ".venv" / "gobin"
    kustomize = gobin / "kustomize"
    if not kustomize.exists() and (go := shutil.which("go")):
        subprocess.run(
            [go, "install", KUSTOMIZE],
            env={**os.environ, "GOBIN": str(gobin)},
            capture_output=True,
            timeout=600,
            check=True,
        )
    if kustomize.exists():
        return [str(kustomize), "build"]
    reason = "neither kubectl nor Go is on PATH: the overlays cannot be rendered"
    if os.environ.get("CI") == "true":
        raise RuntimeError(f"{reason}; under CI=true this fails instead of skipping")
    pytest.skip(reason, allow_module_level=True)


def render(overlay: str) -> list[Manifest]:
    rendered = subprocess.run(
        [*kustomize_command(), str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert rendered.returncode == 0, rendered.stderr
    return [document for document in yaml.safe_load_all(rendered.stdout) if document]


def load(name: str) -> list[Manifest]:
    with (DEPLOY / name).open() as file:
        return [document for document in yaml.safe_load_all(file) if document]


MANIFESTS = {variant: render(variant) for variant in VARIANTS} | {
    name: load(name) for name in SHARED
}


def file_set(variant: str) -> list[Manifest]:
    """What an operator applies together: an overlay and the shared files."""
    return [*MANIFESTS[variant], *(doc for name in SHARED for doc in MANIFESTS[name])]


def containers(pod: Manifest) -> list[Manifest]:
    """Every container of a pod spec, init containers (native sidecars among them) first."""
    return [*pod.get("initContainers", []), *pod["containers"]]


def named(docs: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def pod_specs(docs: list[Manifest]) -> dict[str, Manifest]:
    """The pod template of every Deployment, by the Deployment's name."""
    return {name: doc["spec"]["template"] for name, doc in named(docs, "Deployment").items()}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def sidecar_pod(docs: list[Manifest]) -> tuple[Manifest, Manifest]:
    """The pod spec holding the sendonce container, and that container."""
    found = [
        (template["spec"], container)
        for template in pod_specs(docs).values()
        for container in containers(template["spec"])
        if container["name"] == SIDECAR
    ]
    assert len(found) == 1, f"expected one {SIDECAR!r} container, found {len(found)}"
    return found[0]


def flag_values(args: list[str]) -> dict[str, str]:
    """`--flag value` and `--flag=value` pairs; a flag without a value fails the test."""
    values: dict[str, str] = {}
    items = iter(args)
    for arg in items:
        assert arg.startswith("--"), f"{arg!r} is not a flag (every argument is --flag value)"
        flag, equals, value = arg.partition("=")
        if not equals:
            value = next(items, "--")
            assert not value.startswith("--"), f"{flag} has no value"
        assert flag not in values, f"{flag} given twice"
        values[flag] = value
    return values


def secret_keys(secret: Manifest) -> set[str]:
    return {*secret.get("data", {}), *secret.get("stringData", {})}


def secret_value(secret: Manifest, key: str) -> str:
    if key in secret.get("stringData", {}):
        return str(secret["stringData"][key])
    return base64.b64decode(secret["data"][key]).decode()


def mounted_files(docs: list[Manifest], pod: Manifest, container: Manifest) -> dict[str, str]:
    """Every file a container sees from ConfigMaps and Secrets: path -> its content."""
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    config_maps, secrets = named(docs, "ConfigMap"), named(docs, "Secret")

    def from_object(source: Manifest, is_secret: bool) -> dict[str, str]:
        if is_secret:
            secret = secrets[str(source.get("secretName", source.get("name")))]
            contents = {key: secret_value(secret, key) for key in secret_keys(secret)}
        else:
            contents = dict(config_maps[source["name"]].get("data", {}))
        if "items" in source:
            return {item["path"]: contents[item["key"]] for item in source["items"]}
        return contents

    files: dict[str, str] = {}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        found: dict[str, str] = {}
        if "configMap" in volume:
            found = from_object(volume["configMap"], is_secret=False)
        elif "secret" in volume:
            found = from_object(volume["secret"], is_secret=True)
        elif "projected" in volume:
            for source in volume["projected"]["sources"]:
                if "secret" in source:
                    found |= from_object(source["secret"], is_secret=True)
                if "configMap" in source:
                    found |= from_object(source["configMap"], is_secret=False)
        for relative, content in found.items():
            files[str(PurePosixPath(mount["mountPath"]) / relative)] = content
    return files


def writable_dirs(pod: Manifest, container: Manifest) -> list[str]:
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    return [
        mount["mountPath"]
        for mount in container.get("volumeMounts", [])
        if not mount.get("readOnly") and "emptyDir" in volumes[mount["name"]]
    ]


def secret_file_references(value: Any) -> list[str]:
    """Every `{ file = "..." }` secret reference in a parsed receivers file."""
    if isinstance(value, dict):
        if set(value) == {"file"}:
            return [value["file"]]
        return [path for item in value.values() for path in secret_file_references(item)]
    if isinstance(value, list):
        return [path for item in value for path in secret_file_references(item)]
    return []


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


# --- schemas ------------------------------------------------------------------------------------

# Each overlay against the schemas of its oldest Kubernetes and of the newest the installed
# kubernetes-validate ships.
SCHEMA_CASES = [
    pytest.param(doc, version, id=f"{name}:{doc['kind']}/{doc['metadata']['name']}@{version}")
    for name, oldest in VARIANTS.items()
    for doc in MANIFESTS[name]
    if (doc["apiVersion"], doc["kind"]) not in CRDS
    for version in dict.fromkeys([oldest, kubernetes_validate.utils.latest_version()])
]


def test_the_file_sets_cover_every_manifest() -> None:
    overlays = sorted(path.name for path in (DEPLOY / "overlays").iterdir())
    assert overlays == sorted(VARIANTS)
    assert sorted(path.name for path in DEPLOY.glob("*.yaml")) == sorted(SHARED)
    for docs in MANIFESTS.values():
        assert docs, "an empty manifest file"
    for name in SHARED:
        assert all((doc["apiVersion"], doc["kind"]) in CRDS for doc in MANIFESTS[name])


@pytest.mark.parametrize(("doc", "version"), SCHEMA_CASES)
def test_every_object_validates_against_the_kubernetes_schemas(doc: Manifest, version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        where = ".".join(str(part) for part in error.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {where}: {error.message}")
    except kubernetes_validate.SchemaNotFoundError as error:
        pytest.fail(f"{error.message}: a custom resource must be listed in CRDS and checked")


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_servicemonitor_scrapes_the_sidecars_metrics_port(variant: str) -> None:
    docs = file_set(variant)
    [monitor] = named(docs, "ServiceMonitor").values()
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) <= {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) <= {"selector", "endpoints", "namespaceSelector", "jobLabel"}
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [
        service
        for service in named(docs, "Service").values()
        if selects(selector, service["metadata"].get("labels", {}))
    ]
    assert len(services) == 1, "the ServiceMonitor must select exactly one Service"
    [service] = services
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    pod, sidecar = sidecar_pod(docs)
    metrics_port = port_of(flag_values(sidecar["args"])["--metrics-listen"])
    container_ports = {port["name"]: port["containerPort"] for port in sidecar["ports"]}
    endpoints = monitor["spec"]["endpoints"]
    assert endpoints
    for endpoint in endpoints:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
        assert endpoint["port"] in ports, f"no port named {endpoint['port']!r} on the Service"
        assert endpoint.get("path", "/metrics") == "/metrics"
        target = ports[endpoint["port"]]["targetPort"]
        assert container_ports.get(target, target) == metrics_port
    # The scrape annotations, for a Prometheus without the operator, say the same.
    annotations = next(
        template["metadata"]["annotations"]
        for template in pod_specs(docs).values()
        if template["spec"] is pod
    )
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == metrics_port
    assert annotations["prometheus.io/path"] == "/metrics"


# --- references between objects -------------------------------------------------------------


def reference_problems(docs: list[Manifest]) -> list[str]:
    """Every reference in `docs` that does not resolve, as a readable line."""
    problems: list[str] = []
    config_maps, secrets = named(docs, "ConfigMap"), named(docs, "Secret")
    claims, accounts = named(docs, "PersistentVolumeClaim"), named(docs, "ServiceAccount")
    templates = pod_specs(docs)

    def check_object(where: str, kind: str, name: str, keys: list[str]) -> None:
        found = (config_maps if kind == "ConfigMap" else secrets).get(name)
        if found is None:
            problems.append(f"{where}: no {kind} {name!r}")
            return
        have = set(found.get("data", {})) | set(found.get("stringData", {}))
        missing = sorted(set(keys) - have)
        problems.extend(f"{where}: {kind} {name!r} has no key {key!r}" for key in missing)

    def check_source(where: str, source: Manifest) -> None:
        if "configMap" in source:
            config_map = source["configMap"]
            keys = [item["key"] for item in config_map.get("items", [])]
            check_object(where, "ConfigMap", config_map["name"], keys)
        if "secret" in source:
            secret = source["secret"]
            keys = [item["key"] for item in secret.get("items", [])]
            check_object(where, "Secret", secret.get("secretName", secret.get("name")), keys)

    for name, deployment in named(docs, "Deployment").items():
        template = deployment["spec"]["template"]
        labels = template["metadata"].get("labels", {})
        if not selects(deployment["spec"]["selector"]["matchLabels"], labels):
            problems.append(f"Deployment {name}: its selector does not match its pod labels")
        pod = template["spec"]
        account = pod.get("serviceAccountName")
        if account is not None and account not in accounts:
            problems.append(f"Deployment {name}: no ServiceAccount {account!r}")
        volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
        mounted: set[str] = set()
        for volume_name, volume in volumes.items():
            where = f"Deployment {name} volume {volume_name}"
            check_source(where, volume)
            for source in volume.get("projected", {}).get("sources", []):
                check_source(where, source)
            claim = volume.get("persistentVolumeClaim", {}).get("claimName")
            if claim is not None and claim not in claims:
                problems.append(f"{where}: no PersistentVolumeClaim {claim!r}")
        for container in containers(pod):
            where = f"Deployment {name} container {container['name']}"
            paths = [mount["mountPath"] for mount in container.get("volumeMounts", [])]
            if len(paths) != len(set(paths)):
                problems.append(f"{where}: a mount path is used twice")
            for mount in container.get("volumeMounts", []):
                mounted.add(mount["name"])
                if mount["name"] not in volumes:
                    problems.append(f"{where}: mounts {mount['name']!r}, which is no volume")
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {})
                if "secretKeyRef" in ref:
                    key_ref = ref["secretKeyRef"]
                    check_object(where, "Secret", key_ref["name"], [key_ref["key"]])
                if "configMapKeyRef" in ref:
                    key_ref = ref["configMapKeyRef"]
                    check_object(where, "ConfigMap", key_ref["name"], [key_ref["key"]])
            ports = container.get("ports", [])
            known = {port["containerPort"] for port in ports} | {
                port["name"] for port in ports if "name" in port
            }
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(probe_name, {})
                for handler in ("grpc", "tcpSocket", "httpGet"):
                    if handler in probe and probe[handler]["port"] not in known:
                        problems.append(
                            f"{where}: {probe_name} uses port {probe[handler]['port']!r}, "
                            "which the container does not declare"
                        )
        problems.extend(
            f"Deployment {name}: volume {unused!r} is mounted nowhere"
            for unused in sorted(set(volumes) - mounted)
        )

    def ports_of_pods(selector: dict[str, str]) -> set[int | str] | None:
        chosen = [t for t in templates.values() if selects(selector, t["metadata"]["labels"])]
        if not chosen:
            return None
        return {
            value
            for template in chosen
            for container in containers(template["spec"])
            for port in container.get("ports", [])
            for value in (port["containerPort"], port.get("name"))
            if value is not None
        }

    for name, service in named(docs, "Service").items():
        ports = ports_of_pods(service["spec"]["selector"])
        if ports is None:
            problems.append(f"Service {name}: its selector matches no pod template")
            continue
        for port in service["spec"]["ports"]:
            if port.get("targetPort", port["port"]) not in ports:
                problems.append(f"Service {name}: target port {port.get('targetPort')!r} unknown")
    for name, policy in named(docs, "NetworkPolicy").items():
        ports = ports_of_pods(policy["spec"]["podSelector"]["matchLabels"])
        if ports is None:
            problems.append(f"NetworkPolicy {name}: its podSelector matches no pod template")
            continue
        for rule in policy["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                labels = peer.get("podSelector", {}).get("matchLabels", {})
                if labels and ports_of_pods(labels) is None:
                    problems.append(f"NetworkPolicy {name}: a peer selector matches no pod")
            problems.extend(
                f"NetworkPolicy {name}: port {port['port']!r} is not one of the pods'"
                for port in rule.get("ports", [])
                if port["port"] not in ports
            )
    return problems


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_reference_between_the_objects_resolves(variant: str) -> None:
    assert reference_problems(file_set(variant)) == []


def test_a_broken_reference_is_reported() -> None:
    """The checker itself: each kind of dangling reference it looks for is found."""
    docs = copy.deepcopy(MANIFESTS["sqlite"])
    broken = [doc for doc in docs if doc["kind"] != "ConfigMap"]
    _, sidecar = sidecar_pod(broken)
    sidecar["volumeMounts"].append({"name": "nope", "mountPath": "/nope"})
    sidecar["readinessProbe"]["grpc"]["port"] = 50052

    problems = reference_problems(broken)

    assert any("no ConfigMap 'sendonce-receivers'" in problem for problem in problems)
    assert any("mounts 'nope', which is no volume" in problem for problem in problems)
    assert any("readinessProbe uses port 50052" in problem for problem in problems)


# --- the sidecar's arguments and files ------------------------------------------------------


@pytest.fixture(scope="module")
def server_flags() -> set[str]:
    """The flags `python -m sendonce_server --help` lists."""
    shown = subprocess.run(
        [sys.executable, "-m", "sendonce_server", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    flags = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", shown.stdout))
    assert {"--listen", "--config", "--store", "--shutdown-grace"} <= flags, shown.stdout
    return flags


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_sidecar_uses_only_flags_the_server_has_or_issue_5_plans(
    variant: str, server_flags: set[str]
) -> None:
    _, sidecar = sidecar_pod(file_set(variant))
    used = set(flag_values(sidecar["args"]))
    from_environment = {
        "--" + variable["name"].removeprefix("SENDONCE_").lower().replace("_", "-")
        for variable in sidecar.get("env", [])
        if variable["name"].startswith("SENDONCE_")
    }

    assert (used | from_environment) - server_flags - PLANNED_FLAGS == set()


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_file_the_sidecar_reads_is_mounted_from_the_right_object(variant: str) -> None:
    docs = file_set(variant)
    pod, sidecar = sidecar_pod(docs)
    flags = flag_values(sidecar["args"])
    files = mounted_files(docs, pod, sidecar)
    token_file = flags["--auth-token-file"]
    controller = next(c for c in containers(pod) if c["name"] != SIDECAR)
    controller_env = {variable["name"]: variable for variable in controller["env"]}

    # The receivers file comes from the ConfigMap, and is one the server accepts.
    receivers = tomllib.loads(files[flags["--config"]])
    ReceiversFile.model_validate(receivers)
    # Each secret it names is a mounted Secret key, never a path left empty.
    for path in secret_file_references(receivers):
        assert path in files, f"{path} is named by receivers.toml but mounted from nothing"
        assert files[path].strip()
    # The token file holds the token the controller sends (same Secret and key).
    key_ref = controller_env["SENDONCE_TOKEN"]["valueFrom"]["secretKeyRef"]
    secret = named(docs, "Secret")[key_ref["name"]]
    assert files[token_file] == secret_value(secret, key_ref["key"])
    # The controller dials the port the sidecar listens on, over loopback.
    assert controller_env["SENDONCE_ADDRESS"]["value"] == (
        f"127.0.0.1:{port_of(flags['--listen'])}"
    )
    # A SQLite store lives on a writable volume (the root filesystem is read-only).
    store = flags.get("--store", "memory")
    if store.startswith("sqlite:///"):
        directory = str(PurePosixPath(store.removeprefix("sqlite://")).parent)
        assert directory in writable_dirs(pod, sidecar)


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_and_shutdown_fit_the_server(variant: str) -> None:
    pod, sidecar = sidecar_pod(file_set(variant))
    flags = flag_values(sidecar["args"])
    listen = port_of(flags["--listen"])

    # The kubelet probes the pod IP: the sidecar listens beyond loopback, and then it must ask
    # for a token (the health service alone stays open).
    assert flags["--listen"].startswith("0.0.0.0:")
    assert "--auth-token-file" in flags
    for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = sidecar[probe_name]["grpc"]
        assert probe["port"] == listen
        # A name the health service does not know answers NOT_FOUND: the probe would never pass.
        assert probe.get("service", "") in {"", SERVICE}
    grace = float(flags.get("--shutdown-grace", "25"))
    if variant in NATIVE:
        # The kubelet stops a native sidecar once the controller has exited, within the one
        # grace period of the pod; no preStop hook is needed to outlive the controller.
        assert "lifecycle" not in sidecar
        assert CONTROLLER_EXIT + grace + EXIT_MARGIN <= pod["terminationGracePeriodSeconds"]
    else:
        # Both get SIGTERM at once: the sidecar's preStop sleep serves the controller's last
        # calls (an exec sleep: the `sleep` action needs 1.30). The kubelet counts the hook in the
        # grace period, then SIGKILLs.
        command = sidecar["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        pre_stop = float(command[1])
        assert pre_stop >= CONTROLLER_EXIT
        assert pre_stop + grace + EXIT_MARGIN <= pod["terminationGracePeriodSeconds"]


@pytest.mark.parametrize("variant", NATIVE)
def test_the_native_sidecar_is_ready_before_the_controller_starts(variant: str) -> None:
    pod, sidecar = sidecar_pod(file_set(variant))

    # An init container that keeps running: the kubelet starts the next containers once its
    # startupProbe passes, and stops it after them.
    assert [c["name"] for c in pod["initContainers"]] == [SIDECAR]
    assert sidecar["restartPolicy"] == "Always"
    assert "grpc" in sidecar["startupProbe"]
    assert [c["name"] for c in pod["containers"]] == ["controller"]


def test_the_plain_variant_is_the_native_one_with_the_sidecar_as_a_second_container() -> None:
    native_pod, native = sidecar_pod(file_set("sqlite"))
    plain_pod, plain = sidecar_pod(file_set("sqlite-plain-sidecar"))

    assert "initContainers" not in plain_pod
    assert [c["name"] for c in plain_pod["containers"]] == ["controller", SIDECAR]
    assert {key: value for key, value in plain.items() if key != "lifecycle"} == {
        key: value for key, value in native.items() if key != "restartPolicy"
    }
    assert plain_pod["volumes"] == native_pod["volumes"]


def test_disruption_budgets_only_where_there_are_replicas_to_spare() -> None:
    for variant in VARIANTS:
        docs = MANIFESTS[variant]
        budgets = named(docs, "PodDisruptionBudget")
        for name, deployment in named(docs, "Deployment").items():
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            covering = [
                budget
                for budget in budgets.values()
                if selects(budget["spec"]["selector"]["matchLabels"], labels)
            ]
            if deployment["spec"]["replicas"] > 1:
                # One pod at a time: a drain never takes the delivering replicas all at once.
                [budget] = covering
                assert budget["spec"] == {**budget["spec"], "maxUnavailable": 1}
            else:
                # A budget on a single replica could only block every drain.
                assert covering == [], f"{variant}: {name}"


@pytest.mark.parametrize("variant", VARIANTS)
def test_network_policies_admit_only_prometheus_to_the_pods_and_the_pods_to_redis(
    variant: str,
) -> None:
    docs = file_set(variant)
    policies = named(docs, "NetworkPolicy")
    controller = policies["example-controller"]["spec"]
    _, sidecar = sidecar_pod(docs)
    metrics = {port["name"]: port["containerPort"] for port in sidecar["ports"]}

    assert controller["policyTypes"] == ["Ingress"]  # receivers are anywhere: egress stays open
    [rule] = controller["ingress"]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    [port] = rule["ports"]
    assert metrics.get(port["port"], port["port"]) == port_of(
        flag_values(sidecar["args"])["--metrics-listen"]
    )
    if variant == "redis":
        redis = policies["sendonce-redis"]["spec"]
        [redis_rule] = redis["ingress"]
        assert redis_rule["from"] == [
            {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "example-controller"}}}
        ]
    else:
        assert set(policies) == {"example-controller"}


def test_every_container_runs_unprivileged_with_a_read_only_root() -> None:
    user = re.search(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert user is not None
    for name, docs in MANIFESTS.items():
        for deployment, template in pod_specs(docs).items():
            pod = template["spec"]
            for container in containers(pod):
                where = f"{name}: {deployment}/{container['name']}"
                context = {**pod.get("securityContext", {}), **container["securityContext"]}
                assert context["runAsNonRoot"] is True, where
                assert context["allowPrivilegeEscalation"] is False, where
                assert context["readOnlyRootFilesystem"] is True, where
                assert context["capabilities"]["drop"] == ["ALL"], where
                assert {"cpu", "memory"} <= set(container["resources"]["requests"]), where
                assert "memory" in container["resources"]["limits"], where
                if container["name"] == SIDECAR:
                    assert context["runAsUser"] == int(user.group(1)), where


def test_the_redis_variant_shares_one_durable_store_and_the_other_stays_single() -> None:
    docs = MANIFESTS["redis"]
    deployments = named(docs, "Deployment")
    _, sidecar = sidecar_pod(docs)
    store = flag_values(sidecar["args"])["--store"]
    match = re.fullmatch(r"redis://([a-z0-9-]+):(\d+)/(\d+)", store)
    assert match is not None, store
    service = named(docs, "Service")[match.group(1)]
    assert int(match.group(2)) in {port["port"] for port in service["spec"]["ports"]}
    [redis] = [
        deployment
        for deployment in deployments.values()
        if selects(
            service["spec"]["selector"], deployment["spec"]["template"]["metadata"]["labels"]
        )
    ]
    redis_args = flag_values(redis["spec"]["template"]["spec"]["containers"][0]["args"][1:])
    single = MANIFESTS["sqlite"]
    [single_controller] = [d for d in named(single, "Deployment").values()]
    _, single_sidecar = sidecar_pod(single)

    assert deployments["example-controller"]["spec"]["replicas"] == 3
    assert redis["spec"]["replicas"] == 1
    assert (redis_args["--appendonly"], redis_args["--appendfsync"]) == ("yes", "always")
    assert redis_args["--maxmemory-policy"] == "noeviction"
    # Without a shared store, one pod at a time: no rollout with two states side by side.
    assert single_controller["spec"]["replicas"] == 1
    assert single_controller["spec"]["strategy"]["type"] == "Recreate"
    assert not flag_values(single_sidecar["args"])["--store"].startswith(("redis", "rediss"))


# --- the real processes ---------------------------------------------------------------------


def redis_server_or_skip() -> str:
    path = shutil.which("redis-server")
    if path is None:
        reason = "redis-server is not installed (apt-get install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; under CI=true this fails instead of skipping")
        pytest.skip(reason)
    return path


def test_redis_server_accepts_the_manifests_arguments(tmp_path: Path) -> None:
    docs = MANIFESTS["redis"]
    [container] = named(docs, "Deployment")["sendonce-redis"]["spec"]["template"]["spec"][
        "containers"
    ]
    args = [str(tmp_path) if arg == "/data" else arg for arg in container["args"][1:]]
    port = free_tcp_port()
    server = subprocess.Popen(
        [redis_server_or_skip(), *args, "--port", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert server.stdout is not None
        output = []
        for line in server.stdout:  # redis logs this line once it takes connections
            output.append(line)
            if "Ready to accept connections" in line:
                break
        assert server.poll() is None, "".join(output)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            connection.sendall(b"CONFIG GET appendonly\r\nCONFIG GET maxmemory-policy\r\n")
            answer = b""
            while answer.count(b"\r\n") < 10 and (chunk := connection.recv(4096)):
                answer += chunk
    finally:
        server.kill()
        server.wait()

    assert b"appendonly\r\n$3\r\nyes" in answer
    assert b"maxmemory-policy\r\n$10\r\nnoeviction" in answer


@pytest_asyncio.fixture
async def children() -> AsyncIterator[Children]:
    async with Children() as started:
        yield started


def materialise(docs: list[Manifest], into: Path) -> tuple[list[str], str, str]:
    """The sidecar's files written under `into`, its arguments pointed at them and at loopback.

    Returns the arguments, the gRPC address and the metrics address.
    """
    pod, sidecar = sidecar_pod(docs)
    mounts = sorted(
        (mount["mountPath"] for mount in sidecar["volumeMounts"]), key=len, reverse=True
    )

    def moved(path: str) -> str:
        mount = next(m for m in mounts if path == m or path.startswith(m.rstrip("/") + "/"))
        return str(into / mount.strip("/") / PurePosixPath(path).relative_to(mount))

    for directory in mounts:
        Path(moved(directory)).mkdir(parents=True, exist_ok=True)
    files = mounted_files(docs, pod, sidecar)
    for path, content in files.items():
        if path.endswith(".toml"):  # the receivers file: its secret files move too
            for secret in secret_file_references(tomllib.loads(content)):
                content = content.replace(f'"{secret}"', json.dumps(moved(secret)))
        Path(moved(path)).write_text(content)

    address, metrics = f"127.0.0.1:{free_tcp_port()}", f"127.0.0.1:{free_tcp_port()}"
    flags = flag_values(sidecar["args"])
    flags["--listen"], flags["--metrics-listen"] = address, metrics
    for flag in ("--config", "--auth-token-file"):
        flags[flag] = moved(flags[flag])
    if flags.get("--store", "").startswith("sqlite:///"):
        flags["--store"] = "sqlite://" + moved(flags["--store"].removeprefix("sqlite://"))
    return [item for pair in flags.items() for item in pair], address, metrics


def fetch(url: str) -> tuple[int, str]:
    """The status and content type of a GET."""
    with urllib.request.urlopen(url, timeout=5) as answer:
        answer.read()
        return int(answer.status), str(answer.headers.get("Content-Type", ""))


@pytest.mark.parametrize("variant", VARIANTS)
async def test_the_sidecar_serves_with_each_variants_arguments_and_files(
    variant: str,
    server_flags: set[str],
    children: Children,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    docs = file_set(variant)
    _, sidecar_container = sidecar_pod(docs)
    missing = set(flag_values(sidecar_container["args"])) - server_flags
    if missing:
        pytest.skip(f"sendonce-server does not have {sorted(missing)} yet (planned by issue 5)")
    args, address, metrics = materialise(docs, tmp_path)
    if variant == "redis":
        index = args.index("--store") + 1
        args[index] = request.getfixturevalue("redis_url")
    token = secret_value(named(docs, "Secret")["sendonce-auth"], "token")
    request_ = pb.AttemptCountRequest(uid="manifest-check", channel="ops-webhook")

    sidecar = await children.sidecar(*args, target=address)
    await sidecar.until_serving()  # the health service, with no token: as the kubelet probes
    async with grpc.aio.insecure_channel(address) as channel:
        stub = delivery_pb2_grpc.DeliveryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.AttemptCount(request_, timeout=5)
        answer = await stub.AttemptCount(
            request_, timeout=5, metadata=(("authorization", f"Bearer {token}"),)
        )
    status, content_type = await asyncio.to_thread(fetch, f"http://{metrics}/metrics")
    code = await sidecar.terminate()

    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert answer.found is False
    assert status == 200
    assert content_type.startswith("text/plain")  # Prometheus' text exposition format
    assert code == 0, sidecar.stderr.text
    # --log-format json: every log line is a JSON object.
    assert sidecar.stderr.lines
    for line in sidecar.stderr.lines:
        assert isinstance(json.loads(line), dict), line
