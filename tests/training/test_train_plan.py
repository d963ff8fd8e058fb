"""Resource sizing, source selection, the learning-rate schedule and batch shaping for training, without Ray."""

import itertools

import pytest
import torch

from mtl_ray.cluster.resources import GPU_WORKER_CPUS, plan_resources
from mtl_ray.config import TrainConfig
from mtl_ray.errors import UserError
from mtl_ray.model.step import epoch_lr, whole_batches


def test_two_cpu_default_leaves_one_cpu_for_ray_data():
    plan = plan_resources(TrainConfig(), [{"CPU": 2.0}])
    assert plan.workers == 2
    assert plan.workers * plan.cpus_per_worker + plan.data_cpus <= 2.0
    assert plan.data_cpus >= 1.0
    assert plan.torch_threads == 1


def test_big_cpu_cluster_gives_whole_cpus():
    plan = plan_resources(TrainConfig(workers=4), [{"CPU": 32.0}])
    assert plan.cpus_per_worker == 1.0
    assert plan.data_cpus == 8.0


def test_too_many_workers_fail_fast_with_numbers():
    with pytest.raises(UserError, match=r"--workers 64: the Ray cluster has 2 CPUs"):
        plan_resources(TrainConfig(workers=64), [{"CPU": 2.0}])


def test_gpu_without_gpus_fails_fast():
    with pytest.raises(UserError, match=r"--gpu: 1 training worker\(s\) need 1 GPU\(s\) but the Ray cluster has 0"):
        plan_resources(TrainConfig(gpu=True), [{"CPU": 2.0}])


def test_gpu_workers_default_to_gpu_count_and_leave_the_other_cpus_to_ray_data():
    plan = plan_resources(TrainConfig(gpu=True), [{"CPU": 16.0, "GPU": 2.0}])
    assert plan.workers == 2 and plan.use_gpu
    assert plan.cpus_per_worker == GPU_WORKER_CPUS and plan.data_cpus == 16.0 - 2 * GPU_WORKER_CPUS
    one_of_eight = plan_resources(TrainConfig(gpu=True, workers=1), [{"CPU": 64.0, "GPU": 8.0}])
    assert one_of_eight.data_cpus == 8.0 - GPU_WORKER_CPUS  # a trial's share: the CPUs beside its GPU
    scarce = plan_resources(TrainConfig(gpu=True), [{"CPU": 2.0, "GPU": 1.0}])
    assert scarce.cpus_per_worker == 1.0 and scarce.data_cpus == 1.0


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


def _batch(rows: int, skipped: int = 0) -> dict:
    return {
        "image": torch.zeros(rows, 8, 8, 3, dtype=torch.uint8),
        "labels": torch.zeros(rows, 2),
        "skipped": torch.tensor(skipped),
    }


def test_a_last_batch_of_one_row_joins_the_batch_before_it():
    sizes = [len(b["image"]) for b in whole_batches([_batch(4), _batch(4), _batch(1)])]
    assert sizes == [4, 5]
    assert [len(b["image"]) for b in whole_batches([_batch(4), _batch(2)])] == [4, 2]
    # a batch thinned by skipped images is judged on rows read, the same on every DDP worker
    assert [len(b["image"]) for b in whole_batches([_batch(4), _batch(1, skipped=1)])] == [4, 1]
    joined = list(whole_batches([_batch(3, skipped=1), _batch(0, skipped=1)]))
    assert len(joined) == 1 and int(joined[0]["skipped"]) == 2


def test_a_step_with_non_finite_gradients_is_not_taken():
    from mtl_ray.model.backbones import build
    from mtl_ray.model.step import train_step
    from mtl_ray.model.weighting import get as get_weighting

    torch.manual_seed(0)
    model = build("xs", 2, channels_last=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    images = torch.randint(0, 255, (8, 32, 32, 3), dtype=torch.uint8)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]] * 4)
    before = [p.detach().clone() for p in model.parameters()]
    _, _, taken = train_step(model, optimizer, get_weighting("equal", 2), images, labels, torch.device("cpu"), "seed")
    assert taken and any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))

    with torch.no_grad():
        model.heads.bias[0] = float("nan")
    before = [p.detach().clone() for p in model.parameters()]
    loss, _, taken = train_step(
        model, optimizer, get_weighting("equal", 2), images, labels, torch.device("cpu"), "seed"
    )
    assert not taken and not torch.isfinite(loss)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True) if a.isfinite().all())
