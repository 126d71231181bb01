"""The Helm chart, rendered with several value sets: `helm lint --strict`, Kubernetes schema
validation (kubernetes-validate, strict, 1.32) of every rendered manifest, and assertions on
what is rendered — the flags each service gets (parsed by the real `specd` CLI parser), probes,
discovery RBAC, autoscaling, Secret mounts, the schema refusing bad values.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import kubernetes_validate
import pytest
from chart_helpers import (
    CHART,
    NAMESPACE,
    RELEASE,
    Rendered,
    container,
    file_source,
    flag,
    pod_spec,
    render,
    run_helm,
    template,
)

from specd_cli.main import build_parser

K8S_VERSION = "1.32.0"

GPU: dict[str, Any] = {
    "targetService": {
        "model": "/models/llama-70b",
        "device": "cuda",
        "dtype": "bfloat16",
        "maxSessions": 16,
        "maxContext": 8192,
        "maxBatch": 32,
        "batchWindowMs": 2.5,
        "prefillChunk": 512,
        "prefixCacheMb": 4096,
        "argmaxScreen": False,
        "gpu": {"enabled": True, "count": 2},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "nodeSelector": {"gpu": "h100"},
    },
    "draftService": {"draftModel": "/models/llama-1b", "gpu": {"enabled": True}},
    "modelCache": {"existingClaim": "specd-models"},
}
EXTERNAL_REDIS: dict[str, Any] = {
    "phraseStore": {
        "mode": "external",
        "external": {
            "url": "rediss://redis.cache.svc:6380/2",
            "existingSecret": "redis-auth",
            "existingSecretKey": "password",
        },
    }
}
TLS_AND_KEYS: dict[str, Any] = {
    "tls": {"enabled": True, "existingSecret": "specd-mtls"},
    "orchestrator": {
        "apiKeys": {"existingSecret": "specd-api-keys"},
        "serverTls": {"enabled": True, "existingSecret": "specd-front-door"},
    },
    "phraseStore": {"internal": {"auth": {"existingSecret": "redis-auth"}}},
}
FIXED_DRAFTERS: dict[str, Any] = {"draftService": {"autoscaling": {"enabled": False}, "replicas": 3}}
CUSTOM_METRIC: dict[str, Any] = {
    "draftService": {
        "autoscaling": {
            "minReplicas": 2,
            "maxReplicas": 10,
            "targetCPUUtilizationPercentage": 0,
            "metrics": [
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "specd_draft_requests_per_second"},
                        "target": {"type": "AverageValue", "averageValue": "20"},
                    },
                }
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        }
    }
}
DISABLED: dict[str, Any] = {
    "targetService": {"enabled": False},
    "draftService": {"enabled": False},
    "phraseStore": {"enabled": False},
    "metrics": {"enabled": False},
    "orchestrator": {"targetAddress": "big-gpu.models.svc:50052"},
}
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "gpu": GPU,
    "external-redis": EXTERNAL_REDIS,
    "tls-and-api-keys": TLS_AND_KEYS,
    "fixed-drafters": FIXED_DRAFTERS,
    "custom-metric": CUSTOM_METRIC,
    "disabled": DISABLED,
}
COMPONENT_COMMAND = {"target": "target", "draft": "draft", "orchestrator": "orchestrator"}


def name(component: str) -> str:
    return f"{RELEASE}-specd-{component}"


def args_of(rendered: Rendered, component: str) -> list[str]:
    return [str(a) for a in container(rendered.get("Deployment", component))["args"]]


def parse_with_cli(command: str, args: list[str]) -> argparse.Namespace:
    """Parse rendered args with the real `specd COMMAND` parser (argparse exits on a bad flag)."""
    parser = build_parser()
    return parser.parse_args([command, *args])


# --- every value set: lint, validate, common properties ------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_lint_strict_and_kubernetes_schemas(values):
    lint = run_helm(["lint", "--strict", str(CHART), "--namespace", NAMESPACE], values)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "0 chart(s) failed" in lint.stdout
    rendered = render(values)
    assert rendered.docs
    for doc in rendered.docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            raise AssertionError(f"{where} is not a valid Kubernetes {K8S_VERSION} object: {err}") from None
        assert doc["metadata"]["namespace"] == NAMESPACE, where
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == RELEASE, where
        assert labels["app.kubernetes.io/managed-by"] == "Helm", where


def test_kubernetes_validation_is_not_vacuous():
    """The strict validator used above refuses a typo'd field and a wrong type."""
    deployment = copy.deepcopy(render({}).get("Deployment", "target"))
    container(deployment)["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = copy.deepcopy(render({}).get("Deployment", "target"))
    deployment["spec"]["replicas"] = "1"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_pods_run_as_non_root_on_a_read_only_root(values):
    rendered = render(values)
    workloads = [d for d in rendered.docs if d["kind"] in ("Deployment", "StatefulSet")]
    assert workloads
    for w in workloads:
        where = w["metadata"]["name"]
        pod = pod_spec(w)
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        sc = container(w)["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, where
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc["capabilities"]["drop"] == ["ALL"], where
        assert container(w)["resources"]["requests"], where
        if w["kind"] == "Deployment":  # the specd services: writable cache and /tmp volumes
            mounts = {m["mountPath"] for m in container(w)["volumeMounts"]}
            assert {"/tmp", "/var/cache/specd"} <= mounts, where
            env = {e["name"]: e.get("value") for e in container(w)["env"]}
            assert env["SPECD_CACHE"] == "/var/cache/specd", where
            assert env["HOME"] == "/tmp", where


def test_a_component_can_override_one_security_key():
    """A component's key replaces the top-level one, also when it is false (mergeOverwrite would
    silently keep true)."""
    values = {
        "draftService": {
            "securityContext": {"readOnlyRootFilesystem": False},
            "podSecurityContext": {"runAsUser": 2000},
        }
    }
    rendered = render(values)
    draft = rendered.get("Deployment", "draft")
    assert container(draft)["securityContext"]["readOnlyRootFilesystem"] is False
    assert container(draft)["securityContext"]["capabilities"] == {"drop": ["ALL"]}  # the rest stays
    assert pod_spec(draft)["securityContext"]["runAsUser"] == 2000
    assert pod_spec(draft)["securityContext"]["runAsNonRoot"] is True
    target = rendered.get("Deployment", "target")
    assert container(target)["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod_spec(target)["securityContext"]["runAsUser"] == 10001


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_rendered_args_parse_with_the_specd_cli(values):
    """Every service's args are accepted by the real `specd` parser and bind 0.0.0.0."""
    rendered = render(values)
    deployments = [d for d in rendered.docs if d["kind"] == "Deployment"]
    assert deployments
    for d in deployments:
        component = d["metadata"]["labels"]["app.kubernetes.io/component"]
        c = container(d)
        ns = parse_with_cli(COMPONENT_COMMAND[component], [str(a) for a in c["args"]])
        assert ns.host == "0.0.0.0", component
        grpc_port = {p["name"]: p["containerPort"] for p in c["ports"]}["grpc"]
        assert ns.port == grpc_port, component


# --- defaults --------------------------------------------------------------------------------


def test_defaults_render_every_component():
    assert render({}).kinds() == sorted(
        [
            ("Deployment", name("target")),
            ("Service", name("target")),
            ("Deployment", name("draft")),
            ("Service", name("draft")),
            ("HorizontalPodAutoscaler", name("draft")),
            ("Deployment", name("orchestrator")),
            ("Service", name("orchestrator")),
            ("ServiceAccount", name("orchestrator")),
            ("Role", name("orchestrator")),
            ("RoleBinding", name("orchestrator")),
            ("StatefulSet", name("redis")),
            ("Service", name("redis")),
        ]
    )


def test_default_target_args():
    ns = parse_with_cli("target", args_of(render({}), "target"))
    assert (ns.target, ns.device, ns.dtype) == ("smollm2", None, None)
    assert (ns.max_sessions, ns.max_tree_nodes, ns.max_context, ns.port) == (64, 64, 2048, 50052)
    assert (ns.max_batch, ns.batch_window_ms, ns.prefill_chunk, ns.prefix_cache_mb) == (16, 10.0, 128, 64)
    assert ns.tls_cert is None and ns.tls_key is None and ns.tls_client_ca is None


def test_probes_are_native_grpc_health_on_the_grpc_port():
    rendered = render({})
    for component, port in (("target", 50052), ("draft", 50053), ("orchestrator", 50051)):
        c = container(rendered.get("Deployment", component))
        assert {"name": "grpc", "containerPort": port, "protocol": "TCP"} in c["ports"]
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            assert c[probe]["grpc"] == {"port": port}, (component, probe)  # service "" = the server
            assert "tcpSocket" not in c[probe]
    # the target gets 15 minutes to load its model before the kubelet restarts it
    startup = container(rendered.get("Deployment", "target"))["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == 900


def test_probes_can_be_switched_off():
    off = {"enabled": False, "initialDelaySeconds": 0, "periodSeconds": 10, "timeoutSeconds": 5, "failureThreshold": 3}
    c = container(render({"targetService": {"probes": {"liveness": off}}}).get("Deployment", "target"))
    assert "livenessProbe" not in c and "readinessProbe" in c and "startupProbe" in c


def test_metrics_port_and_annotations():
    rendered = render({})
    for component in ("target", "draft", "orchestrator"):
        d = rendered.get("Deployment", component)
        assert flag(args_of(rendered, component), "--metrics-port") == "9090"
        assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container(d)["ports"]
        ann = d["spec"]["template"]["metadata"]["annotations"]
        assert ann == {"prometheus.io/scrape": "true", "prometheus.io/port": "9090", "prometheus.io/path": "/metrics"}
        service = rendered.get("Service", component)
        assert {p["name"] for p in service["spec"]["ports"]} == {"grpc", "metrics"}


def test_draft_service_is_headless_and_discovered_by_port_name():
    rendered = render({})
    service = rendered.get("Service", "draft")
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is False  # only ready drafters get sessions
    grpc = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc == [{"name": "grpc", "port": 50053, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"}]
    pod_labels = rendered.get("Deployment", "draft")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    # the orchestrator watches exactly this Service's EndpointSlices, port by that name
    draft_address = flag(args_of(rendered, "orchestrator"), "--draft-address")
    assert draft_address == f"k8s:{NAMESPACE}/{service['metadata']['name']}:grpc"
    assert flag(args_of(rendered, "orchestrator"), "--target-address") == f"{name('target')}:50052"
    assert rendered.get("Service", "target")["spec"].get("clusterIP") is None  # a normal virtual IP


def test_orchestrator_may_only_read_endpointslices():
    rendered = render({})
    role = rendered.get("Role", "orchestrator")
    assert role["rules"] == [
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]}
    ]
    binding = rendered.get("RoleBinding", "orchestrator")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name("orchestrator")}
    account = rendered.get("ServiceAccount", "orchestrator")["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
    orchestrator = pod_spec(rendered.get("Deployment", "orchestrator"))
    assert orchestrator["serviceAccountName"] == account
    assert orchestrator["automountServiceAccountToken"] is True  # the in-cluster client needs it
    for component in ("target", "draft"):
        spec = pod_spec(rendered.get("Deployment", component))
        assert spec["automountServiceAccountToken"] is False, component
        assert "serviceAccountName" not in spec, component


def test_static_draft_address_needs_no_rbac():
    rendered = render({"orchestrator": {"draftAddress": "dns:drafters.other.svc:50053"}})
    assert rendered.find("Role", "orchestrator") is None
    assert rendered.find("RoleBinding", "orchestrator") is None
    assert flag(args_of(rendered, "orchestrator"), "--draft-address") == "dns:drafters.other.svc:50053"
    assert pod_spec(rendered.get("Deployment", "orchestrator"))["automountServiceAccountToken"] is False


def test_drafters_autoscale_between_bounds_on_cpu():
    rendered = render({})
    hpa = rendered.get("HorizontalPodAutoscaler", "draft")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name("draft")}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 4)
    assert hpa["spec"]["metrics"] == [
        {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}
    ]
    # the HPA owns the replica count; a fixed one in the Deployment would fight it on upgrade
    assert "replicas" not in rendered.get("Deployment", "draft")["spec"]
    assert container(rendered.get("Deployment", "draft"))["resources"]["requests"]["cpu"] == "1"


def test_drafters_autoscale_on_a_custom_metric():
    hpa = render(CUSTOM_METRIC).get("HorizontalPodAutoscaler", "draft")
    autoscaling = CUSTOM_METRIC["draftService"]["autoscaling"]
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    assert hpa["spec"]["metrics"] == autoscaling["metrics"]  # no CPU metric when its target is 0
    assert hpa["spec"]["behavior"] == autoscaling["behavior"]


def test_fixed_drafter_replicas_without_autoscaler():
    rendered = render(FIXED_DRAFTERS)
    assert rendered.find("HorizontalPodAutoscaler", "draft") is None
    assert rendered.get("Deployment", "draft")["spec"]["replicas"] == 3


def test_internal_redis_without_password_by_default():
    rendered = render({})
    args = args_of(rendered, "draft")
    assert flag(args, "--phrase-store") == f"redis://{name('redis')}:6379/0"
    assert flag(args, "--phrase-store-password-file") is None
    service = rendered.get("Service", "redis")
    assert service["spec"]["ports"][0]["port"] == 6379
    redis = rendered.get("StatefulSet", "redis")
    assert "env" not in container(redis)
    assert "--requirepass" not in container(redis)["command"][-1]
    assert rendered.get("StatefulSet", "redis")["spec"]["serviceName"] == service["metadata"]["name"]
    # the orchestrator does not use the phrase store
    assert flag(args_of(rendered, "orchestrator"), "--phrase-store") is None


# --- GPU -----------------------------------------------------------------------------------


def test_gpu_requests_and_model_flags():
    rendered = render(GPU)
    target = rendered.get("Deployment", "target")
    resources = container(target)["resources"]
    assert resources["limits"] == {"memory": "8Gi", "nvidia.com/gpu": 2}
    assert resources["requests"] == {"cpu": "2", "memory": "4Gi", "nvidia.com/gpu": 2}
    assert pod_spec(target)["tolerations"] == GPU["targetService"]["tolerations"]
    assert pod_spec(target)["nodeSelector"] == {"gpu": "h100"}
    ns = parse_with_cli("target", args_of(rendered, "target"))
    assert (ns.target, ns.device, ns.dtype, ns.max_sessions, ns.max_context) == (
        "/models/llama-70b",
        "cuda",
        "bfloat16",
        16,
        8192,
    )
    assert (ns.max_batch, ns.batch_window_ms, ns.prefill_chunk, ns.prefix_cache_mb) == (32, 2.5, 512, 4096)
    assert ns.argmax_screen == "off"
    assert parse_with_cli("target", args_of(render({}), "target")).argmax_screen == "on"  # the default
    draft = container(rendered.get("Deployment", "draft"))
    assert draft["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert flag(args_of(rendered, "draft"), "--draft-model") == "/models/llama-1b"
    orchestrator = container(rendered.get("Deployment", "orchestrator"))
    assert "nvidia.com/gpu" not in orchestrator["resources"]["limits"]
    # the orchestrator loads the target's tokenizer: same model spec
    assert flag(args_of(rendered, "orchestrator"), "--target") == "/models/llama-70b"
    for component in ("target", "draft", "orchestrator"):
        volumes = {v["name"]: v for v in pod_spec(rendered.get("Deployment", component))["volumes"]}
        assert volumes["model-cache"] == {"name": "model-cache", "persistentVolumeClaim": {"claimName": "specd-models"}}
    assert "nvidia.com/gpu" not in container(render({}).get("Deployment", "target"))["resources"]["limits"]


# --- Redis ---------------------------------------------------------------------------------


def test_external_redis_with_password_from_existing_secret():
    rendered = render(EXTERNAL_REDIS)
    assert rendered.find("StatefulSet", "redis") is None
    assert rendered.find("Service", "redis") is None
    draft = rendered.get("Deployment", "draft")
    args = args_of(rendered, "draft")
    assert flag(args, "--phrase-store") == "rediss://redis.cache.svc:6380/2"
    password_file = flag(args, "--phrase-store-password-file")
    assert password_file is not None
    assert file_source(draft, password_file) == ("redis-auth", "password")
    assert "redis-auth" not in str(container(draft).get("env"))  # a file, not an environment variable


def test_internal_redis_with_password_from_existing_secret():
    rendered = render(TLS_AND_KEYS)
    draft = rendered.get("Deployment", "draft")
    password_file = flag(args_of(rendered, "draft"), "--phrase-store-password-file")
    assert password_file is not None
    assert file_source(draft, password_file) == ("redis-auth", "redis-password")
    redis = container(rendered.get("StatefulSet", "redis"))
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in redis["env"]}
    assert refs["REDIS_PASSWORD"] == {"name": "redis-auth", "key": "redis-password"}
    assert '--requirepass "$REDIS_PASSWORD"' in redis["command"][-1]


def test_redis_persistence_uses_a_claim_template():
    sts = render({"phraseStore": {"internal": {"persistence": {"enabled": True, "size": "5Gi"}}}}).get(
        "StatefulSet", "redis"
    )
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert "volumes" not in pod_spec(sts)
    assert "--save '300 1'" in container(sts)["command"][-1]


def test_disabled_phrase_store_leaves_drafters_their_embedded_pool():
    rendered = render({"phraseStore": {"enabled": False}})
    assert rendered.find("StatefulSet", "redis") is None
    args = args_of(rendered, "draft")
    assert flag(args, "--phrase-store") is None and flag(args, "--phrase-store-password-file") is None


# --- TLS and API keys ----------------------------------------------------------------------


def test_mutual_tls_between_services():
    rendered = render(TLS_AND_KEYS)
    for component in ("target", "draft"):
        d = rendered.get("Deployment", component)
        ns = parse_with_cli(component, args_of(rendered, component))
        assert file_source(d, ns.tls_cert) == ("specd-mtls", "tls.crt"), component
        assert file_source(d, ns.tls_key) == ("specd-mtls", "tls.key"), component
        assert file_source(d, ns.tls_client_ca) == ("specd-mtls", "ca.crt"), component
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):  # kubelet gRPC probes are plaintext
            assert container(d)[probe]["tcpSocket"] == {"port": "grpc"}, (component, probe)
    orchestrator = rendered.get("Deployment", "orchestrator")
    ns = parse_with_cli("orchestrator", args_of(rendered, "orchestrator"))
    assert file_source(orchestrator, ns.peer_ca) == ("specd-mtls", "ca.crt")
    assert file_source(orchestrator, ns.peer_cert) == ("specd-mtls", "tls.crt")
    assert file_source(orchestrator, ns.peer_key) == ("specd-mtls", "tls.key")
    # the front door: its own certificate, no client certificates required
    assert file_source(orchestrator, ns.tls_cert) == ("specd-front-door", "tls.crt")
    assert file_source(orchestrator, ns.tls_key) == ("specd-front-door", "tls.key")
    assert ns.tls_client_ca is None


def test_api_keys_are_a_mounted_secret_file():
    rendered = render(TLS_AND_KEYS)
    orchestrator = rendered.get("Deployment", "orchestrator")
    key_file = flag(args_of(rendered, "orchestrator"), "--api-key-file")
    assert key_file is not None
    assert file_source(orchestrator, key_file) == ("specd-api-keys", "api-keys")
    assert flag(args_of(render({}), "orchestrator"), "--api-key-file") is None


def test_tls_off_by_default():
    rendered = render({})
    for component in ("target", "draft", "orchestrator"):
        args = args_of(rendered, component)
        assert not [a for a in args if a.startswith(("--tls-", "--peer-"))], component


# --- components disabled ---------------------------------------------------------------------


def test_placements_reach_the_orchestrator():
    args = args_of(render({"orchestrator": {"pldPlacement": "draft", "redrafterPlacement": "target"}}), "orchestrator")
    parsed = parse_with_cli("orchestrator", args)
    assert (parsed.pld_placement, parsed.redrafter_placement) == ("draft", "target")


def test_orchestrator_alone_against_an_external_target():
    rendered = render(DISABLED)
    assert rendered.kinds() == sorted(
        [
            ("Deployment", name("orchestrator")),
            ("Service", name("orchestrator")),
            ("ServiceAccount", name("orchestrator")),
        ]
    )
    args = args_of(rendered, "orchestrator")
    assert flag(args, "--target-address") == "big-gpu.models.svc:50052"
    assert flag(args, "--draft-address") == "none"
    assert flag(args, "--metrics-port") is None
    assert (flag(args, "--pld-placement"), flag(args, "--redrafter-placement")) == ("auto", "auto")
    d = rendered.get("Deployment", "orchestrator")
    assert [p["name"] for p in container(d)["ports"]] == ["grpc"]
    assert "annotations" not in d["spec"]["template"]["metadata"]
    assert pod_spec(d)["automountServiceAccountToken"] is False


# --- values refused ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"draftService": {"replicas": "3"}}, "/draftService/replicas"),
        ({"targetService": {"replicaz": 2}}, "replicaz"),
        ({"orchestratr": {}}, "orchestratr"),
        ({"targetService": {"image": {"pullPolicy": "Sometimes"}}}, "/targetService/image/pullPolicy"),
        ({"targetService": {"dtype": "fp8"}}, "/targetService/dtype"),
        ({"orchestrator": {"port": 70000}}, "/orchestrator/port"),
        ({"phraseStore": {"mode": "sentinel"}}, "/phraseStore/mode"),
        ({"draftService": {"autoscaling": {"maxReplicas": 0}}}, "/draftService/autoscaling/maxReplicas"),
        ({"orchestrator": {"draftAddress": "k8s:missing-port"}}, "/orchestrator/draftAddress"),
        ({"orchestrator": {"pldPlacement": "gpu"}}, "/orchestrator/pldPlacement"),
        ({"targetService": {"prefillChunk": -1}}, "/targetService/prefillChunk"),
    ],
    ids=[
        "string-replicas",
        "unknown-key",
        "unknown-top-level-key",
        "bad-pull-policy",
        "bad-dtype",
        "port-range",
        "bad-mode",
        "zero-max-replicas",
        "bad-draft-address",
        "bad-placement",
        "negative-prefill-chunk",
    ],
)
def test_schema_rejects_bad_values(values, message):
    run = template(values)
    assert run.returncode != 0, f"helm accepted {values}"
    assert "values don't meet the specifications of the schema" in run.stderr, run.stderr
    assert message in run.stderr, run.stderr


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tls": {"enabled": True}}, "tls.enabled needs tls.existingSecret"),
        ({"orchestrator": {"serverTls": {"enabled": True}}}, "orchestrator.serverTls.enabled needs"),
        ({"targetService": {"enabled": False}}, "set orchestrator.targetAddress"),
        ({"phraseStore": {"mode": "external"}}, "set phraseStore.external.url"),
        (
            {"phraseStore": {"mode": "external", "external": {"url": "redis://:hunter2@redis:6379/0"}}},
            "phraseStore.external.url carries a password",
        ),
        (
            {"draftService": {"autoscaling": {"minReplicas": 5, "maxReplicas": 2}}},
            "minReplicas (5) is greater than maxReplicas (2)",
        ),
        ({"draftService": {"autoscaling": {"targetCPUUtilizationPercentage": 0}}}, "has no metric"),
    ],
    ids=[
        "tls-without-secret",
        "front-door-tls-without-secret",
        "no-target",
        "external-without-url",
        "password-in-url",
        "min-above-max",
        "no-metric",
    ],
)
def test_templates_reject_inconsistent_values(values, message):
    run = template(values)
    assert run.returncode != 0, f"helm accepted {values}"
    assert message in run.stderr, run.stderr


def test_notes_tell_how_to_connect():
    run = run_helm(["install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--dry-run=client"], TLS_AND_KEYS)
    assert run.returncode == 0, run.stderr
    notes = run.stdout.split("NOTES:", 1)[1]
    assert f"port-forward svc/{name('orchestrator')} 50051:50051" in notes
    assert '--api-key "$SPECD_API_KEY"' in notes
    assert f"k8s:{NAMESPACE}/{name('draft')}:grpc" in notes
