"""The deploy files, checked without a Docker engine or a cluster: docker-compose.yml against the
Compose Specification schema, every Kubernetes manifest (rendered by kustomize when kubectl is there)
against the Kubernetes OpenAPI schemas (kubernetes-validate), the KEDA ScaledObject against its CRD's
fields, and the settings, metric names, stream and group names they use against the code."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from service import metrics
from service.broker.keys import GROUP, RedisKeys
from service.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
K8S_VERSIONS = ("1.29.0", "1.33.0")  # oldest and newest minor we claim to support


# ---- helpers ----------------------------------------------------------------------------------
def metric_names() -> set[str]:
    """Every sample name the service can export (counters' _total, histograms' _bucket/_sum/_count)."""
    names = {"up"}
    for family in metrics.REGISTRY.collect():
        if family.type == "counter":
            names |= {family.name + "_total", family.name + "_created"}
        elif family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count", "_created")}
        else:
            names.add(family.name)
    return names


def used_metrics(expr: str) -> set[str]:
    return set(re.findall(r"\bposekd_[a-z_]+\b", expr))


def check_settings(env: dict[str, str], where: str) -> None:
    """Every POSEKD_* variable is a real setting with a valid value."""
    fields = Settings.model_fields
    kwargs = {}
    for key, value in env.items():
        if not key.startswith("POSEKD_"):
            continue
        name = key[len("POSEKD_"):].lower()
        assert name in fields, f"{where}: {key} is not a PoseKD setting"
        value = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))  # compose ${VAR:-default}
        kwargs[name] = value if name not in ("api_keys", "admin_api_keys") else value.split(",") if value else []
    Settings(**kwargs)


# ---- docker compose ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_file_matches_the_compose_specification(compose):
    schema_file = resources.files("check_jsonschema") / "builtin_schemas" / "vendor" / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    jsonschema.validate(compose, schema, cls=jsonschema.Draft202012Validator)
    broken = dict(compose, services={**compose["services"], "api": {**compose["services"]["api"], "portz": []}})
    with pytest.raises(jsonschema.ValidationError):  # the schema does catch a misspelt key
        jsonschema.validate(broken, schema, cls=jsonschema.Draft202012Validator)


def test_compose_stack_is_the_documented_one(compose):
    services = compose["services"]
    assert set(services) == {"api", "worker", "redis", "prometheus", "grafana"}
    assert services["worker"]["command"][:2] == ["posekd", "worker"]
    assert services["api"]["command"] == ["posekd", "serve"]
    for name in ("api", "worker"):
        env = services[name]["environment"]
        assert env["POSEKD_REDIS_URL"].startswith("redis://redis:")
        check_settings(env, f"compose {name}")
    redis_cmd = " ".join(services["redis"]["command"])
    assert "--appendonly yes" in redis_cmd and "--maxmemory-policy noeviction" in redis_cmd
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    for svc in services.values():  # every file mounted from the repository exists
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source


def test_prometheus_scrapes_api_and_workers_and_loads_the_alert_rules():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert {"posekd-api", "posekd-worker"} <= set(jobs)
    assert jobs["posekd-worker"]["dns_sd_configs"][0]["port"] == 9100
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_alert_rules_cover_the_slos_and_name_real_metrics():
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    assert set(alerts) == {"PoseKDLatencySLO", "PoseKDErrorRate", "PoseKDQueueGrowing", "PoseKDNoReadyWorkers",
                           "PoseKDStudentDrift"}
    known = metric_names()
    for name, rule in alerts.items():
        assert rule["expr"].count("(") == rule["expr"].count(")"), name
        assert used_metrics(rule["expr"]) and used_metrics(rule["expr"]) <= known, name
        assert re.fullmatch(r"\d+[smh]", rule["for"]) and rule["labels"]["severity"] and rule["annotations"]["summary"]


def test_grafana_dashboard_is_provisioned_and_its_queries_name_real_metrics():
    dash = json.loads((DEPLOY / "grafana" / "dashboards" / "posekd.json").read_text())
    source = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    provider = yaml.safe_load((DEPLOY / "grafana" / "provisioning" / "dashboards" / "posekd.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    known = metric_names()
    titles = " | ".join(p["title"].lower() for p in dash["panels"])
    for wanted in ("request rate", "latency", "queue wait", "queue depth", "batch size", "errors", "model version"):
        assert wanted in titles, wanted
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == uid
        for target in panel["targets"]:
            assert used_metrics(target["expr"]) <= known, (panel["title"], target["expr"])


# ---- kubernetes -------------------------------------------------------------------------------
def rendered_manifests() -> list[dict]:
    """kustomize's output when kubectl is installed, else the resources the kustomization lists."""
    if shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True).stdout
        return [d for d in yaml.safe_load_all(out) if d]
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [d for f in kustomization["resources"] for d in yaml.safe_load_all((K8S / f).read_text()) if d]


