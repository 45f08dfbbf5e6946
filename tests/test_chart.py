"""The Helm chart, rendered by the real Helm v4 engine and checked against the Kubernetes
schemas, the Pod Security Standard "restricted", and promtool for the alert rules."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from janitor.config import Settings, load_settings
from janitor.sharding import JOB_COMPLETION_INDEX

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "chart"
DOCS = ROOT / "docs" / "kubernetes.md"
RELEASE = "astro-janitor"
NAMESPACE = "astronomer"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion: before 1.29 the published
# schema wrongly requires podFailurePolicy rules to have onPodConditions, and Helm's
# client-side validation rejects the CronJob) and the newest one kubernetes-validate knows.
KUBE_VERSIONS = ("1.29", kubernetes_validate.utils.latest_version())
# Helm's install order for the kinds this chart makes (helm template prints in this order).
INSTALL_ORDER = (
    "ServiceAccount",
    "Secret",
    "PersistentVolumeClaim",
    "Role",
    "RoleBinding",
    "CronJob",
    "PrometheusRule",
)
DOCS_BEGIN = "<!-- rendered-default-manifests:begin -->"
DOCS_END = "<!-- rendered-default-manifests:end -->"

Manifest = dict[str, Any]

# Everything switched away from its default: each value shows up in the container env.
NON_DEFAULT: dict[str, Any] = {
    "image": {"repository": "registry.example.com/platform/astro-janitor", "tag": "0.2.0"},
    "schedule": "0 */6 * * *",
    "timeZone": "Europe/Amsterdam",
    "suspend": True,
    "startingDeadlineSeconds": 600,
    "activeDeadlineSeconds": 1800,
    "backoffLimit": 3,
    "successfulJobsHistoryLimit": 1,
    "failedJobsHistoryLimit": 5,
    "ttlSecondsAfterFinished": 86400,
    "extraArgs": ["--only", "databases,registry"],
    "dryRun": True,
    "maxDeletions": 10000000,
    "concurrency": 16,
    "logFormat": "console",
    "houston": {
        "schema": "houston$prod",
        "table": "Deployments",
        "idColumn": "uuid",
        "releaseColumn": "release_name",
        "deletedColumn": "deleted_at",
        "retentionDays": 30,
    },
    "airflowDatabase": {
        "databaseTemplate": "{release}-meta",
        "roleTemplates": ["{release}-meta", "{release_snake}_pgbouncer"],
    },
    "registry": {
        "url": "https://registry.example.com",
        "repositoryTemplate": "airflow/{release}",
        "caBundle": {"configMapName": "platform-ca", "key": "ca.pem"},
    },
    "elasticsearch": {
        "url": "https://elasticsearch.logging:9200",
        "retentionDays": 7,
        "indexPatterns": ["logstash-*", "airflow.*"],
        "ageSource": "name",
        "timestring": "%Y-%m-%d",
        "caBundle": {"secretName": "es-http-ca"},
    },
    "prometheus": {
        "url": "https://prometheus.monitoring:9090",
        "retentionDays": 30,
        "caBundle": {"secretName": "prometheus-ca", "key": "bundle.crt"},
        "source": "kubernetes",
        "kind": "prometheus",
        "namespace": "monitoring",
        "name": "k8s",
    },
    "credentials": {
        "houstonDsn": {"value": "postgresql://houston:s3cret@pg:5432/houston"},
        "airflowDsn": {"existingSecret": "airflow-admin", "key": "dsn"},
        "registryUsername": {"value": "janitor"},
        "registryPassword": {"value": "registry-pass"},
        "elasticsearchApiKey": {"existingSecret": "es-janitor", "key": "api-key"},
        "prometheusToken": {"value": "prom-token"},
    },
    "lease": {"name": "platform-janitor-lock", "durationSeconds": 120},
    "events": {"enabled": False},
    "pushgateway": {"url": "http://prometheus-pushgateway.monitoring:9091", "timeoutSeconds": 20},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus"}},
    "serviceAccount": {"name": "janitor-sa", "annotations": {"team": "platform"}},
    "podLabels": {"team": "platform"},
    "podAnnotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
    "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ops"}],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["ops"]}]}
                ]
            }
        }
    },
    "priorityClassName": "platform-low",
    "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy.internal:3128"}],
}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render_templates(
    chart: helm.Chart, values: dict[str, Any] | None = None, release: str = RELEASE
) -> dict[str, str]:
    return chart.render(values, name=release, namespace=NAMESPACE, is_install=True)


def manifests(
    chart: helm.Chart, values: dict[str, Any] | None = None, release: str = RELEASE
) -> list[Manifest]:
    """Every object the chart renders, in Helm's install order."""
    found = [
        document
        for path, text in render_templates(chart, values, release).items()
        if path.endswith((".yaml", ".yml"))
        for document in yaml.safe_load_all(text)
        if document
    ]
    return sorted(found, key=lambda m: (INSTALL_ORDER.index(m["kind"]), m["metadata"]["name"]))


def one(found: list[Manifest], kind: str) -> Manifest:
    [manifest] = [m for m in found if m["kind"] == kind]
    return manifest


def pod_spec(found: list[Manifest]) -> Manifest:
    spec: Manifest = one(found, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return spec


def container_env(found: list[Manifest]) -> dict[str, Any]:
    """The janitor container's env as name -> value, or name -> valueFrom for references."""
    [container] = pod_spec(found)["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def secret_ref(name: str, key: str, *, optional: bool | None = None) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": name, "key": key}
    if optional is not None:
        ref["optional"] = optional
    return {"secretKeyRef": ref}


def field_ref(path: str) -> dict[str, Any]:
    return {"fieldRef": {"fieldPath": path}}


ALLOWED_VOLUMES = frozenset(
    {
        "configMap",
        "csi",
        "downwardAPI",
        "emptyDir",
        "ephemeral",
        "persistentVolumeClaim",
        "projected",
        "secret",
    }
)


def restricted_violations(pod: Mapping[str, Any]) -> list[str]:
    """The checks of the Pod Security Standard "restricted" profile (latest) for one pod
    spec, plus a read-only root filesystem; an empty list means the pod passes."""
    problems = [f"{flag} is set" for flag in ("hostNetwork", "hostPID", "hostIPC") if pod.get(flag)]
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            problems.append(f"volume {volume['name']} uses {sorted(kinds - ALLOWED_VOLUMES)}")
    pod_context = pod.get("securityContext", {})
    if pod_context.get("sysctls"):
        problems.append("sysctls are set")
    if pod_context.get("seLinuxOptions", {}).keys() - {"type", "level"}:
        problems.append("seLinuxOptions sets user or role")
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        problems += container_violations(container, pod_context)
    return problems


def container_violations(container: Mapping[str, Any], pod_context: Mapping[str, Any]) -> list[str]:
    context = container.get("securityContext", {})
    effective = {**pod_context, **context}
    capabilities = context.get("capabilities", {})
    seccomp = (effective.get("seccompProfile") or {}).get("type")
    checks = {
        "privileged": bool(context.get("privileged")),
        "allowPrivilegeEscalation is not false": context.get("allowPrivilegeEscalation")
        is not False,
        "capabilities do not drop ALL": "ALL" not in capabilities.get("drop", []),
        "adds capabilities": bool(set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}),
        "runAsNonRoot is not true": effective.get("runAsNonRoot") is not True,
        "runAsUser is 0": effective.get("runAsUser") == 0,
        f"seccompProfile is {seccomp}": seccomp not in ("RuntimeDefault", "Localhost"),
        "procMount": context.get("procMount", "Default") != "Default",
        "hostPort": any("hostPort" in port for port in container.get("ports", [])),
        "root filesystem is writable": context.get("readOnlyRootFilesystem") is not True,
    }
    return [f"{container['name']}: {problem}" for problem, failed in checks.items() if failed]


