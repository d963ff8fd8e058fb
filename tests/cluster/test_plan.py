"""Sizing workers per node, elastic plans, what a cluster that lost a node still holds, the wait for
resources, and the lines a restarted run prints: the cluster logic that needs no Ray."""

import pytest

from mtl_ray import progress
from mtl_ray.cluster.capacity import JOINED_WAIT_S, wait_s
from mtl_ray.cluster.resources import holds, plan_resources, plan_workers
from mtl_ray.config import TrainConfig, load
from mtl_ray.errors import UserError
from mtl_ray.registry.tracking import RAY_JOB_ENV, tracking_uri
from mtl_ray.training.trial import concurrent_trials

GIB = 2.0**30


def node(cpus: float, gpus: float = 0, memory: float = 8 * GIB) -> dict[str, float]:
    return {"CPU": cpus, "GPU": gpus, "memory": memory, "object_store_memory": GIB}


def test_thin_nodes_are_refused_at_once_naming_the_smallest_node():
    """--workers 8 on four 1-CPU nodes once left 0.25 CPU per node and no read task could run anywhere."""
    with pytest.raises(UserError, match=r"--workers 8: the Ray cluster's 4 nodes have 1 CPUs each at the least"):
        plan_workers([node(1)] * 4, gpu=False, workers=8)


def test_workers_spread_one_per_node_each_keeping_a_read_tasks_cpu():
    plan = plan_workers([node(2)] * 3, gpu=False, workers=2)
    assert plan.spread and plan.cpus_per_worker == 1.0 and plan.data_cpus == 2.0
    one_node = plan_workers([node(2)], gpu=False, workers=2)
    assert not one_node.spread and one_node.cpus_per_worker == 0.5


def test_elastic_plan_is_sized_for_the_most_that_fit_now_and_caps_each_node_by_memory():
    plan = plan_resources(TrainConfig(workers="1-3"), [node(2)] * 3)
    assert plan.num_workers == (1, 3) and plan.cpus_per_worker == 1.0
    # by CPU a 2-CPU node would take two 1-CPU workers after a loss; by memory it takes one
    assert int(8 * GIB // plan.memory_per_worker) == 1
    assert plan.resources_per_worker == {"CPU": 1.0, "memory": plan.memory_per_worker}
    small = plan_resources(TrainConfig(workers="1-8"), [node(2)])
    assert small.num_workers == (1, 8) and small.cpus_per_worker == 0.25  # 4 fit now, beside Ray Data's CPU
    fixed = plan_resources(TrainConfig(workers=3), [node(2)] * 3)
    assert fixed.num_workers == 3 and fixed.resources_per_worker == {"CPU": 1.0}


def test_after_a_lost_node_an_elastic_run_fits_and_a_fixed_one_waits():
    elastic = plan_resources(TrainConfig(workers="1-3"), [node(2)] * 3)
    fixed = plan_resources(TrainConfig(workers=3), [node(2)] * 3)
    assert holds(elastic, [node(2)] * 3) and holds(fixed, [node(2)] * 3)
    assert holds(elastic, [node(2)])  # one worker beside Ray Data's CPU on the node left
    assert not holds(fixed, [node(2)] * 2)
    gpu = plan_resources(TrainConfig(gpu=True, workers=2), [node(8, 1)] * 2)
    assert not holds(gpu, [node(8, 1)]) and holds(gpu, [node(8, 1), node(8, 1)])


def test_workers_flag_takes_n_or_min_max_and_names_the_key(tmp_path):
    assert TrainConfig(workers="2-4").workers == (2, 4)
    assert TrainConfig(workers="3-3").workers == 3
    assert TrainConfig(workers=[1, 2]).workers == (1, 2)
    for bad in ("4-2", "0-2", "a-b", 0, True):
        with pytest.raises(ValueError, match="workers"):
            TrainConfig(workers=bad)
    f = tmp_path / "train.yaml"
    f.write_text("workers: 3-1\n")
    with pytest.raises(UserError, match=r"workers.*MIN-MAX"):
        load(TrainConfig, str(f))


def test_the_wait_for_resources_defaults_to_zero_here_and_ten_minutes_on_a_joined_cluster(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert wait_s(None) == 0
    assert wait_s(30) == 30
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert wait_s(None) == JOINED_WAIT_S
    assert wait_s(0) == 0


def test_concurrent_trials_count_every_node():
    plan = plan_workers([node(2 - 0.01)] * 3, gpu=False, workers=1)  # as tune plans: each node less a trial driver
    assert concurrent_trials(plan, [node(2)] * 3) == 3
    assert concurrent_trials(plan, [node(2)] * 6) == 6


def test_a_restarted_group_says_from_which_checkpoint_and_the_summary_counts_this_commands_epochs(capsys):
    watch = progress.RunProgress("r", 4)
    watch({"started": {"epoch": 0, "step": 0, "workers": 3}})
    watch({"epoch": 1, "train_loss": 1.0, "mean_auroc": 0.6, "train_images_per_s": 100.0})
    watch({"started": {"epoch": 1, "step": 0, "workers": 2}})
    watch({"epoch": 2, "train_loss": 0.9, "mean_auroc": 0.7, "train_images_per_s": 100.0})
    lines = capsys.readouterr().err.splitlines()
    assert "r: worker group restarted from the checkpoint after epoch 1, 2 workers" in lines
    assert watch.restarts == 1 and watch.first_epoch == 1
    resumed = progress.RunProgress("r", 4)
    resumed({"started": {"epoch": 2, "step": 30, "workers": 1}})
    resumed({"epoch": 3, "train_loss": 0.8, "mean_auroc": 0.7, "train_images_per_s": 100.0})
    assert "r: resumed from the checkpoint after epoch 2, step 30, 1 worker" in capsys.readouterr().err
    assert resumed.restarts == 0 and resumed.first_epoch == 3


def test_a_ray_job_without_a_tracking_uri_is_refused_not_registered_into_its_temporary_copy(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv(RAY_JOB_ENV, "{}")
    with pytest.raises(UserError, match=r"no MLFLOW_TRACKING_URI.*temporary working directory on the head node"):
        tracking_uri()
    with pytest.raises(UserError, match=r"tracking.uri sqlite:///runs.db"):
        tracking_uri("sqlite:///runs.db")
    assert tracking_uri("sqlite:////shared/mlruns.db") == "sqlite:////shared/mlruns.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri() == "http://127.0.0.1:5000"


def test_a_fixed_run_that_lost_a_node_says_what_it_waits_for_and_gives_up_after_the_wait(monkeypatch, capsys):
    from mtl_ray.cluster import capacity

    plan = plan_resources(TrainConfig(workers=3), [node(2)] * 3)
    alive = [node(2)] * 2
    monkeypatch.setattr(capacity, "alive_nodes", lambda: list(alive))
    watch = capacity.NodeWatch("run", plan, wait=120)
    assert watch() is None
    said = capsys.readouterr().err
    assert "run: waiting for a node: 3 worker(s) of 1 CPU each do not fit on the 2 node(s) alive" in said
    assert "up to 120 s (--resource-wait)" in said
    alive.append(node(2))
    assert watch() is None and "the cluster can hold the workers again (3 nodes)" in capsys.readouterr().err
    alive.pop()
    assert "waited 0 s (--resource-wait) for a node to join" in capacity.NodeWatch("run", plan, wait=0)()
