"""infra/: every manifest parses, every field set is a field of its schema (the kubernetes client's
models for core objects, KubeRay's ray.io/v1 fields written down below), every entrypoint is a real
`pairmine` command whose options and config validate, and the image builds from the README's install."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import kubernetes.client as k8s
import pytest
import yaml
from helpers import PAIRMINE

from pairmine.pipelines.cli import build_parser
from pairmine.pipelines.config import load_config
from pairmine.pipelines.runtime import worker_pool_config

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((REPO / "infra" / "k8s").glob("*.yaml"))
IMAGE_ROOT = "/opt/pairmine/"  # where the Dockerfile puts the repository

# KubeRay's ray.io/v1 fields (ray-operator/apis/ray/v1/{raycluster,rayjob}_types.go, KubeRay 1.1-1.4) that
# a manifest here may set: a dict is an object with these keys, [x] a list of x, a str names a kubernetes
# model, a set the allowed values, a type a scalar.
STRINGS = ("dict[str, str]",)
RAY_CLUSTER_SPEC = {
    "rayVersion": str,
    "enableInTreeAutoscaling": bool,
    "autoscalerOptions": {"idleTimeoutSeconds": int, "upscalingMode": {"Conservative", "Default", "Aggressive"},
                          "resources": "V1ResourceRequirements", "image": str, "imagePullPolicy": str, "env": ["V1EnvVar"],
                          "envFrom": ["V1EnvFromSource"], "volumeMounts": ["V1VolumeMount"], "securityContext": "V1SecurityContext"},
    "headGroupSpec": {"serviceType": {"ClusterIP", "NodePort", "LoadBalancer"}, "enableIngress": bool, "rayStartParams": STRINGS,
                      "template": "V1PodTemplateSpec", "headService": "V1Service"},
    "workerGroupSpecs": [{"groupName": str, "replicas": int, "minReplicas": int, "maxReplicas": int, "numOfHosts": int,
                          "idleTimeoutSeconds": int, "suspend": bool, "rayStartParams": STRINGS, "template": "V1PodTemplateSpec",
                          "scaleStrategy": {"workersToDelete": [str]}}],
    "headServiceAnnotations": STRINGS,
    "suspend": bool,
}
RAY_JOB_SPEC = {
    "entrypoint": str, "rayClusterSpec": RAY_CLUSTER_SPEC, "clusterSelector": STRINGS, "submissionMode": {"K8sJobMode", "HTTPMode", "InteractiveMode"},
    "submitterPodTemplate": "V1PodTemplateSpec", "submitterConfig": {"backoffLimit": int}, "activeDeadlineSeconds": int, "backoffLimit": int,
    "shutdownAfterJobFinishes": bool, "ttlSecondsAfterFinished": int, "runtimeEnvYAML": str, "jobId": str, "metadata": STRINGS,
    "entrypointNumCpus": (int, float), "entrypointNumGpus": (int, float), "entrypointResources": str, "suspend": bool,
}
CUSTOM = {("ray.io/v1", "RayCluster"): RAY_CLUSTER_SPEC, ("ray.io/v1", "RayJob"): RAY_JOB_SPEC}
SCALARS = {"str": str, "int": int, "bool": bool, "float": (int, float), "object": object, "datetime": str, "date": str}


def check(value, schema, where: str) -> None:
    """Fail on any key or value that `schema` does not allow (see the note on RAY_CLUSTER_SPEC)."""
    if isinstance(schema, dict):
        assert isinstance(value, dict), f"{where}: an object expected"
        for key, item in value.items():
            assert key in schema, f"{where}.{key} is not a field"
            check(item, schema[key], f"{where}.{key}")
    elif isinstance(schema, list):
        assert isinstance(value, list), f"{where}: a list expected"
        for i, item in enumerate(value):
            check(item, schema[0], f"{where}[{i}]")
    elif isinstance(schema, set):
        assert value in schema, f"{where}: {value!r} is not one of {sorted(schema)}"
    elif isinstance(schema, tuple) and schema and isinstance(schema[0], str):
        check(value, schema[0], where)
    elif isinstance(schema, str):
        check_model(value, schema, where)
    else:
        assert isinstance(value, schema) and not (schema is int and isinstance(value, bool)), f"{where}: {value!r} is not {schema}"


def check_model(value, type_name: str, where: str) -> None:
    """Against the kubernetes client's model `type_name` (its openapi_types and attribute_map)."""
    if inner := re.fullmatch(r"list\[(.+)\]", type_name):
        assert isinstance(value, list), f"{where}: a list expected"
        for i, item in enumerate(value):
            check_model(item, inner.group(1), f"{where}[{i}]")
    elif inner := re.fullmatch(r"dict[(\[]str, (.+)[)\]]", type_name):
        assert isinstance(value, dict), f"{where}: a map expected"
        for key, item in value.items():
            check_model(item, inner.group(1), f"{where}.{key}")
    elif type_name in SCALARS:
        check(value, SCALARS[type_name], where)
    else:
        model = getattr(k8s, type_name)
        fields = {json_key: attr for attr, json_key in model.attribute_map.items()}
        assert isinstance(value, dict), f"{where}: a {type_name} object expected"
        for key, item in value.items():
            assert key in fields, f"{where}.{key} is not a field of {type_name}"
            check_model(item, model.openapi_types[fields[key]], f"{where}.{key}")