def test_default_render_is_valid_against_the_kubernetes_schemas(chart: helm.Chart) -> None:
    """A plain `helm install` makes a CronJob, its ServiceAccount and a Role/RoleBinding,
    all valid (strict: no unknown fields) for the oldest and newest supported Kubernetes."""
    found = manifests(chart)
    assert [m["kind"] for m in found] == ["ServiceAccount", "Role", "RoleBinding", "CronJob"]
    for manifest in found:
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(manifest, version, strict=True)


def test_non_default_render_is_valid_against_the_kubernetes_schemas(chart: helm.Chart) -> None:
    """With every knob turned, the chart adds its credentials Secret, the PrometheusRule and
    a Role/RoleBinding in Prometheus' namespace, and every built-in kind still validates
    strictly."""
    found = manifests(chart, NON_DEFAULT)
    assert [m["kind"] for m in found] == [
        "ServiceAccount",
        "Secret",
        "Role",
        "Role",
        "RoleBinding",
        "RoleBinding",
        "CronJob",
        "PrometheusRule",
    ]
    for manifest in found:
        if manifest["kind"] == "PrometheusRule":
            continue  # a CRD: its rules are checked by promtool below
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(manifest, version, strict=True)


def test_default_cronjob_schedule_and_every_default_in_the_env(chart: helm.Chart) -> None:
    """Defaults: daily run, Forbid, 15-day windows everywhere, no endpoint configured (so no
    subsystem runs until one is set), and the lease wired from the downward API."""
    found = manifests(chart)
    cronjob = one(found, "CronJob")
    assert cronjob["metadata"]["name"] == RELEASE
    spec = cronjob["spec"]
    job = spec["jobTemplate"]["spec"]
    assert {k: v for k, v in spec.items() if k != "jobTemplate"} == {
        "schedule": "30 3 * * *",
        "timeZone": "Etc/UTC",
        "suspend": False,
        "concurrencyPolicy": "Forbid",
        "startingDeadlineSeconds": 3600,
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
    }
    assert job["activeDeadlineSeconds"] == 10800
    assert job["backoffLimit"] == 1
    assert "ttlSecondsAfterFinished" not in job
    assert job["podFailurePolicy"]["rules"] == [
        {
            "action": "FailJob",
            "onExitCodes": {"containerName": "janitor", "operator": "In", "values": [2, 3, 4]},
        }
    ]
    pod = pod_spec(found)
    assert pod["restartPolicy"] == "Never"
    assert pod["terminationGracePeriodSeconds"] == 60
    assert pod["serviceAccountName"] == RELEASE
    assert pod["automountServiceAccountToken"] is True
    [container] = pod["containers"]
    assert container["image"] == "astro-janitor:0.1.0"
    assert container["args"] == ["run"]
    assert container_env(found) == {
        "JANITOR_HOUSTON_SCHEMA": "houston$default",
        "JANITOR_HOUSTON_TABLE": "Deployment",
        "JANITOR_HOUSTON_ID_COLUMN": "id",
        "JANITOR_HOUSTON_RELEASE_COLUMN": "releaseName",
        "JANITOR_HOUSTON_DELETED_COLUMN": "deletedAt",
        "JANITOR_RETENTION_DAYS": "15",
        "JANITOR_DATABASE_TEMPLATE": "{release_snake}_airflow",
        "JANITOR_ROLE_TEMPLATES": "{release_snake}_airflow,{release_snake}_celery",
        "JANITOR_REGISTRY_REPOSITORY_TEMPLATE": "{release}/airflow",
        "JANITOR_LOG_RETENTION_DAYS": "15",
        "JANITOR_LOG_INDEX_PATTERNS": "fluentd.*,vector.*",
        "JANITOR_LOG_AGE_SOURCE": "creation_date",
        "JANITOR_LOG_TIMESTRING": "%Y.%m.%d",
        "JANITOR_METRICS_RETENTION_DAYS": "15",
        "JANITOR_PROMETHEUS_SOURCE": "http",
        "JANITOR_PROMETHEUS_KIND": "statefulset",
        "JANITOR_PROMETHEUS_NAME": "astronomer-prometheus",
        "JANITOR_DRY_RUN": "false",
        "JANITOR_MAX_DELETIONS": "0",
        "JANITOR_CONCURRENCY": "8",
        "JANITOR_LOCK_TIMEOUT_SECONDS": "30",
        "JANITOR_DEADLINE_SECONDS": "10500",
        "JANITOR_LOG_FORMAT": "json",
        "JANITOR_LEASE_NAME": RELEASE,
        "JANITOR_LEASE_NAMESPACE": field_ref("metadata.namespace"),
        "JANITOR_POD_NAME": field_ref("metadata.name"),
        "JANITOR_LEASE_DURATION_SECONDS": "60",
        "JANITOR_KUBERNETES_EVENTS": "true",
        "JANITOR_CRONJOB_NAME": RELEASE,
    }


