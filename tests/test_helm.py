"""The Helm chart (deploy/helm/unique-cube) and the image recipe, checked offline.

helm-python-sdk renders and lints the chart with Helm's own engine (no helm binary, no cluster,
no network), with the example values files under the chart's ``ci/`` folder.
kubernetes-validate checks the core kinds against the Kubernetes OpenAPI schemas; the
DaskCluster and DaskWorkerGroup are checked against the CRDs shipped inside dask-kubernetes.
"""

from __future__ import annotations

import copy
import importlib.resources
import importlib.util
import itertools
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate import utils as kv_utils

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "deploy" / "helm" / "unique-cube"
RELEASE = "gpp"
NAMESPACE = "carbon"
PIPELINE_PATH = "/etc/unique-cube/pipeline.yaml"
VALUES_FILES = ("default", "operator-gpu", "local")
DASK_API = "kubernetes.dask.org/v1"
DASK_API_PATH = "/apis/kubernetes.dask.org/v1"
# The Prometheus Operator's CRDs are not shipped by any package here: the PodMonitor is checked
# by its invariants (test_pod_monitor_selects_the_runner_pods_on_their_metrics_port).
MONITORING_API = "monitoring.coreos.com/v1"
SECRET_LOOKING = re.compile(r"KEY|SECRET|TOKEN|PASSW|CREDENTIAL", re.IGNORECASE)


def ci_values(name: str) -> dict[str, Any]:
    """A values file under ci/, parsed the way `helm -f` parses it."""
    return helm.values_from_yaml((CHART / "ci" / f"{name}-values.yaml").read_text())


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


class Rendered:
    """The manifests of one `helm template`: documents by kind, plus NOTES.txt."""

    def __init__(self, manifests: dict[str, str]) -> None:
        self.notes = next((text for path, text in manifests.items() if path.endswith("NOTES.txt")))
        self.docs = [
            doc
            for path, text in manifests.items()
            if not path.endswith("NOTES.txt")
            for doc in yaml.safe_load_all(text)
            if doc
        ]

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [doc for doc in self.docs if doc["kind"] == kind]

    def one(self, kind: str, suffix: str = "") -> dict[str, Any]:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"].endswith(suffix)]
        assert len(found) == 1, f"expected one {kind} named *{suffix}, got {len(found)}"
        return found[0]

    def pod_specs(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """(where, pod spec) of every pod the release creates, directly or through the operator."""
        for doc in self.docs:
            name, spec = f"{doc['kind']}/{doc['metadata']['name']}", doc.get("spec", {})
            if doc["kind"] == "CronJob":
                yield name, spec["jobTemplate"]["spec"]["template"]["spec"]
            elif doc["kind"] == "Job":
                yield name, spec["template"]["spec"]
            elif doc["kind"] == "Pod":
                yield name, spec
            elif doc["kind"] == "DaskCluster":
                yield f"{name}/scheduler", spec["scheduler"]["spec"]
                yield f"{name}/worker", spec["worker"]["spec"]
            elif doc["kind"] == "DaskWorkerGroup":
                yield f"{name}/worker", spec["worker"]["spec"]

    def containers(self) -> Iterator[tuple[str, dict[str, Any]]]:
        for where, pod in self.pod_specs():
            for container in pod.get("initContainers", []) + pod["containers"]:
                yield f"{where}/{container['name']}", container

    def runner_pods(self) -> list[dict[str, Any]]:
        """Pod templates (metadata and spec) of the CronJob and the backfill Job."""
        templates = [c["spec"]["jobTemplate"]["spec"]["template"] for c in self.of_kind("CronJob")]
        return templates + [job["spec"]["template"] for job in self.of_kind("Job")]


def render(chart: helm.Chart, values: dict[str, Any]) -> Rendered:
    return Rendered(chart.render(values, name=RELEASE, namespace=NAMESPACE))


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


WRAPPER = ["python", "/opt/unique-cube/dask_workers.py"]


def run_args(container: dict[str, Any]) -> list[str]:
    """The runner's `unique-cube` command, with the scale-to-zero wrapper taken off."""
    args = container["args"]
    return args[args.index("--") + 1 :] if args[:2] == WRAPPER else args


def scaled_to(container: dict[str, Any]) -> dict[str, int]:
    """The wrapper's ``--scale RESOURCE/NAME=N`` options: the replicas during a run."""
    args = container["args"]
    targets = [args[i + 1] for i, arg in enumerate(args[: args.index("--")]) if arg == "--scale"]
    return {target: int(n) for target, n in (item.rsplit("=", 1) for item in targets)}


@pytest.fixture(scope="module")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART) as loaded:
        yield loaded


@pytest.fixture(scope="module")
def rendered(chart: helm.Chart) -> dict[str, Rendered]:
    """Each ci/ values file rendered once (rendering also validates values.schema.json)."""
    return {name: render(chart, ci_values(name)) for name in VALUES_FILES}