# The fields of KEDA's ScaledObject CRD (keda.sh/v1alpha1) that these manifests may use.
SCALED_OBJECT = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"}, "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {"type": "object", "required": ["scaleTargetRef", "triggers"], "additionalProperties": False,
                 "properties": {
                     "scaleTargetRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                                        "properties": {"name": {"type": "string"}, "kind": {"type": "string"},
                                                       "apiVersion": {"type": "string"},
                                                       "envSourceContainerName": {"type": "string"}}},
                     "minReplicaCount": {"type": "integer", "minimum": 0},
                     "maxReplicaCount": {"type": "integer", "minimum": 1},
                     "idleReplicaCount": {"type": "integer", "minimum": 0},
                     "pollingInterval": {"type": "integer", "minimum": 1},
                     "cooldownPeriod": {"type": "integer", "minimum": 0},
                     "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                     "fallback": {"type": "object"},
                     "advanced": {"type": "object"},
                     "triggers": {"type": "array", "minItems": 1, "items": {
                         "type": "object", "required": ["type", "metadata"],
                         "properties": {"type": {"type": "string"}, "name": {"type": "string"},
                                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                                        "authenticationRef": {"type": "object"},
                                        "metadata": {"type": "object",
                                                     "additionalProperties": {"type": "string"}}}}},
                 }},
    },
}
REDIS_STREAMS_KEYS = {"address", "host", "port", "stream", "consumerGroup", "pendingEntriesCount", "streamLength",
                      "lagCount", "activationLagCount", "databaseIndex", "enableTLS", "usernameFromEnv",
                      "passwordFromEnv"}


@pytest.fixture(scope="module")
def manifests() -> list[dict]:
    return rendered_manifests()


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_every_manifest_validates_against_the_kubernetes_schemas(manifests, version):
    kinds = set()
    for doc in manifests:
        kinds.add(doc["kind"])
        if doc["kind"] == "ScaledObject":
            jsonschema.validate(doc, SCALED_OBJECT)
            continue
        kubernetes_validate.validate(doc, version, strict=True)
    assert {"Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "ScaledObject"} <= kinds


def test_the_validator_catches_a_broken_manifest(manifests):
    deployment = next(d for d in manifests if d["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)


def test_deployments_have_probes_resources_and_match_their_services(manifests):
    by_kind: dict[str, list[dict]] = {}
    for doc in manifests:
        by_kind.setdefault(doc["kind"], []).append(doc)
    deployments = {d["metadata"]["name"]: d for d in by_kind["Deployment"]}
    assert {"posekd-api", "posekd-worker"} <= set(deployments)
    pod_labels = [d["spec"]["template"]["metadata"]["labels"] for d in deployments.values()]
    pod_labels += [s["spec"]["template"]["metadata"]["labels"] for s in by_kind.get("StatefulSet", [])]
    for name, dep in deployments.items():
        container = dep["spec"]["template"]["spec"]["containers"][0]
        assert "livenessProbe" in container and ("readinessProbe" in container or name == "posekd-worker")
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert container["envFrom"][0]["configMapRef"]["name"] == "posekd-config"
    worker = deployments["posekd-worker"]["spec"]["template"]["spec"]["containers"][0]
    assert worker["args"][:2] == ["posekd", "worker"]
    for obj in by_kind["Service"] + by_kind["PodDisruptionBudget"]:
        selector = obj["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert any(selector.items() <= labels.items() for labels in pod_labels), obj["metadata"]["name"]
    config = next(c for c in by_kind["ConfigMap"] if c["metadata"]["name"] == "posekd-config")
    check_settings(config["data"], "ConfigMap posekd-config")


def test_keda_scales_the_worker_deployment_on_the_request_stream(manifests):
    scaled = next(d for d in manifests if d["kind"] == "ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "posekd-worker"
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "redis-streams"
    meta = trigger["metadata"]
    assert set(meta) <= REDIS_STREAMS_KEYS
    config = next(c for c in manifests if c["kind"] == "ConfigMap")["data"]
    prefix = config.get("POSEKD_REDIS_PREFIX", Settings.model_fields["redis_prefix"].default)
    assert meta["stream"] == RedisKeys(prefix).requests and meta["consumerGroup"] == GROUP
    assert {"streamLength", "lagCount", "pendingEntriesCount"} & set(meta)
    assert meta["address"].split(".")[0] in {s["metadata"]["name"] for s in manifests if s["kind"] == "Service"}