def test_every_value_is_wired_into_the_container(chart: helm.Chart) -> None:
    """Each non-default value lands in its JANITOR_* variable (numbers as plain integers,
    lists comma-joined), credentials as Secret references, CA bundles as mounted files."""
    found = manifests(chart, NON_DEFAULT)
    made = f"{RELEASE}-credentials"
    env = container_env(found)
    assert env == {
        "JANITOR_HOUSTON_DSN": secret_ref(made, "houston-dsn"),
        "JANITOR_AIRFLOW_DSN": secret_ref("airflow-admin", "dsn"),
        "JANITOR_REGISTRY_USERNAME": secret_ref(made, "registry-username"),
        "JANITOR_REGISTRY_PASSWORD": secret_ref(made, "registry-password"),
        "JANITOR_ELASTICSEARCH_API_KEY": secret_ref("es-janitor", "api-key"),
        "JANITOR_PROMETHEUS_TOKEN": secret_ref(made, "prometheus-token"),
        "JANITOR_HOUSTON_SCHEMA": "houston$prod",
        "JANITOR_HOUSTON_TABLE": "Deployments",
        "JANITOR_HOUSTON_ID_COLUMN": "uuid",
        "JANITOR_HOUSTON_RELEASE_COLUMN": "release_name",
        "JANITOR_HOUSTON_DELETED_COLUMN": "deleted_at",
        "JANITOR_RETENTION_DAYS": "30",
        "JANITOR_DATABASE_TEMPLATE": "{release}-meta",
        "JANITOR_ROLE_TEMPLATES": "{release}-meta,{release_snake}_pgbouncer",
        "JANITOR_REGISTRY_URL": "https://registry.example.com",
        "JANITOR_REGISTRY_REPOSITORY_TEMPLATE": "airflow/{release}",
        "JANITOR_REGISTRY_CA_BUNDLE": "/etc/janitor/ca/registry/ca.pem",
        "JANITOR_ELASTICSEARCH_URL": "https://elasticsearch.logging:9200",
        "JANITOR_ELASTICSEARCH_CA_BUNDLE": "/etc/janitor/ca/elasticsearch/ca.crt",
        "JANITOR_LOG_RETENTION_DAYS": "7",
        "JANITOR_LOG_INDEX_PATTERNS": "logstash-*,airflow.*",
        "JANITOR_LOG_AGE_SOURCE": "name",
        "JANITOR_LOG_TIMESTRING": "%Y-%m-%d",
        "JANITOR_PROMETHEUS_URL": "https://prometheus.monitoring:9090",
        "JANITOR_PROMETHEUS_CA_BUNDLE": "/etc/janitor/ca/prometheus/bundle.crt",
        "JANITOR_METRICS_RETENTION_DAYS": "30",
        "JANITOR_PROMETHEUS_SOURCE": "kubernetes",
        "JANITOR_PROMETHEUS_KIND": "prometheus",
        "JANITOR_PROMETHEUS_NAMESPACE": "monitoring",
        "JANITOR_PROMETHEUS_NAME": "k8s",
        "JANITOR_PUSHGATEWAY_URL": "http://prometheus-pushgateway.monitoring:9091",
        "JANITOR_PUSHGATEWAY_TIMEOUT_SECONDS": "20",
        "JANITOR_DRY_RUN": "true",
        "JANITOR_MAX_DELETIONS": "10000000",
        "JANITOR_CONCURRENCY": "16",
        "JANITOR_LOCK_TIMEOUT_SECONDS": "30",
        "JANITOR_DEADLINE_SECONDS": "1500",
        "JANITOR_LOG_FORMAT": "console",
        "JANITOR_LEASE_NAME": "platform-janitor-lock",
        "JANITOR_LEASE_NAMESPACE": field_ref("metadata.namespace"),
        "JANITOR_POD_NAME": field_ref("metadata.name"),
        "JANITOR_LEASE_DURATION_SECONDS": "120",
        "JANITOR_KUBERNETES_EVENTS": "false",
        "JANITOR_CRONJOB_NAME": RELEASE,
        "HTTPS_PROXY": "http://proxy.internal:3128",
    }
    secret = one(found, "Secret")
    assert secret["metadata"]["name"] == made
    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {
        "houston-dsn": "postgresql://houston:s3cret@pg:5432/houston",
        "registry-username": "janitor",
        "registry-password": "registry-pass",
        "prometheus-token": "prom-token",
    }

    pod = pod_spec(found)
    [container] = pod["containers"]
    assert container["image"] == "registry.example.com/platform/astro-janitor:0.2.0"
    assert container["args"] == ["run", "--only", "databases,registry"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {
        "tmp": "/tmp",  # noqa: S108 (the pod's emptyDir mount point, not a temp file here)
        "registry-ca": "/etc/janitor/ca/registry",
        "elasticsearch-ca": "/etc/janitor/ca/elasticsearch",
        "prometheus-ca": "/etc/janitor/ca/prometheus",
    }
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["registry-ca"]["configMap"] == {
        "name": "platform-ca",
        "items": [{"key": "ca.pem", "path": "ca.pem"}],
    }
    assert volumes["prometheus-ca"]["secret"] == {
        "secretName": "prometheus-ca",
        "items": [{"key": "bundle.crt", "path": "bundle.crt"}],
    }
    assert container["resources"] == NON_DEFAULT["resources"]
    assert pod["serviceAccountName"] == "janitor-sa"
    assert pod["nodeSelector"] == NON_DEFAULT["nodeSelector"]
    assert pod["tolerations"] == NON_DEFAULT["tolerations"]
    assert pod["affinity"] == NON_DEFAULT["affinity"]
    assert pod["priorityClassName"] == "platform-low"
    template = one(found, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["metadata"]
    assert template["labels"]["team"] == "platform"
    assert template["annotations"] == NON_DEFAULT["podAnnotations"]

    cronjob = one(found, "CronJob")["spec"]
    job = cronjob["jobTemplate"]["spec"]
    assert (cronjob["schedule"], cronjob["timeZone"], cronjob["suspend"]) == (
        "0 */6 * * *",
        "Europe/Amsterdam",
        True,
    )
    assert cronjob["startingDeadlineSeconds"] == 600
    assert (cronjob["successfulJobsHistoryLimit"], cronjob["failedJobsHistoryLimit"]) == (1, 5)
    assert (job["activeDeadlineSeconds"], job["backoffLimit"]) == (1800, 3)
    assert job["ttlSecondsAfterFinished"] == 86400


def test_shared_existing_secret_replaces_the_chart_made_one(chart: helm.Chart) -> None:
    """With credentials.existingSecret every credential is read from it (optional, so keys
    the platform does not use stay unset); a credential's own Secret still wins, and the
    chart makes no Secret of its own, even with values left in."""
    found = manifests(
        chart,
        {
            "credentials": {
                "existingSecret": "janitor-credentials",
                "houstonDsn": {"existingSecret": "astronomer-houston-backend", "key": "connection"},
                "registryPassword": {"value": "ignored-when-a-secret-is-named"},
            }
        },
    )
    assert "Secret" not in [m["kind"] for m in found]
    env = container_env(found)
    assert env["JANITOR_HOUSTON_DSN"] == secret_ref("astronomer-houston-backend", "connection")
    assert env["JANITOR_REGISTRY_PASSWORD"] == secret_ref(
        "janitor-credentials", "registry-password", optional=True
    )
    credential_vars = {name for name, value in env.items() if "secretKeyRef" in str(value)}
    assert credential_vars == {
        "JANITOR_HOUSTON_DSN",
        "JANITOR_AIRFLOW_DSN",
        "JANITOR_REGISTRY_USERNAME",
        "JANITOR_REGISTRY_PASSWORD",
        "JANITOR_REGISTRY_TOKEN",
        "JANITOR_ELASTICSEARCH_USERNAME",
        "JANITOR_ELASTICSEARCH_PASSWORD",
        "JANITOR_ELASTICSEARCH_API_KEY",
        "JANITOR_PROMETHEUS_USERNAME",
        "JANITOR_PROMETHEUS_PASSWORD",
        "JANITOR_PROMETHEUS_TOKEN",
    }


@pytest.mark.parametrize("values", [{}, NON_DEFAULT], ids=["default", "non-default"])
def test_pod_passes_the_restricted_pod_security_standard(
    chart: helm.Chart, values: dict[str, Any]
) -> None:
    """The pod runs in a namespace enforcing PSS "restricted": non-root numeric user,
    read-only root, no privilege escalation, ALL capabilities dropped, RuntimeDefault."""
    pod = pod_spec(manifests(chart, values))
    assert restricted_violations(pod) == []
    assert pod["securityContext"]["runAsUser"] == 10001


def test_restricted_check_catches_what_a_user_might_turn_off(chart: helm.Chart) -> None:
    """The PSS check is not vacuous: a securityContext override that re-enables escalation
    and a root user is reported."""
    pod = pod_spec(
        manifests(
            chart,
            {
                "podSecurityContext": {"runAsUser": 0},
                "securityContext": {"allowPrivilegeEscalation": True},
            },
        )
    )
    assert restricted_violations(pod) == [
        "janitor: allowPrivilegeEscalation is not false",
        "janitor: runAsUser is 0",
    ]


def test_role_grants_only_what_the_job_calls(chart: helm.Chart) -> None:
    """The Role allows creating Leases and reading/renewing only this release's Lease, plus
    posting Events and reading its own CronJob when events are on; nothing else."""
    found = manifests(chart)
    role = one(found, "Role")
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": [RELEASE],
            "verbs": ["get", "update"],
        },
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
        {
            "apiGroups": ["batch"],
            "resources": ["cronjobs"],
            "resourceNames": [RELEASE],
            "verbs": ["get"],
        },
    ]
    binding = one(found, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": RELEASE,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}
    ]
    assert one(found, "ServiceAccount")["automountServiceAccountToken"] is False

    [quiet] = [
        m
        for m in manifests(chart, NON_DEFAULT)
        if m["kind"] == "Role" and m["metadata"]["name"] == RELEASE
    ]
    assert quiet["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["platform-janitor-lock"],
            "verbs": ["get", "update"],
        },
    ]