class _Response:
    def __init__(self, doc: dict):
        self.data = json.dumps(doc)


def documents() -> list[tuple[str, dict]]:
    return [(f"{path.name}#{i}", doc) for path in MANIFESTS for i, doc in enumerate(yaml.safe_load_all(path.read_text())) if doc]


@pytest.mark.parametrize("name,doc", documents(), ids=[n for n, _ in documents()])
def test_each_manifest_sets_only_fields_of_its_schema(name, doc):
    kind, api = doc["kind"], doc["apiVersion"]
    if (api, kind) in CUSTOM:
        assert set(doc) <= {"apiVersion", "kind", "metadata", "spec"}
        check_model(doc["metadata"], "V1ObjectMeta", f"{name}.metadata")
        check(doc["spec"], CUSTOM[api, kind], f"{name}.spec")
        return
    type_name = "V1" + kind
    check_model(doc, type_name, name)
    # and the client builds the object: required fields present, enums and formats accepted
    built = k8s.ApiClient().deserialize(_Response(doc), type_name)
    assert built.kind == kind and built.metadata.name


def pod_templates(spec, where="spec"):
    """Every (path, PodTemplateSpec dict) below a spec."""
    if isinstance(spec, dict):
        for key, value in spec.items():
            if key in ("template", "submitterPodTemplate") and isinstance(value, dict) and "spec" in value:
                yield f"{where}.{key}", value
            yield from pod_templates(value, f"{where}.{key}")
    elif isinstance(spec, list):
        for i, value in enumerate(spec):
            yield from pod_templates(value, f"{where}[{i}]")


def test_the_cluster_has_cpu_and_gpu_groups_sized_for_the_model_actors():
    cluster = next(doc for _, doc in documents() if doc["kind"] == "RayCluster")
    groups = {g["groupName"]: g for g in cluster["spec"]["workerGroupSpecs"]}
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # the head schedules, workers work
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == groups["gpu"]["rayStartParams"]["num-gpus"] == "1"
    gpu_config = load_config(_pipeline_model("video4removal"), str(REPO / "configs" / "video4removal_gpu.yaml"), [])
    masker = gpu_config.masker
    per_gpu = round(1 / masker.num_gpus)  # actors sharing one GPU
    assert per_gpu >= 1 and masker.concurrency[1] <= groups["gpu"]["maxReplicas"] * per_gpu
    assert masker.actor_cpus >= 1 and masker.actor_cpus * per_gpu <= float(gpu["limits"]["cpu"]) - 2, \
        "the GPU pod fits its actors' CPUs, with room for the CPU tasks that feed them"
    for _, doc in documents():  # every pairmine container gets the S3 settings from the Secret
        for where, template in pod_templates(doc.get("spec", {})):
            for container in template["spec"]["containers"]:
                if "pairmine" in container["image"]:
                    assert {"secretRef": {"name": "pairmine-s3"}} in container.get("envFrom", []) or "submitter" in container["name"], where