@pytest.fixture(scope="module")
def dask_crd_validators() -> dict[str, jsonschema.Draft7Validator]:
    """Validators from the DaskCluster/DaskWorkerGroup CRDs that dask-kubernetes ships.

    A field the schema does not know would be pruned silently by the API server, so objects
    that list their properties are closed here: an unknown field is an error.
    """
    crds = importlib.resources.files("dask_kubernetes").joinpath(
        "operator/deployment/helm/dask-kubernetes-operator/crds"
    )
    validators = {}
    for filename in ("daskcluster.yaml", "daskworkergroup.yaml"):
        crd = yaml.load(crds.joinpath(filename).read_text(), Loader=yaml.CSafeLoader)
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
        # The API server supplies these for every kind; CRD schemas leave them out.
        schema["properties"] |= {
            "apiVersion": {"type": "string", "const": f"{crd['spec']['group']}/v1"},
            "kind": {"type": "string", "const": crd["spec"]["names"]["kind"]},
            "metadata": {"type": "object"},
        }
        schema = close_objects(schema)
        validators[crd["spec"]["names"]["kind"]] = jsonschema.Draft7Validator(schema)
    return validators


def close_objects(schema: Any) -> Any:
    if isinstance(schema, list):
        return [close_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: close_objects(value) for key, value in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


# Lint and schema validation


@pytest.mark.parametrize("values_name", VALUES_FILES)
def test_chart_lints_strictly(values_name: str) -> None:
    report = helm.lint(CHART, ci_values(values_name), strict=True, kube_version="v1.27.0")
    assert report["total_charts_linted"] == 1
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


INVALID_VALUES = [
    pytest.param({"dask": {"mode": "kubernetes"}}, "at '/dask/mode'", id="mode"),
    pytest.param(
        {"dask": {"gpuWorkers": {"gpusPerWorker": 2}}},
        "'gpusPerWorker' not allowed",
        id="several-gpus-per-worker",
    ),
    pytest.param(
        {"dask": {"gpuWorkers": {"replicas": "2"}}},
        "at '/dask/gpuWorkers/replicas'",
        id="replicas-as-string",
    ),
    pytest.param({"dask": {"local": {"gpus": -1}}}, "at '/dask/local/gpus'", id="negative-gpus"),
    pytest.param(
        {"dask": {"cpuWorkers": {"resources": {"limits": {"nvidia.com/gpu": 1}}}}},
        "invalid propertyName 'nvidia.com/gpu'",
        id="gpu-in-resources",
    ),
    pytest.param(
        {"dask": {"config": {"temporary-directory": "/var/tmp"}}},
        "at '/dask/config/temporary-directory'",
        id="spill-off-scratch",
    ),
    pytest.param({"backfill": {"enabled": True}}, "at '/backfill/start'", id="backfill-no-dates"),
    pytest.param(
        {"backfill": {"enabled": True, "start": "2023-13-01", "end": "2023-12-31"}},
        "at '/backfill/start'",
        id="backfill-bad-date",
    ),
    pytest.param({"cronjob": {"schedule": "daily"}}, "at '/cronjob/schedule'", id="schedule"),
    pytest.param(
        {"cronjob": {"concurrencyPolicy": "Allow"}},
        "'concurrencyPolicy' not allowed",
        id="concurrency-not-a-value",
    ),
    pytest.param({"cronJob": {"enabled": False}}, "'cronJob' not allowed", id="typo"),
    pytest.param(
        {"secrets": {"planetaryComputer": {"value": "pc-0123456789"}}},
        "'value' not allowed",
        id="secret-value",
    ),
    pytest.param(
        {"extraEnv": [{"name": "AWS_SECRET_ACCESS_KEY", "value": "abc"}]},
        "at '/extraEnv/0'",
        id="secret-in-extraEnv",
    ),
    pytest.param(
        {"gdal": {"AWS_SECRET_ACCESS_KEY": "abc"}},
        "invalid propertyName 'AWS_SECRET_ACCESS_KEY'",
        id="secret-in-gdal",
    ),
    pytest.param(
        {"podSecurityContext": {"runAsUser": 0}},
        "at '/podSecurityContext/runAsUser'",
        id="root",
    ),
    pytest.param(
        {"persistence": {"mountPath": "/scratch"}},
        "at '/persistence/mountPath'",
        id="claim-over-scratch",
    ),
    pytest.param({"metrics": {"port": 8787}}, "at '/metrics/port'", id="metrics-on-dashboard"),
    pytest.param(
        {"metrics": {"pushgateway": "pushgateway:9091"}},
        "at '/metrics/pushgateway'",
        id="pushgateway-without-scheme",
    ),
    pytest.param(
        {"metrics": {"serviceMonitor": {"enabled": True}}},
        "'serviceMonitor' not allowed",
        id="service-monitor",
    ),
]


@pytest.mark.parametrize(("override", "where"), INVALID_VALUES)
def test_schema_rejects_invalid_values(chart: helm.Chart, override: dict, where: str) -> None:
    values = merged(ci_values("default"), override)
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def test_schema_accepts_secret_references_in_extra_env(chart: helm.Chart) -> None:
    reference = {"secretKeyRef": {"name": "s3", "key": "secret"}}
    values = merged(
        ci_values("default"),
        {"extraEnv": [{"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": reference}]},
    )
    chart.validate_schema(values)
    (runner,) = render(chart, values).runner_pods()
    env = env_of(runner["spec"]["containers"][0])
    assert env["AWS_SECRET_ACCESS_KEY"] == {"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": reference}


def test_missing_pipeline_and_reversed_backfill_fail_with_a_message(chart: helm.Chart) -> None:
    with pytest.raises(helm.HelmRenderError, match="pipeline is required"):
        chart.render({}, name=RELEASE, namespace=NAMESPACE)
    reversed_range = {"backfill": {"enabled": True, "start": "2023-06-01", "end": "2023-05-31"}}
    with pytest.raises(
        helm.HelmRenderError, match=re.escape("2023-05-31 is before backfill.start")
    ):
        chart.render(merged(ci_values("default"), reversed_range), name=RELEASE)


# Kubernetes and Dask schemas


@pytest.mark.parametrize("values_name", VALUES_FILES)
def test_core_kinds_validate_against_kubernetes_schemas(
    rendered: dict[str, Rendered], values_name: str
) -> None:
    oldest = re.search(
        r"(\d+\.\d+)", yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    )
    versions = [oldest.group(1), kv_utils.latest_version()]
    core = [
        d for d in rendered[values_name].docs if d["apiVersion"] not in (DASK_API, MONITORING_API)
    ]
    assert {"CronJob", "Job"} & {d["kind"] for d in core}
    assert {"ConfigMap", "Service", "ServiceAccount"} <= {d["kind"] for d in core}
    failures = []
    for doc in core:
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = "/".join(map(str, error.path))
                failures.append(f"{doc['kind']} (k8s {version}) {path}: {error.message}")
    assert failures == []


def test_dask_resources_validate_against_operator_crds(
    rendered: dict[str, Rendered], dask_crd_validators: dict[str, jsonschema.Draft7Validator]
) -> None:
    docs = [d for d in rendered["operator-gpu"].docs if d["apiVersion"] == DASK_API]
    assert sorted(d["kind"] for d in docs) == ["DaskCluster", "DaskWorkerGroup"]
    for doc in docs:
        errors = [
            f"{'/'.join(map(str, e.path))}: {e.message}"
            for e in dask_crd_validators[doc["kind"]].iter_errors(doc)
        ]
        assert errors == [], doc["kind"]
    # The validator is not vacuous: a misspelt field and an unquoted GPU count are caught.
    group = copy.deepcopy(rendered["operator-gpu"].one("DaskWorkerGroup"))
    group["spec"]["worker"]["replica"] = group["spec"]["worker"].pop("replicas")
    assert not dask_crd_validators["DaskWorkerGroup"].is_valid(group)
    group = copy.deepcopy(rendered["operator-gpu"].one("DaskWorkerGroup"))
    group["spec"]["worker"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = 2
    assert not dask_crd_validators["DaskWorkerGroup"].is_valid(group)


# Invariants


def worker_containers(release: Rendered) -> list[tuple[str, dict[str, Any]]]:
    return [
        (where, container)
        for where, container in release.containers()
        if container["args"][:2] == ["dask", "worker"]
    ]


def dask_option(args: list[str], option: str) -> str | None:
    return args[args.index(option) + 1] if option in args else None


def test_gpu_limits_agree_with_dask_worker_resources(rendered: dict[str, Rendered]) -> None:
    release, values = rendered["operator-gpu"], ci_values("operator-gpu")
    workers = worker_containers(release)
    assert len(workers) == 2  # the CPU group and the GPU group
    for where, container in workers:
        limit = container["resources"].get("limits", {}).get("nvidia.com/gpu")
        resources = dask_option(container["args"], "--resources")
        if "DaskWorkerGroup" in where:
            # One GPU per worker: the downscaler holds one actor per GPU worker.
            assert (limit, resources) == ("1", "GPU=1")
            assert dask_option(container["args"], "--nthreads") == "1"
            assert container["image"].endswith("-cuda")
        else:
            assert limit is None and resources is None
            assert container["image"].endswith("-cpu")
    group = release.one("DaskWorkerGroup")
    # At rest the group is empty; each run scales it to the replicas asked for.
    assert group["spec"]["worker"]["replicas"] == 0
    for pod in release.runner_pods():
        scaled = scaled_to(pod["spec"]["containers"][0])
        assert (
            scaled[f"daskworkergroups/{group['metadata']['name']}"]
            == (values["dask"]["gpuWorkers"]["replicas"])
        )
    gpu_pod = group["spec"]["worker"]["spec"]
    assert gpu_pod["nodeSelector"] == values["dask"]["gpuWorkers"]["nodeSelector"]
    assert gpu_pod["tolerations"] == values["dask"]["gpuWorkers"]["tolerations"]
    assert group["spec"]["cluster"] == release.one("DaskCluster")["metadata"]["name"]


def test_no_gpu_anywhere_unless_asked(rendered: dict[str, Rendered]) -> None:
    for where, container in rendered["default"].containers():
        assert "nvidia.com/gpu" not in container["resources"].get("limits", {}), where
    (runner,) = rendered["local"].runner_pods()
    assert runner["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert runner["spec"]["containers"][0]["image"].endswith("-cuda")


def test_operator_mode_runner_uses_the_operators_scheduler_service(
    rendered: dict[str, Rendered],
) -> None:
    release = rendered["operator-gpu"]
    cluster = release.one("DaskCluster")
    # The operator names the scheduler Service "<DaskCluster name>-scheduler".
    address = f"tcp://{cluster['metadata']['name']}-scheduler.{NAMESPACE}.svc:8786"
    runners = release.runner_pods()
    assert len(runners) == 2  # the daily CronJob and the backfill Job
    for pod in runners:
        env = env_of(pod["spec"]["containers"][0])
        assert env["DASK_SCHEDULER_ADDRESS"]["value"] == address
        assert pod["spec"]["automountServiceAccountToken"] is True
    service = cluster["spec"]["scheduler"]["service"]
    assert {"name": "tcp-comm", "protocol": "TCP", "port": 8786, "targetPort": "tcp-comm"} in (
        service["ports"]
    )
    # The Role lets the runner's ServiceAccount read and scale its own Dask resources only.
    role, binding = release.one("Role"), release.one("RoleBinding")
    assert {g for rule in role["rules"] for g in rule["apiGroups"]} == {"kubernetes.dask.org", ""}
    assert binding["subjects"][0]["name"] == runners[0]["spec"]["serviceAccountName"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_local_mode_has_no_dask_cluster_and_no_scheduler_address(
    rendered: dict[str, Rendered],
) -> None:
    for name in ("default", "local"):
        release = rendered[name]
        assert not release.of_kind("DaskCluster") and not release.of_kind("Role")
        for where, container in release.containers():
            env = env_of(container)
            assert "DASK_SCHEDULER_ADDRESS" not in env, where
            # the runner's LocalCluster must serve its dashboard beyond the pod's loopback
            assert env["UNIQUE_CUBE_DASHBOARD_ADDRESS"]["value"] == "0.0.0.0:8787", where
        for pod in release.runner_pods():
            assert pod["spec"]["automountServiceAccountToken"] is False


@pytest.mark.parametrize("values_name", VALUES_FILES)
def test_dashboard_service_reaches_the_pod_serving_8787(
    rendered: dict[str, Rendered], values_name: str
) -> None:
    release = rendered[values_name]
    service = release.one("Service", "-dashboard")
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        (8787, "http-dashboard")
    ]
    selector = service["spec"]["selector"]
    if values_name == "operator-gpu":
        cluster = release.one("DaskCluster")
        # Labels the operator puts on the scheduler pod.
        assert selector == {
            "dask.org/cluster-name": cluster["metadata"]["name"],
            "dask.org/component": "scheduler",
        }
        servers = [cluster["spec"]["scheduler"]["spec"]["containers"][0]]
        assert "--dashboard-address" in servers[0]["args"]
    else:
        pods = release.runner_pods()
        assert pods and all(selector.items() <= pod["metadata"]["labels"].items() for pod in pods)
        servers = [pod["spec"]["containers"][0] for pod in pods]
    for container in servers:
        assert {"name": "http-dashboard", "containerPort": 8787, "protocol": "TCP"} in container[
            "ports"
        ]
    name = service["metadata"]["name"]
    assert f"port-forward svc/{name} 8787:8787" in release.notes
    assert "http://localhost:8787/status" in release.notes


@pytest.mark.parametrize("values_name", ["default", "operator-gpu"])
def test_daily_cronjob_runs_the_previous_day_once_at_a_time(
    rendered: dict[str, Rendered], values_name: str
) -> None:
    cron = rendered[values_name].one("CronJob")
    defaults = helm.values_from_yaml((CHART / "values.yaml").read_text())["cronjob"]
    spec, job = cron["spec"], cron["spec"]["jobTemplate"]["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert (spec["schedule"], spec["timeZone"]) == (defaults["schedule"], defaults["timeZone"])
    assert spec["startingDeadlineSeconds"] == defaults["startingDeadlineSeconds"]
    for key in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        assert job[key] == defaults[key], key
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    container = pod["containers"][0]
    assert run_args(container) == [
        "unique-cube", "run", PIPELINE_PATH, "--date", "yesterday", "--finalise",
        "--update-since", str(defaults["updateSinceDays"]),
    ]  # fmt: skip


@pytest.mark.parametrize("values_name", ["operator-gpu", "local"])
def test_backfill_job_runs_the_range_from_values(
    rendered: dict[str, Rendered], values_name: str
) -> None:
    backfill = ci_values(values_name)["backfill"]
    job = rendered[values_name].one("Job")
    compact = f"{backfill['start']}-{backfill['end']}".replace("-", "")
    assert job["metadata"]["name"].endswith(f"-backfill-{compact[:8]}-{compact[8:]}")
    pod = job["spec"]["template"]["spec"]
    assert run_args(pod["containers"][0]) == [
        *("unique-cube", "run", PIPELINE_PATH),
        *("--start", backfill["start"], "--end", backfill["end"]),
    ]
    assert pod["restartPolicy"] == "Never"
    assert not rendered["default"].of_kind("Job")  # off unless asked


@pytest.mark.parametrize("values_name", VALUES_FILES)
def test_pipeline_configmap_is_the_pipeline_value_mounted_for_the_runner(
    rendered: dict[str, Rendered], values_name: str
) -> None:
    release = rendered[values_name]
    pipeline = ci_values(values_name)["pipeline"]
    expected = yaml.safe_load(pipeline) if isinstance(pipeline, str) else pipeline
    configmap = release.one("ConfigMap", "-pipeline")
    assert yaml.safe_load(configmap["data"]["pipeline.yaml"]) == expected
    for pod in release.runner_pods():
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        (mount,) = [
            m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["name"] == "pipeline"
        ]
        assert Path(mount["mountPath"], "pipeline.yaml") == Path(PIPELINE_PATH)
        assert volumes["pipeline"]["configMap"]["name"] == configmap["metadata"]["name"]


@pytest.mark.parametrize("values_name", VALUES_FILES)
def test_every_container_gets_gdal_and_dask_settings(
    rendered: dict[str, Rendered], values_name: str
) -> None:
    release = rendered[values_name]
    env_map = release.one("ConfigMap", "-env")
    for name in (
        "GDAL_HTTP_MAX_RETRY",
        "GDAL_HTTP_RETRY_DELAY",
        "GDAL_HTTP_TIMEOUT",
        "CPL_VSIL_CURL_ALLOWED_EXTENSIONS",
        "GDAL_DISABLE_READDIR_ON_OPEN",
    ):
        assert isinstance(env_map["data"][name], str) and env_map["data"][name], name
    dask_map = release.one("ConfigMap", "-dask")
    dask_config = yaml.safe_load(dask_map["data"]["dask.yaml"])
    assert dask_config["temporary-directory"] == "/scratch"
    assert dask_config["distributed"]["comm"]["timeouts"]["connect"]
    for where, container in release.containers():
        refs = [e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e]
        assert env_map["metadata"]["name"] in refs, where
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts["/etc/dask"] == "dask-config", where


@pytest.mark.parametrize("values_name", VALUES_FILES)
def test_pods_run_as_non_root_on_a_read_only_root_with_scratch(
    rendered: dict[str, Rendered], values_name: str
) -> None:
    pods = list(rendered[values_name].pod_specs())
    assert pods
    for where, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] > 0, where
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            for writable in ("/scratch", "/tmp"):
                assert "emptyDir" in volumes[mounts[writable]], (where, writable)


def test_secrets_are_referenced_never_rendered_and_only_where_used(
    rendered: dict[str, Rendered],
) -> None:
    values = ci_values("operator-gpu")["secrets"]
    release = rendered["operator-gpu"]
    assert not release.of_kind("Secret")
    containers = dict(release.containers())
    # The runners read inputs and write outputs, the workers run the reads and writes; the
    # scheduler only schedules and `helm test` only checks the pipeline file.
    users = [w for w in containers if "/scheduler/" not in w and not w.startswith("Pod/")]
    non_users = [w for w in containers if w not in users]
    assert len(users) == 4 and len(non_users) == 2, containers  # runner x2, two worker groups
    for where in users:
        container = containers[where]
        key = env_of(container)["PC_SDK_SUBSCRIPTION_KEY"]
        assert key == {
            "name": "PC_SDK_SUBSCRIPTION_KEY",
            "valueFrom": {
                "secretKeyRef": {
                    "name": values["planetaryComputer"]["secretName"],
                    "key": values["planetaryComputer"]["key"],
                }
            },
        }, where
        secret_refs = [e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e]
        assert secret_refs == [values["objectStore"]["secretName"]], where
    for where in non_users:
        container = containers[where]
        assert not [e for e in env_of(container).values() if "valueFrom" in e], where
        assert not [e for e in container["envFrom"] if "secretRef" in e], where
        assert env_of(container)["AWS_REGION"]["value"] == "ap-northeast-2"  # plain extraEnv
    for where, container in containers.items():
        for name, item in env_of(container).items():
            if SECRET_LOOKING.search(name):
                assert "value" not in item, (where, name)
    # Only the env ConfigMap carries plain variables, and none of them looks secret.
    for configmap in release.of_kind("ConfigMap"):
        assert not [k for k in configmap["data"] if SECRET_LOOKING.search(k)]


def test_secret_references_in_extra_env_skip_the_scheduler(chart: helm.Chart) -> None:
    reference = {"secretKeyRef": {"name": "s3", "key": "secret"}}
    values = merged(
        ci_values("operator-gpu"),
        {
            "extraEnv": [{"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": reference}],
            "extraEnvFrom": [{"secretRef": {"name": "more"}}, {"configMapRef": {"name": "m"}}],
        },
    )
    containers = dict(render(chart, values).containers())
    for where, container in containers.items():
        has_secret = "AWS_SECRET_ACCESS_KEY" in env_of(container)
        froms = [next(iter(e)) for e in container["envFrom"]]
        if "/scheduler/" in where or where.startswith("Pod/"):
            assert not has_secret and "secretRef" not in froms, where
        else:
            assert has_secret and froms.count("secretRef") == 2, where
        assert froms.count("configMapRef") == 2, where


# Metrics: the runner's endpoint, its annotations, the PodMonitor, the Pushgateway


def metrics_constants() -> dict[str, str]:
    """The environment variables unique_cube.product.metrics reads, by role."""
    from unique_cube.product import metrics

    return {"port": metrics.PORT_ENV, "push": metrics.PUSH_ENV, "job": metrics.JOB_ENV}


@pytest.mark.parametrize("values_name", VALUES_FILES)
def test_runner_pods_serve_metrics_where_their_annotations_say(
    rendered: dict[str, Rendered], values_name: str
) -> None:
    release, values = rendered[values_name], ci_values(values_name)
    enabled = values.get("metrics", {}).get("enabled", True)  # on by default
    names = metrics_constants()
    pods = release.runner_pods()
    assert pods
    for pod in pods:
        annotations = pod["metadata"].get("annotations", {})
        container = pod["spec"]["containers"][0]
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        env = env_of(container)
        if not enabled:
            assert not [a for a in annotations if a.startswith("prometheus.io/")]
            assert "http-metrics" not in ports and names["port"] not in env
            continue
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        port = int(annotations["prometheus.io/port"])
        assert ports["http-metrics"] == port
        assert env[names["port"]]["value"] == f"0.0.0.0:{port}"  # the pod's IP, not loopback
        assert f"/metrics on port {port} of each running job's pod" in release.notes
    # Only the runner serves them: not the Dask pods, not `helm test`.
    runners = {id(c) for pod in pods for c in pod["spec"]["containers"]}
    for where, container in release.containers():
        if id(container) not in runners:
            assert names["port"] not in env_of(container), where
            assert "http-metrics" not in {p["name"] for p in container.get("ports", [])}, where


def test_pod_annotations_of_values_win_over_the_metrics_ones(chart: helm.Chart) -> None:
    values = merged(
        ci_values("default"),
        {"runner": {"podAnnotations": {"prometheus.io/scrape": "false", "team": "carbon"}}},
    )
    (pod,) = render(chart, values).runner_pods()
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "false" and annotations["team"] == "carbon"
    assert annotations["prometheus.io/port"] == "9464"


def test_pod_monitor_selects_the_runner_pods_on_their_metrics_port(
    chart: helm.Chart, rendered: dict[str, Rendered]
) -> None:
    release, values = rendered["operator-gpu"], ci_values("operator-gpu")
    monitor = release.one("PodMonitor")
    assert monitor["apiVersion"] == MONITORING_API
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"  # its selector
    selector = monitor["spec"]["selector"]["matchLabels"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["interval"] == "30s"
    pods = release.runner_pods()
    assert len(pods) == 2  # daily and backfill
    for pod in pods:
        assert selector.items() <= pod["metadata"]["labels"].items()
        ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
        assert ports[endpoint["port"]] == values["metrics"]["port"]
        assert set(monitor["spec"]["podTargetLabels"]) <= set(pod["metadata"]["labels"])
    # Nothing else the release makes carries the runner's labels (the scheduler, the workers).
    others = [doc for doc in release.docs if doc["kind"] in ("DaskCluster", "DaskWorkerGroup")]
    for doc in others:
        for part in ("scheduler", "worker"):
            labels = doc["spec"].get(part, {}).get("metadata", {}).get("labels", {})
            assert not selector.items() <= labels.items()
    assert f"PodMonitor {monitor['metadata']['name']}" in release.notes
    assert not rendered["default"].of_kind("PodMonitor")  # off unless asked
    without_endpoint = merged(values, {"metrics": {"enabled": False}})
    assert not render(chart, without_endpoint).of_kind("PodMonitor")


def test_runs_push_to_the_pushgateway_as_their_own_job(rendered: dict[str, Rendered]) -> None:
    release, values = rendered["operator-gpu"], ci_values("operator-gpu")
    names = metrics_constants()
    jobs = {}
    for pod in release.runner_pods():
        env = env_of(pod["spec"]["containers"][0])
        assert env[names["push"]]["value"] == values["metrics"]["pushgateway"]
        jobs[pod["metadata"]["labels"]["unique-cube/run"]] = env[names["job"]]["value"]
    fullname = release.one("CronJob")["metadata"]["name"].removesuffix("-daily")
    assert jobs == {"daily": f"{fullname}-daily", "backfill": f"{fullname}-backfill"}
    for pod in rendered["default"].runner_pods():  # no Pushgateway unless named
        env = env_of(pod["spec"]["containers"][0])
        assert names["push"] not in env and names["job"] not in env


# Operator mode: a claim, workers at zero between runs, probes


def test_operator_mode_without_a_claim_fails_with_a_message(chart: helm.Chart) -> None:
    values = ci_values("operator-gpu")
    del values["persistence"]
    with pytest.raises(helm.HelmRenderError, match=r"needs persistence\.existingClaim"):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    values = merged(ci_values("operator-gpu"), {"rbac": {"create": False}})
    with pytest.raises(helm.HelmRenderError, match=r"dask\.scaleToZero needs rbac\.create"):
        chart.render(values, name=RELEASE, namespace=NAMESPACE)


def readme_helm_install() -> dict[str, Any]:
    """The `helm install` of the README's "Run on Kubernetes", its --set/--set-file values."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("helm install gpp deploy/helm/unique-cube")
    lines = []
    for line in readme[start:].splitlines():
        lines.append(line.rstrip("\\ "))
        if not line.endswith("\\"):
            break
    words = " ".join(lines).split()
    values: dict[str, Any] = {}
    for flag, item in itertools.pairwise(words):
        if flag not in ("--set", "--set-file"):
            continue
        key, value = item.split("=", 1)
        *parents, leaf = key.split(".")
        node = values
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = (REPO / value).read_text() if flag == "--set-file" else value
    return values


def test_readme_operator_example_renders_with_a_claim(chart: helm.Chart) -> None:
    values = readme_helm_install()
    assert values["dask"]["mode"] == "operator"
    assert values["persistence"]["existingClaim"]
    release = render(chart, values)
    assert release.one("DaskCluster") and release.one("CronJob")
    for pod in release.runner_pods():
        mounts = {m["name"]: m["mountPath"] for m in pod["spec"]["containers"][0]["volumeMounts"]}
        assert mounts["data"] == "/data"  # where korea-daily.yaml writes
        assert pod["spec"]["containers"][0]["workingDir"] == "/data"
    # The pipeline the README mounts writes under that claim.
    pipeline = yaml.safe_load(values["pipeline"])
    assert Path(pipeline["product"]["output"]).is_relative_to("/data")
    del values["persistence"]
    with pytest.raises(helm.HelmRenderError, match=r"needs persistence\.existingClaim"):
        render(chart, values)


def test_workers_are_at_zero_between_runs_and_scaled_by_each_run(
    chart: helm.Chart, rendered: dict[str, Rendered]
) -> None:
    release, values = rendered["operator-gpu"], ci_values("operator-gpu")
    cluster, group = release.one("DaskCluster"), release.one("DaskWorkerGroup")
    assert cluster["spec"]["worker"]["replicas"] == 0
    assert group["spec"]["worker"]["replicas"] == 0
    script = (CHART / "files" / "dask_workers.py").read_text()
    configmap = release.one("ConfigMap", "-dask-workers")
    assert configmap["data"]["dask_workers.py"].strip() == script.strip()
    runners = release.runner_pods()
    assert len(runners) == 2
    for pod in runners:
        container = pod["spec"]["containers"][0]
        assert container["args"][:2] == WRAPPER
        assert scaled_to(container) == {
            f"daskclusters/{cluster['metadata']['name']}": values["dask"]["cpuWorkers"]["replicas"],
            f"daskworkergroups/{group['metadata']['name']}": (
                values["dask"]["gpuWorkers"]["replicas"]
            ),
        }
        selector = container["args"][container["args"].index("--runners") + 1]
        labels = dict(item.split("=") for item in selector.split(","))
        assert labels.items() <= pod["metadata"]["labels"].items()  # it finds the other runs
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        script_volume = volumes[mounts["/opt/unique-cube"]]
        assert script_volume["configMap"]["name"] == configmap["metadata"]["name"]
    # The Role allows what the wrapper calls: the scale subresources and listing the pods.
    rules = release.one("Role")["rules"]
    assert any(
        {"daskclusters/scale", "daskworkergroups/scale"} <= set(r["resources"])
        and "patch" in r["verbs"]
        for r in rules
    )
    assert any("pods" in r["resources"] and "list" in r["verbs"] for r in rules)
    # Switched off: the groups keep their replicas all day and the runner runs bare.
    always_on = render(chart, merged(values, {"dask": {"scaleToZero": False}}))
    assert always_on.one("DaskWorkerGroup")["spec"]["worker"]["replicas"] == 2
    assert always_on.one("DaskCluster")["spec"]["worker"]["replicas"] == 4
    for pod in always_on.runner_pods():
        assert pod["spec"]["containers"][0]["args"][:2] == ["unique-cube", "run"]
    assert not [c for c in always_on.of_kind("ConfigMap") if "dask-workers" in str(c)]


def test_workers_have_health_probes(rendered: dict[str, Rendered]) -> None:
    workers = worker_containers(rendered["operator-gpu"])
    assert len(workers) == 2
    for where, container in workers:
        port = dask_option(container["args"], "--dashboard-address")
        (named,) = [p for p in container["ports"] if p["name"] == "http-dashboard"]
        assert str(named["containerPort"]) == port, where
        for probe in ("readinessProbe", "livenessProbe"):
            assert container[probe]["httpGet"] == {"port": "http-dashboard", "path": "/health"}
        assert container["livenessProbe"]["failureThreshold"] >= 3  # a busy worker is slow


# The scale-to-zero wrapper (files/dask_workers.py), against a fake API server


def load_dask_workers():
    spec = importlib.util.spec_from_file_location(
        "dask_workers", CHART / "files" / "dask_workers.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeApi:
    def __init__(self, pods: list[tuple[str, str]]) -> None:
        self.pods, self.calls = pods, []

    def __call__(self, method: str, path: str, body: dict | None) -> dict:
        self.calls.append((method, path, body))
        if method == "GET":
            return {"items": [{"metadata": {"name": n}, "status": {"phase": p}}
                              for n, p in self.pods]}  # fmt: skip
        return {}

    def replicas(self) -> list[tuple[str, int]]:
        return [(path.split("/")[-2], body["spec"]["replicas"])
                for method, path, body in self.calls if method == "PATCH"]  # fmt: skip


class FakeChild:
    def __init__(self, code: int) -> None:
        self.code = code

    def wait(self) -> int:
        return self.code

    def send_signal(self, signum: int) -> None:
        pass


ARGV = [
    *("--scale", "daskclusters/c=2", "--scale", "daskworkergroups/c-gpu=1"),
    *("--runners", "app.kubernetes.io/component=runner", "--wait", "5"),
    *("--", "unique-cube", "run", "p"),
]


@pytest.mark.parametrize("code", [0, 3])
def test_wrapper_scales_up_runs_and_scales_down(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    dask_workers = load_dask_workers()
    monkeypatch.setenv("POD_NAMESPACE", NAMESPACE)
    monkeypatch.setenv("HOSTNAME", "me")
    monkeypatch.setattr(dask_workers, "ACCOUNT", "/nonexistent")
    api, waited, started = FakeApi([("me", "Running"), ("old", "Succeeded")]), [], []
    result = dask_workers.main(
        ARGV,
        request=api,
        wait=lambda n, timeout: waited.append((n, timeout)),
        start=lambda command: started.append(command) or FakeChild(code),
    )
    assert result == code  # a failed run fails the Job, after the scale-down
    assert waited == [(3, 5.0)] and started == [["unique-cube", "run", "p"]]
    assert api.replicas() == [("c", 2), ("c-gpu", 1), ("c", 0), ("c-gpu", 0)]
    first_patch = next(path for method, path, _ in api.calls if method == "PATCH")
    assert first_patch == f"{DASK_API_PATH}/namespaces/{NAMESPACE}/daskclusters/c/scale"


def test_wrapper_leaves_the_workers_to_a_run_still_going(monkeypatch: pytest.MonkeyPatch) -> None:
    dask_workers = load_dask_workers()
    monkeypatch.setenv("POD_NAMESPACE", NAMESPACE)
    monkeypatch.setenv("HOSTNAME", "me")
    monkeypatch.setattr(dask_workers, "ACCOUNT", "/nonexistent")
    api = FakeApi([("me", "Running"), ("backfill-x", "Running")])

    def crash(command):
        raise OSError("no such command")

    with pytest.raises(OSError):
        dask_workers.main(ARGV, request=api, wait=lambda n, t: None, start=crash)
    assert api.replicas() == [("c", 2), ("c-gpu", 1)]  # the other run scales them down
    api = FakeApi([("me", "Running")])
    with pytest.raises(OSError):
        dask_workers.main(ARGV, request=api, wait=lambda n, t: None, start=crash)
    assert api.replicas()[-2:] == [("c", 0), ("c-gpu", 0)]


# The image recipe


def test_dockerfile_agrees_with_pyproject_makefile_and_chart() -> None:
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, re.MULTILINE))
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    required = re.fullmatch(r">=(\d+)\.(\d+)", pyproject["project"]["requires-python"])
    assert tuple(map(int, args["PYTHON_VERSION"].split("."))) >= tuple(map(int, required.groups()))
    makefile_torch = re.search(r"pip install \S* ?torch==(\S+)", (REPO / "Makefile").read_text())
    assert args["TORCH_VERSION"] == makefile_torch.group(1)
    assert args["TORCH_VARIANT"] == "cpu"
    torch_at = dockerfile.index('pip install "torch==${TORCH_VERSION}"')
    assert (
        "https://download.pytorch.org/whl/${TORCH_VARIANT}" in dockerfile[torch_at:].split("\n")[0]
    )
    assert torch_at < dockerfile.index("pip install /src")  # torch before the package
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.MULTILINE)
    assert int(user.group(1)) > 0
    chart_values = helm.values_from_yaml((CHART / "values.yaml").read_text())
    security = chart_values["podSecurityContext"]
    assert (security["runAsUser"], security["runAsGroup"]) == tuple(map(int, user.groups()))
    chart_meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart_meta["appVersion"] == pyproject["project"]["version"]