STATEFULSET_RULE = {
    "apiGroups": ["apps"],
    "resources": ["statefulsets"],
    "resourceNames": ["astronomer-prometheus"],
    "verbs": ["get"],
}
OPERATOR_RULE = {
    "apiGroups": ["monitoring.coreos.com"],
    "resources": ["prometheuses"],
    "resourceNames": ["k8s"],
    "verbs": ["get"],
}
KIND_VALUES = {
    "statefulset": ({}, STATEFULSET_RULE),
    "prometheus": ({"kind": "prometheus", "name": "k8s"}, OPERATOR_RULE),
}


def read_rules(found: list[Manifest]) -> list[tuple[str, Manifest]]:
    """Every rule that reads a Prometheus object, with the namespace of its Role."""
    return [
        (role["metadata"]["namespace"], rule)
        for role in found
        if role["kind"] == "Role"
        for rule in role["rules"]
        if {"statefulsets", "prometheuses"} & set(rule["resources"])
    ]


@pytest.mark.parametrize("kind", KIND_VALUES)
@pytest.mark.parametrize("namespace", ["", NAMESPACE])
def test_kubernetes_source_in_the_release_namespace_adds_one_rule_to_the_role(
    chart: helm.Chart, kind: str, namespace: str
) -> None:
    """prometheus.source=kubernetes with Prometheus next to the janitor lets the Role `get`
    exactly that StatefulSet or Prometheus resource, and adds no other RBAC object."""
    values, rule = KIND_VALUES[kind]
    found = manifests(
        chart, {"prometheus": {"source": "kubernetes", "namespace": namespace, **values}}
    )
    assert [m["kind"] for m in found] == ["ServiceAccount", "Role", "RoleBinding", "CronJob"]
    role = one(found, "Role")
    assert role["rules"][-1] == rule
    assert read_rules(found) == [(NAMESPACE, rule)]
    env = container_env(found)
    assert env["JANITOR_PROMETHEUS_SOURCE"] == "kubernetes"
    assert env["JANITOR_PROMETHEUS_KIND"] == kind
    assert env["JANITOR_PROMETHEUS_NAME"] == rule["resourceNames"][0]
    assert env.get("JANITOR_PROMETHEUS_NAMESPACE") == (namespace or None)
    kubernetes_validate.validate(role, KUBE_VERSIONS[-1], strict=True)


@pytest.mark.parametrize("kind", KIND_VALUES)
def test_kubernetes_source_in_another_namespace_gets_its_own_role_there(
    chart: helm.Chart, kind: str
) -> None:
    """Prometheus in `monitoring`: a Role there allows `get` on exactly that object, bound
    to the janitor's ServiceAccount in the release namespace; the release Role is unchanged."""
    values, rule = KIND_VALUES[kind]
    found = manifests(
        chart, {"prometheus": {"source": "kubernetes", "namespace": "monitoring", **values}}
    )
    assert read_rules(found) == [("monitoring", rule)]
    placed = {(m["kind"], m["metadata"]["namespace"], m["metadata"]["name"]) for m in found}
    assert placed == {
        ("ServiceAccount", NAMESPACE, RELEASE),
        ("Role", NAMESPACE, RELEASE),
        ("RoleBinding", NAMESPACE, RELEASE),
        ("CronJob", NAMESPACE, RELEASE),
        ("Role", "monitoring", f"{RELEASE}-prometheus"),
        ("RoleBinding", "monitoring", f"{RELEASE}-prometheus"),
    }
    [binding] = [
        m for m in found if m["kind"] == "RoleBinding" and m["metadata"]["namespace"] != NAMESPACE
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": f"{RELEASE}-prometheus",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": RELEASE, "namespace": NAMESPACE}
    ]
    assert container_env(found)["JANITOR_PROMETHEUS_NAMESPACE"] == "monitoring"
    for manifest in found:
        kubernetes_validate.validate(manifest, KUBE_VERSIONS[-1], strict=True)


def test_http_source_grants_no_access_to_prometheus_objects(chart: helm.Chart) -> None:
    """The default (HTTP) source reads nothing from the cluster, so no Role allows it, even
    with a kind, namespace and name filled in ahead of a switch; rbac.create=false leaves
    granting to the operator."""
    assert read_rules(manifests(chart)) == []
    ahead = {"kind": "prometheus", "namespace": "monitoring", "name": "k8s"}
    assert read_rules(manifests(chart, {"prometheus": ahead})) == []
    by_hand = manifests(
        chart,
        {"prometheus": {"source": "kubernetes", **ahead}, "rbac": {"create": False}},
    )
    assert [m["kind"] for m in by_hand] == ["ServiceAccount", "CronJob"]