def test_worker_nodes_keep_their_idle_workers_as_the_embedded_ray_does():
    cluster = next(doc for _, doc in documents() if doc["kind"] == "RayCluster")
    for group in cluster["spec"]["workerGroupSpecs"]:
        container = group["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        expected = worker_pool_config(int(container["resources"]["limits"]["cpu"]))
        assert env == {f"RAY_{k}": str(v) for k, v in expected.items()}, group["groupName"]


def _pipeline_model(name: str):
    from pairmine.pipelines.syn4removal import SYN4REMOVAL
    from pairmine.pipelines.video4removal import VIDEO4REMOVAL

    return {p.name: p.config_model for p in (SYN4REMOVAL, VIDEO4REMOVAL)}[name]


def entrypoints() -> list[tuple[str, list[str]]]:
    """The pairmine command lines the manifests run (a RayJob's entrypoint, a container's command)."""
    found = []
    for name, doc in documents():
        spec = doc.get("spec", {})
        if "entrypoint" in spec:
            found.append((name, shlex.split(spec["entrypoint"])))
        for _, template in pod_templates(spec):
            for container in template["spec"]["containers"]:
                if "pairmine" in container.get("command", []) + container.get("args", []):
                    found.append((name, container.get("command", []) + container.get("args", [])))
    return found


@pytest.mark.parametrize("name,argv", entrypoints(), ids=[n for n, _ in entrypoints()])
def test_each_entrypoint_is_a_pairmine_command_with_valid_options_and_config(name, argv):
    argv = argv[argv.index("pairmine") + 1 :]
    args = build_parser().parse_args(argv)  # unknown options or commands exit here
    config_path = args.config.replace(IMAGE_ROOT, f"{REPO}/") if args.config else None
    assert config_path is None or Path(config_path).is_file(), f"{name}: no {args.config} in the image"
    config = load_config(_pipeline_model(args.command_name), config_path, args.set)
    assert config is not None
    assert all(p.startswith("s3://") for p in args.input + [args.output]), "cluster jobs read and write S3"
    shown = subprocess.run([PAIRMINE, args.command_name, "--help"], capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "--output" in shown.stdout


def test_the_cron_job_submits_to_the_clusters_job_server_and_never_overlaps():
    cron = next(doc for _, doc in documents() if doc["kind"] == "CronJob")
    cluster = next(doc for _, doc in documents() if doc["kind"] == "RayCluster")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    command = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:3] == ["ray", "job", "submit"]
    assert command[command.index("--address") + 1] == f"http://{cluster['metadata']['name']}-head-svc:8265"  # KubeRay's head service


def test_the_image_is_built_with_the_readmes_install_script():
    dockerfile = (REPO / "infra" / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for path in source.split():
            assert (REPO / path).exists(), f"the Dockerfile copies {path}, which is not in the repository"
    assert "infra/setup_venv.sh" in dockerfile and "infra/setup_venv.sh" in (REPO / "Makefile").read_text()
    extras = re.search(r"PAIRMINE_EXTRAS=(\S+)", dockerfile).group(1).split(",")
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras) <= set(declared) and "cluster" in extras and "dev" not in extras
    assert re.search(r"^ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu$", dockerfile, re.M)  # CPU by default, CUDA by build arg
    images = {c["image"] for _, doc in documents() for _, t in pod_templates(doc.get("spec", {})) for c in t["spec"]["containers"]}
    assert {i.rsplit("-", 1)[-1] for i in images} == {"cpu", "cuda"}
