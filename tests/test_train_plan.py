"""Resource sizing, source selection and the learning-rate schedule for training, without Ray."""

import itertools

import pytest

from mtl_ray.config import TrainConfig
from mtl_ray.errors import UserError
from mtl_ray.runtime import plan_resources
from mtl_ray.step import epoch_lr


def test_two_cpu_default_leaves_one_cpu_for_ray_data():
    plan = plan_resources(TrainConfig(), {"CPU": 2.0})
    assert plan.workers == 2
    assert plan.workers * plan.cpus_per_worker + plan.data_cpus <= 2.0
    assert plan.data_cpus >= 1.0
    assert plan.torch_threads == 1


def test_big_cpu_cluster_gives_whole_cpus():
    plan = plan_resources(TrainConfig(workers=4), {"CPU": 32.0})
    assert plan.cpus_per_worker == 1.0
    assert plan.data_cpus == 8.0


def test_too_many_workers_fail_fast_with_numbers():
    with pytest.raises(UserError, match=r"--workers 64: the Ray cluster has 2 CPUs"):
        plan_resources(TrainConfig(workers=64), {"CPU": 2.0})


def test_gpu_without_gpus_fails_fast():
    with pytest.raises(UserError, match=r"--gpu: 1 training worker\(s\) need 1 GPU\(s\) but the Ray cluster has 0"):
        plan_resources(TrainConfig(gpu=True), {"CPU": 2.0})


def test_gpu_workers_default_to_gpu_count_and_keep_data_cpus():
    plan = plan_resources(TrainConfig(gpu=True), {"CPU": 16.0, "GPU": 2.0})
    assert plan.workers == 2 and plan.use_gpu
    assert plan.workers * plan.cpus_per_worker + plan.data_cpus <= 16.0
    assert plan.data_cpus >= 4.0


def test_cosine_schedule_starts_at_lr_and_decays_toward_zero():
    cfg = TrainConfig(lr=0.01, epochs=10)
    rates = [epoch_lr(cfg, e) for e in range(cfg.epochs)]
    assert rates[0] == pytest.approx(0.01)
    assert all(a > b for a, b in itertools.pairwise(rates))
    assert rates[-1] < 0.01 * 0.03
    assert rates[5] == pytest.approx(0.005)


def test_constant_schedule_keeps_lr_where_cosine_decays():
    constant = TrainConfig(lr=0.01, epochs=4, lr_schedule="constant")
    cosine = TrainConfig(lr=0.01, epochs=4)
    assert cosine.lr_schedule == "cosine"  # the default
    assert [epoch_lr(constant, e) for e in range(4)] == [0.01] * 4
    assert [epoch_lr(cosine, e) for e in range(4)] == pytest.approx(
        [0.01, 0.01 * (1 + 2**-0.5) / 2, 0.005, 0.01 * (1 - 2**-0.5) / 2]
    )