def test_bring_your_own_service_account_and_rbac(chart: helm.Chart) -> None:
    """serviceAccount.create=false and rbac.create=false render only the CronJob, running as
    the named account; leaving the name out is refused."""
    found = manifests(
        chart,
        {
            "serviceAccount": {"create": False, "name": "platform-janitor"},
            "rbac": {"create": False},
        },
    )
    assert [m["kind"] for m in found] == ["CronJob"]
    assert pod_spec(found)["serviceAccountName"] == "platform-janitor"
    with pytest.raises(helm.HelmRenderError, match=r"serviceAccount\.name is required"):
        render_templates(chart, {"serviceAccount": {"create": False}})


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"houston": {"retentionDays": 0}}, r"/houston/retentionDays.*minimum"),
        ({"houston": {"retentionDays": "abc"}}, r"/houston/retentionDays.*want integer"),
        ({"elasticsearch": {"retentionDays": 0}}, r"/elasticsearch/retentionDays"),
        ({"prometheus": {"retentionDays": 1.5}}, r"/prometheus/retentionDays"),
        ({"maxDeletions": -1}, r"/maxDeletions"),
        ({"maxDeletions": 1_000_000_001}, r"/maxDeletions.*maximum"),
        ({"houston": {"retentionDays": 36501}}, r"/houston/retentionDays.*maximum"),
        ({"elasticsearch": {"retentionDays": 800000}}, r"/elasticsearch/retentionDays"),
        ({"prometheus": {"retentionDays": 10**20}}, r"/prometheus/retentionDays"),
        ({"concurrency": 0}, r"/concurrency"),
        ({"dryRun": "yes"}, r"/dryRun"),
        ({"logFormat": "xml"}, r"/logFormat"),
        ({"registry": {"url": "ftp://registry"}}, r"/registry/url"),
        ({"elasticsearch": {"ageSource": "mtime"}}, r"/elasticsearch/ageSource"),
        ({"prometheus": {"source": "operator"}}, r"/prometheus/source"),
        ({"prometheus": {"kind": "deployment"}}, r"/prometheus/kind"),
        ({"prometheus": {"namespace": "Monitoring"}}, r"/prometheus/namespace"),
        ({"prometheus": {"name": ""}}, r"/prometheus/name"),
        ({"airflowDatabase": {"databaseTemplate": "airflow"}}, r"/airflowDatabase"),
        ({"houston": {"retentionDay": 15}}, r"retentionDay"),
        ({"credentials": {"houstonDsn": "postgresql://x"}}, r"/credentials/houstonDsn"),
        ({"backup": {"url": "https://backups.example.com"}}, r"/backup/url"),
        ({"backup": {"url": "file://relative"}}, r"/backup/url"),
        ({"backup": {"retentionDays": 0}}, r"/backup/retentionDays"),
        ({"backup": {"s3EndpointUrl": "minio:9000"}}, r"/backup/s3EndpointUrl"),
        ({"backup": {"persistentVolumeClaim": {"size": "lots"}}}, r"/backup/persistentVolumeClaim"),
        (
            {"backup": {"persistentVolumeClaim": {"accessModes": []}}},
            r"/backup/persistentVolumeClaim",
        ),
        ({"backup": {"s3Credentials": {"existingSecret": "Bad_Name"}}}, r"/backup/s3Credentials"),
        ({"shards": 0}, r"/shards.*minimum"),
        ({"shards": 65}, r"/shards.*maximum"),
        ({"shards": 2.5}, r"/shards"),
        ({"shards": "3"}, r"/shards.*want integer"),
    ],
)
def test_schema_rejects_bad_values(
    chart: helm.Chart, values: dict[str, Any], complaint: str
) -> None:
    """`helm install` refuses a bad value before anything reaches the cluster, naming it."""
    with pytest.raises(helm.HelmValuesError, match=complaint):
        chart.validate_schema(values)
    with pytest.raises(helm.HelmValuesError):
        render_templates(chart, values)


def test_schema_accepts_registry_none_and_the_documented_examples(chart: helm.Chart) -> None:
    """`registry.url: none` (a platform without images) and the all-knobs values pass."""
    chart.validate_schema({"registry": {"url": "none"}})
    chart.validate_schema(NON_DEFAULT)
    env = container_env(manifests(chart, {"registry": {"url": "none"}}))
    assert env["JANITOR_REGISTRY_URL"] == "none"


@pytest.mark.parametrize("values", [None, NON_DEFAULT], ids=["default", "non-default"])
def test_helm_lint_is_clean(values: dict[str, Any] | None) -> None:
    """`helm lint --strict` finds no warning or error (only the optional-icon hint)."""
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_notes_tell_how_to_start_a_manual_run_and_read_its_events(chart: helm.Chart) -> None:
    """After install the operator sees the exact manual-run and events commands."""
    notes = render_templates(chart)[f"{RELEASE}/templates/NOTES.txt"]
    assert (
        f"kubectl -n {NAMESPACE} create job --from=cronjob/{RELEASE} "
        f"{RELEASE}-manual-$(date +%s)" in notes
    )
    assert f"kubectl -n {NAMESPACE} describe cronjob {RELEASE}" in notes
    assert f"get events --field-selector involvedObject.name={RELEASE}" in notes
    assert f"kubectl -n {NAMESPACE} get lease {RELEASE}" in notes


def test_empty_and_null_values_reach_the_janitor_as_its_defaults(chart: helm.Chart) -> None:
    """roleTemplates: [] renders JANITOR_ROLE_TEMPLATES="" and a null renders an empty
    variable: the janitor reads both as its defaults, so the roles still go with their
    database (issue 17: no role was ever dropped again) and names keep their date format."""
    values = {
        "airflowDatabase": {"roleTemplates": []},
        "elasticsearch": {"timestring": None, "indexPatterns": None, "ageSource": "name"},
        "houston": {"schema": None, "table": None, "deletedColumn": None},
        "prometheus": {"name": None},
    }
    env = container_env(manifests(chart, values))
    # Kubernetes sets a variable whose value is null to "".
    plain = {name: value or "" for name, value in env.items() if not isinstance(value, dict)}
    assert plain["JANITOR_ROLE_TEMPLATES"] == ""
    assert plain["JANITOR_LOG_TIMESTRING"] == ""

    settings = load_settings({}, plain)

    defaults = Settings()
    assert settings.role_templates == defaults.role_templates
    assert settings.log_timestring == defaults.log_timestring
    assert settings.log_index_patterns == defaults.log_index_patterns
    assert (settings.houston_schema, settings.houston_table, settings.houston_deleted_column) == (
        defaults.houston_schema,
        defaults.houston_table,
        defaults.houston_deleted_column,
    )
    assert settings.prometheus_name == defaults.prometheus_name


def test_long_release_names_still_make_valid_job_names(chart: helm.Chart) -> None:
    """A 53-character release name is cut so the CronJob's Job names and the manual Job
    name from the notes fit in 63 characters."""
    release = "platform-observability-production-eu-west-1-janitors"
    found = manifests(chart, release=release)
    name = one(found, "CronJob")["metadata"]["name"]
    assert len(name) <= 52
    notes = render_templates(chart, release=release)[f"{RELEASE}/templates/NOTES.txt"]
    [manual] = re.findall(r"create job --from=cronjob/\S+ (\S+)-\$\(date \+%s\)", notes)
    assert len(manual) + 1 + 10 <= 63  # a 10-digit epoch second


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool (Debian package prometheus) is installed by scripts/ensure-services.sh"
    return found


