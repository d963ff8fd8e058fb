"""Cluster manifests and job configs: checked against Ray's own cluster schema and structurally."""

import os

import pytest
import ray
import yaml
from conftest import REPO

from mtl_ray.config import TuneConfig, load, load_train
from mtl_ray.data.synth.parts import SEED_TASKS
from mtl_ray.model.checks import check_model_config
from mtl_ray.model.weighting import get as get_weighting
from mtl_ray.training.search import check_search

ROOT = REPO


def _yaml(path: str) -> dict:
    with open(os.path.join(ROOT, path)) as f:
        return yaml.safe_load(f)


def test_aws_cluster_passes_rays_schema_and_has_the_node_types():
    from ray.autoscaler._private.util import prepare_config, validate_config

    cluster = _yaml("infra/aws/cluster.yaml")
    validate_config(prepare_config(cluster))  # what `ray up` does before it launches anything
    assert cluster["docker"]["image"] == f"rayproject/ray:{ray.__version__}-gpu"
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert "InstanceMarketOptions" not in head["node_config"], "the head must be on-demand"
    gpu = types["gpu_worker"]
    assert gpu["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    assert gpu["min_workers"] == 0 < gpu["max_workers"] <= cluster["max_workers"]
    assert gpu["node_config"]["InstanceType"].startswith(("g", "p"))
    assert types["cpu_worker"]["min_workers"] == 0
    for node in types.values():
        assert node["node_config"]["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] >= 100
    assert any("mtl-ray" in c for c in cluster["setup_commands"])
    assert all(
        "RAY_AUTH_MODE=token" in c
        for c in cluster["head_start_ray_commands"] + cluster["worker_start_ray_commands"]
        if "ray start" in c
    )


def test_kuberay_rayjob_autoscales_a_gpu_group_from_zero():
    job = _yaml("infra/k8s/rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    script, flag, config = spec["entrypoint"].split()[1:4]
    assert (
        os.path.isfile(os.path.join(ROOT, script)) and flag == "--config" and os.path.isfile(os.path.join(ROOT, config))
    )
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "working_dir" in runtime_env and "env_vars" in runtime_env
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == ray.__version__
    groups = cluster["workerGroupSpecs"]
    gpu_limits = [
        c["resources"]["limits"].get("nvidia.com/gpu") for g in groups for c in g["template"]["spec"]["containers"]
    ]
    assert any(gpu_limits), "no worker group asks for a GPU"
    for g in groups:
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    # KubeRay's autoscaler starts the GPU group empty and grows it as the job asks for GPUs
    assert cluster["enableInTreeAutoscaling"] is True and cluster["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    gpu = next(g for g, limit in zip(groups, gpu_limits, strict=True) if limit)
    assert gpu["minReplicas"] == gpu["replicas"] == 0 < gpu["maxReplicas"]
    images = [c["image"] for c in cluster["headGroupSpec"]["template"]["spec"]["containers"]]
    images += [c["image"] for g in groups for c in g["template"]["spec"]["containers"]]
    assert set(images) == {f"rayproject/ray:{ray.__version__}-gpu"}


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "jobs", "configs"))))
def test_job_configs_load_and_their_training_settings_check(name):
    path = os.path.join(ROOT, "jobs", "configs", name)
    cfg = load(TuneConfig, path)
    assert load_train(path) == cfg.train  # what `train`/`compare --config F` would use
    if cfg.search:
        forms = check_search(cfg, list(SEED_TASKS), name)
        assert set(forms) == set(cfg.search) and all(values for _, values in forms.values())
    else:  # a train or compare job: its one training config must fit the four driving tasks
        check_model_config(cfg.train, list(SEED_TASKS))
        weighting = get_weighting(cfg.train.weighting.name, 4, **cfg.train.weighting.params())
        assert len(weighting.weights()) == 4


def test_smoke_config_is_two_trials_of_one_epoch():
    cfg = load(TuneConfig, os.path.join(ROOT, "jobs", "configs", "smoke.yaml"))
    assert cfg.train.epochs == 1
    assert [len(v) for v in cfg.search.values()] == [2]
    assert cfg.num_samples == 1


def test_kuberay_rayservice_runs_the_serve_application_on_gpu_workers_with_the_fast_path():
    """Its serveConfigV2 passes Ray Serve's own schema, its args are a valid ServeConfig that builds
    the application, and every node sets Serve's HAProxy ingress (as `ensure_ray` does locally)."""
    from ray.serve.schema import ServeDeploySchema

    from mtl_ray.cluster.runtime import SERVE_FAST_PATH
    from mtl_ray.serving.serve import app_builder

    service = _yaml("infra/k8s/rayservice.yaml")
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    serve_config = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    (app,) = serve_config.applications
    assert app.import_path == "mtl_ray.serving.serve:app_builder" and app.route_prefix == "/"
    assert app_builder(app.args) is not None and app.args["gpu"] is True
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["rayVersion"] == ray.__version__ and cluster["enableInTreeAutoscaling"] is True
    nodes = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    for node in nodes:
        for container in node["template"]["spec"]["containers"]:
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            assert {k: env.get(k) for k in ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED")} == {
                k: SERVE_FAST_PATH[k] for k in ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_THROUGHPUT_OPTIMIZED")
            }
    gpu = cluster["workerGroupSpecs"][0]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