def test_alert_rules_fire_on_a_failed_run_and_on_two_days_without_success(
    chart: helm.Chart, tmp_path: Path
) -> None:
    """promtool runs the rendered alert rules over kube-state-metrics series: the failed
    latest run alerts, a failure followed by a success does not, and no success for two
    days alerts unless the CronJob is suspended."""
    rule = one(manifests(chart, {"prometheusRule": {"enabled": True}}), "PrometheusRule")
    assert [r["alert"] for r in rule["spec"]["groups"][0]["rules"]] == [
        "AstroJanitorJobFailed",
        "AstroJanitorNotSucceeded",
    ]

    ns, cj = f'namespace="{NAMESPACE}"', f'cronjob="{RELEASE}"'
    hour, day = 3600, 86400

    def job(name: str, started: int, failed: bool) -> list[dict[str, str]]:
        labels = f'{ns}, job_name="{name}"'
        return [
            {"series": f"kube_job_status_start_time{{{labels}}}", "values": f"{started}x60"},
            {
                "series": f'kube_job_failed{{{labels}, condition="true"}}',
                "values": f"{int(failed)}x60",
            },
            {
                "series": (
                    f'kube_job_owner{{{labels}, owner_kind="CronJob", owner_name="{RELEASE}"}}'
                ),
                "values": "1x60",
            },
        ]

    def cronjob(created: int, last_success: int | None, suspended: bool) -> list[dict[str, str]]:
        series = [
            {"series": f"kube_cronjob_created{{{ns}, {cj}}}", "values": f"{created}x4800"},
            {
                "series": f"kube_cronjob_spec_suspend{{{ns}, {cj}}}",
                "values": f"{int(suspended)}x4800",
            },
        ]
        if last_success is not None:
            series.append(
                {
                    "series": f"kube_cronjob_status_last_successful_time{{{ns}, {cj}}}",
                    "values": f"{last_success}x4800",
                }
            )
        return series

    failed_alert = {"alertname": "AstroJanitorJobFailed"}
    failed_fires = [
        {
            "exp_labels": {"severity": "warning", "namespace": NAMESPACE},
            "exp_annotations": {
                "summary": "The latest astro-janitor run failed.",
                "description": (
                    f"A Job of CronJob {NAMESPACE}/{RELEASE} failed after the last successful "
                    f"run. Read its log and the Events: kubectl -n {NAMESPACE} get events "
                    f"--field-selector involvedObject.name={RELEASE}"
                ),
            },
        }
    ]
    stale_fires = [
        {
            "exp_labels": {"severity": "warning", "namespace": NAMESPACE, "cronjob": RELEASE},
            "exp_annotations": {
                "summary": "astro-janitor has not succeeded for 48 hours.",
                "description": (
                    f"CronJob {NAMESPACE}/{RELEASE} has had no successful run for 48 hours: "
                    "expired deployments, images and log indices are piling up. Start a run "
                    "by hand and read its events."
                ),
            },
        }
    ]
    stale_alert = {"alertname": "AstroJanitorNotSucceeded"}
    # Samples every minute: Prometheus forgets a series 5 minutes after its last sample,
    # and the 15-minute `for` of the staleness alert needs it present throughout.
    tests = [
        {  # the manual run after yesterday's success failed
            "interval": "1m",
            "input_series": cronjob(0, 10 * 60, False) + job(f"{RELEASE}-manual-1", 20 * 60, True),
            "alert_rule_test": [{"eval_time": "30m", **failed_alert, "exp_alerts": failed_fires}],
        },
        {  # an old failure, then a successful run: nothing to say
            "interval": "1m",
            "input_series": cronjob(0, 30 * 60, False) + job(f"{RELEASE}-29000000", 60, True),
            "alert_rule_test": [{"eval_time": "40m", **failed_alert, "exp_alerts": []}],
        },
        {  # failing since the first run ever: no success series at all
            "interval": "1m",
            "input_series": cronjob(0, None, False) + job(f"{RELEASE}-29000001", 60, True),
            "alert_rule_test": [{"eval_time": "5m", **failed_alert, "exp_alerts": failed_fires}],
        },
        {  # last success a day after install, then nothing for two days
            "interval": "1m",
            "input_series": cronjob(0, 1 * day, False),
            "alert_rule_test": [
                {"eval_time": "72h", **stale_alert, "exp_alerts": []},
                {"eval_time": "73h", **stale_alert, "exp_alerts": stale_fires},
            ],
        },
        {  # installed and never succeeded
            "interval": "1m",
            "input_series": cronjob(0, None, False),
            "alert_rule_test": [
                {"eval_time": "47h", **stale_alert, "exp_alerts": []},
                {"eval_time": "49h", **stale_alert, "exp_alerts": stale_fires},
            ],
        },
        {  # the same, but an operator suspended the CronJob on purpose
            "interval": "1m",
            "input_series": cronjob(0, 2 * hour, True),
            "alert_rule_test": [{"eval_time": "79h", **stale_alert, "exp_alerts": []}],
        },
    ]
    promtool_test(rule, tests, tmp_path)


def promtool_test(rule: Manifest, tests: list[dict[str, Any]], directory: Path) -> None:
    """`promtool check rules` on the PrometheusRule's groups, then `promtool test rules`."""
    rules = directory / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    subprocess.run([promtool(), "check", "rules", str(rules)], check=True, capture_output=True)
    suite = directory / "tests.yaml"
    suite.write_text(yaml.safe_dump({"rule_files": [str(rules)], "tests": tests}))
    result = subprocess.run(
        [promtool(), "test", "rules", str(suite)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_run_metric_alerts_fire_on_failure_mismatch_rows_left_and_no_success(
    chart: helm.Chart, tmp_path: Path
) -> None:
    """With a Pushgateway configured, promtool runs the alerts on the pushed run metrics:
    a last run that exited 1 alerts, one that exited 0 does not, exit 3 is a retention
    mismatch, expired rows left after a run alert with their count, and a last success more
    than two days old alerts (one a day old does not); every alert names the Houston
    database."""
    values = {"prometheusRule": {"enabled": True}, "pushgateway": {"url": "http://gw:9091"}}
    rule = one(manifests(chart, values), "PrometheusRule")
    pushed = 'job="astro-janitor", instance="houston", pod="pushgateway-0"'

    def series(name: str, values: str) -> dict[str, str]:
        return {"series": f"{name}{{{pushed}}}", "values": values}

    def fires(alert: str, at: str, value: str = "") -> dict[str, Any]:
        """``alert`` fires at ``at``, its annotations with {value} filled in."""
        expected = {
            "exp_labels": {"severity": "warning", "instance": "houston"},
            "exp_annotations": {k: v.format(value=value) for k, v in annotations[alert].items()},
        }
        return {"eval_time": at, "alertname": alert, "exp_alerts": [expected]}

    def quiet(alert: str, at: str) -> dict[str, Any]:
        return {"eval_time": at, "alertname": alert, "exp_alerts": []}

    annotations = {
        "AstroJanitorRunFailed": {
            "summary": "The last astro-janitor run for houston exited {value}.",
            "description": (
                "Exit 1: an action failed (its event says why; the rows it concerns are kept "
                "for the next run); 2: invalid configuration; 4: the safety guard refused a "
                f"plan larger than maxDeletions. Read the run's log in namespace {NAMESPACE}, "
                f"CronJob {RELEASE}."
            ),
        },
        "AstroJanitorRetentionMismatch": {
            "summary": "Prometheus does not keep metrics for the configured window.",
            "description": (
                "The last astro-janitor run for houston found the Prometheus retention "
                "different from prometheus.retentionDays; its metrics.retention.check event "
                "says what to set."
            ),
        },
        "AstroJanitorNoRecentSuccess": {
            "summary": "astro-janitor has not succeeded for 48 hours.",
            "description": (
                "The last run for houston that exited 0 or 3 ended more than 48 hours ago: "
                "expired deployments, images and log indices are piling up."
            ),
        },
        "AstroJanitorExpiredDeploymentsRemaining": {
            "summary": "Expired deployments are left in Houston after the last astro-janitor run.",
            "description": (
                "{value} deployment rows of Houston database houston were still past the "
                "retention window after the last run. Their deployment.purge events say why "
                "each was kept (a failure, an invalid or reused release name, the run's "
                "deadline)."
            ),
        },
    }
    tests = [
        {  # a clean run, then one that failed, then one with a retention mismatch
            "interval": "1m",
            "input_series": [
                series("janitor_last_run_exit_code", "0x9 1x10 3x10"),
                series("janitor_expired_deployments_remaining", "0x9 2x10 0x10"),
                series("janitor_last_success_timestamp_seconds", "0x30"),
            ],
            "alert_rule_test": [
                quiet("AstroJanitorRunFailed", "5m"),
                quiet("AstroJanitorExpiredDeploymentsRemaining", "5m"),
                fires("AstroJanitorRunFailed", "15m", "1"),
                fires("AstroJanitorExpiredDeploymentsRemaining", "15m", "2"),
                quiet("AstroJanitorRetentionMismatch", "15m"),
                quiet("AstroJanitorRunFailed", "25m"),
                fires("AstroJanitorRetentionMismatch", "25m"),
            ],
        },
        {  # the last success was at time 0: quiet for two days, then the alert
            "interval": "10m",
            "input_series": [
                series("janitor_last_run_exit_code", "1x400"),
                series("janitor_last_success_timestamp_seconds", "0x400"),
            ],
            "alert_rule_test": [
                quiet("AstroJanitorNoRecentSuccess", "24h"),
                quiet("AstroJanitorNoRecentSuccess", "47h50m"),
                fires("AstroJanitorNoRecentSuccess", "48h10m"),
            ],
        },
    ]
    promtool_test(rule, tests, tmp_path)


def default_manifests_text() -> str:
    """`helm template astro-janitor chart -n astronomer`, as printed in docs/kubernetes.md."""
    with helm.Chart.load(CHART) as loaded:
        rendered = render_templates(loaded)
    sources = sorted(
        (
            (INSTALL_ORDER.index(document["kind"]), path, text.strip())
            for path, text in rendered.items()
            if path.endswith(".yaml") and text.strip()
            for document in [yaml.safe_load(text.split("\n---\n")[0])]
            if document
        ),
    )
    return "".join(f"---\n# Source: {path}\n{text}\n" for _, path, text in sources)


def test_docs_show_the_current_default_render_and_it_is_valid() -> None:
    """docs/kubernetes.md shows exactly what the chart renders with default values, and
    that text passes the Kubernetes schema checks."""
    text = DOCS.read_text(encoding="utf-8")
    shown = text.split(DOCS_BEGIN, 1)[1].split(DOCS_END, 1)[0]
    shown = shown.strip().removeprefix("```yaml").removesuffix("```").strip() + "\n"
    assert shown == default_manifests_text(), (
        "docs/kubernetes.md is stale: run `.venv/bin/python tests/test_chart.py`"
    )
    documents = [d for d in yaml.safe_load_all(shown) if d]
    assert [d["kind"] for d in documents] == ["ServiceAccount", "Role", "RoleBinding", "CronJob"]
    for document in documents:
        kubernetes_validate.validate(document, KUBE_VERSIONS[-1], strict=True)


def write_docs_render() -> None:
    """Refresh the rendered-default block of docs/kubernetes.md after a chart change."""
    text = DOCS.read_text(encoding="utf-8")
    head, rest = text.split(DOCS_BEGIN, 1)
    tail = rest.split(DOCS_END, 1)[1]
    block = f"{DOCS_BEGIN}\n```yaml\n{default_manifests_text()}```\n{DOCS_END}"
    DOCS.write_text(head + block + tail, encoding="utf-8")


if __name__ == "__main__":
    write_docs_render()


def test_the_run_deadline_ends_before_the_jobs(chart: helm.Chart) -> None:
    """JANITOR_DEADLINE_SECONDS is activeDeadlineSeconds less the margin, so the run prints
    its own summary before Kubernetes kills it; a margin that leaves no run is refused."""
    found = manifests(chart, {"activeDeadlineSeconds": 1800, "deadlineMarginSeconds": 120})
    assert container_env(found)["JANITOR_DEADLINE_SECONDS"] == "1680"
    with pytest.raises(Exception, match="must exceed deadlineMarginSeconds"):
        manifests(chart, {"activeDeadlineSeconds": 300, "deadlineMarginSeconds": 300})


def test_a_file_backup_url_mounts_a_claim_the_chart_keeps_after_uninstall(
    chart: helm.Chart,
) -> None:
    """backup.url file:///var/backups/janitor with persistentVolumeClaim.create: a claim
    (helm.sh/resource-policy keep) mounted at that path, the backup variables set, every
    object valid and the pod still "restricted"; an existing claim is mounted instead."""
    backup = {
        "url": "file:///var/backups/janitor/",
        "retentionDays": 60,
        "persistentVolumeClaim": {"create": True, "size": "20Gi", "storageClassName": "fast"},
    }
    found = manifests(chart, {"backup": backup})

    claim = one(found, "PersistentVolumeClaim")
    assert claim["metadata"]["name"] == f"{RELEASE}-backups"
    assert claim["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "storageClassName": "fast",
        "resources": {"requests": {"storage": "20Gi"}},
    }
    for manifest in found:
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(manifest, version, strict=True)
    env = container_env(found)
    assert env["JANITOR_BACKUP_URL"] == "file:///var/backups/janitor/"
    assert env["JANITOR_BACKUP_RETENTION_DAYS"] == "60"
    assert "JANITOR_BACKUP_S3_ENDPOINT_URL" not in env
    assert "AWS_ACCESS_KEY_ID" not in env
    pod = pod_spec(found)
    [container] = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["backups"] == "/var/backups/janitor"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["backups"] == {
        "name": "backups",
        "persistentVolumeClaim": {"claimName": f"{RELEASE}-backups"},
    }
    assert restricted_violations(pod) == []
    assert load_settings({}, {k: v for k, v in env.items() if isinstance(v, str)}).backup_url == (
        "file:///var/backups/janitor"
    )

    existing = {"url": "file:///backups", "persistentVolumeClaim": {"existingClaim": "dumps"}}
    found = manifests(chart, {"backup": existing})
    assert [m for m in found if m["kind"] == "PersistentVolumeClaim"] == []
    volumes = {v["name"]: v for v in pod_spec(found)["volumes"]}
    assert volumes["backups"]["persistentVolumeClaim"] == {"claimName": "dumps"}


def test_a_file_backup_url_without_a_volume_is_refused(chart: helm.Chart) -> None:
    """The root filesystem is read-only: a file:// store needs a claim, and says how."""
    with pytest.raises(helm.HelmRenderError, match=r"backup\.persistentVolumeClaim"):
        render_templates(chart, {"backup": {"url": "file:///var/backups/janitor"}})


def test_an_s3_backup_url_takes_its_credentials_from_an_existing_secret(chart: helm.Chart) -> None:
    """backup.url s3://..., an S3-compatible endpoint and s3Credentials.existingSecret: the
    endpoint variable and the two AWS variables from that Secret, and no volume."""
    backup = {
        "url": "s3://platform-backups/astro-janitor",
        "s3EndpointUrl": "http://minio.minio:9000",
        "s3Credentials": {"existingSecret": "minio-janitor", "accessKeyIdKey": "user"},
    }
    found = manifests(chart, {"backup": backup})

    env = container_env(found)
    assert env["JANITOR_BACKUP_URL"] == "s3://platform-backups/astro-janitor"
    assert env["JANITOR_BACKUP_RETENTION_DAYS"] == "30"
    assert env["JANITOR_BACKUP_S3_ENDPOINT_URL"] == "http://minio.minio:9000"
    assert env["AWS_ACCESS_KEY_ID"] == secret_ref("minio-janitor", "user")
    assert env["AWS_SECRET_ACCESS_KEY"] == secret_ref("minio-janitor", "AWS_SECRET_ACCESS_KEY")
    assert "backups" not in {v["name"] for v in pod_spec(found)["volumes"]}
    assert [m for m in found if m["kind"] == "PersistentVolumeClaim"] == []
    for manifest in found:
        kubernetes_validate.validate(manifest, KUBE_VERSIONS[-1], strict=True)


def test_shards_make_an_indexed_job_with_one_pod_and_one_lease_per_shard(
    chart: helm.Chart, tmp_path: Path
) -> None:
    """shards: 3 turns the CronJob's Job into an Indexed Job of 3 pods running at once,
    retried and failed per index (one shard's exit 3 or 4 leaves the others running); the
    pod gets JANITOR_SHARDS, and with the JOB_COMPLETION_INDEX Kubernetes sets, each pod is
    its own shard holding a Lease the Role lets it renew. It validates strictly; shards: 1
    stays one plain Job."""
    found = manifests(chart, {"shards": 3, "backoffLimit": 2})
    job = one(found, "CronJob")["spec"]["jobTemplate"]["spec"]
    assert {k: job.get(k) for k in ("completionMode", "completions", "parallelism")} == {
        "completionMode": "Indexed",
        "completions": 3,
        "parallelism": 3,
    }
    assert (job["backoffLimitPerIndex"], "backoffLimit" in job) == (2, False)
    assert [rule["action"] for rule in job["podFailurePolicy"]["rules"]] == ["FailIndex"]
    env = container_env(found)
    assert env["JANITOR_SHARDS"] == "3"
    plain = {k: v for k, v in env.items() if isinstance(v, str)}
    [renewable] = [r for r in one(found, "Role")["rules"] if r["resources"] == ["leases"]][1:]
    for index in range(3):
        settings = load_settings({}, plain | {JOB_COMPLETION_INDEX: str(index)})
        assert str(settings.shard) == f"{index}/3"
        assert renewable["resourceNames"][index] == settings.shard.name(settings.lease_name)
    for manifest in found:
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(manifest, version, strict=True)
    notes = render_templates(chart, {"shards": 3})[f"{RELEASE}/templates/NOTES.txt"]
    assert f"get lease {RELEASE}-shard-0-of-3 {RELEASE}-shard-1-of-3 {RELEASE}-shard-2-of-3" in (
        notes
    )

    single = one(manifests(chart, {"shards": 1}), "CronJob")["spec"]["jobTemplate"]["spec"]
    assert not {"completionMode", "completions", "parallelism", "backoffLimitPerIndex"} & set(
        single
    )
    assert "JANITOR_SHARDS" not in container_env(manifests(chart, {"shards": 1}))


def test_run_metric_alerts_count_every_shard(chart: helm.Chart, tmp_path: Path) -> None:
    """With shards, each shard pushes its own group (label shard): one shard that failed
    alerts even while shard 0 reports a retention mismatch, the rows left by all shards add
    up, and one shard without a success for two days alerts although the others succeed."""
    values = {
        "shards": 2,
        "prometheusRule": {"enabled": True},
        "pushgateway": {"url": "http://gw:9091"},
    }
    rule = one(manifests(chart, values), "PrometheusRule")

    def series(name: str, shard: str, values: str) -> dict[str, str]:
        labels = f'job="astro-janitor", instance="houston", shard="{shard}"'
        return {"series": f"{name}{{{labels}}}", "values": values}

    def alerting(alert: str, at: str, fires: bool, value: str = "") -> dict[str, Any]:
        """``alert`` at ``at``; when it fires, its annotations with ``value`` filled in."""
        [found] = [r for r in rule["spec"]["groups"][0]["rules"] if r.get("alert") == alert]
        annotations = {
            key: text.replace("{{ $value }}", value).replace("{{ $labels.instance }}", "houston")
            for key, text in found["annotations"].items()
        }
        labels = {"severity": "warning", "instance": "houston"}
        expected = [{"exp_labels": labels, "exp_annotations": annotations}] if fires else []
        return {"eval_time": at, "alertname": alert, "exp_alerts": expected}

    tests = [
        {
            "interval": "10m",
            "input_series": [
                series("janitor_last_run_exit_code", "0/2", "3x400"),
                series("janitor_last_run_exit_code", "1/2", "0x2 1x400"),
                series("janitor_expired_deployments_remaining", "0/2", "1x400"),
                series("janitor_expired_deployments_remaining", "1/2", "2x400"),
                series("janitor_last_success_timestamp_seconds", "0/2", "0+600x400"),
                series("janitor_last_success_timestamp_seconds", "1/2", "0x400"),
            ],
            "alert_rule_test": [
                alerting("AstroJanitorRunFailed", "10m", fires=False),
                alerting("AstroJanitorRunFailed", "30m", fires=True, value="1"),
                alerting("AstroJanitorRetentionMismatch", "30m", fires=True),
                alerting("AstroJanitorExpiredDeploymentsRemaining", "30m", fires=True, value="3"),
                alerting("AstroJanitorNoRecentSuccess", "47h50m", fires=False),
                alerting("AstroJanitorNoRecentSuccess", "48h10m", fires=True),
            ],
        },
    ]
    promtool_test(rule, tests, tmp_path)
