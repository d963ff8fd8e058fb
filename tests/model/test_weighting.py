"""Task weighting methods on toy two-task problems, plus task_terms and the `get` errors."""

import math

import pytest
import torch
from torch import nn

from mtl_ray.errors import UserError
from mtl_ray.model import weighting
from mtl_ray.model.backbones import MultiTaskNet, build
from mtl_ray.model.losses import REDUCTIONS, BatchLosses, batch_losses, known_tasks, masked_bce, task_terms
from mtl_ray.model.weighting import project_conflicting

NAN = float("nan")
CONFIGS = {
    "equal": {},
    "static": {"weights": [0.5, 2.0]},
    "uncertainty": {},
    "gradnorm": {"alpha": 1.5},
    "dwa": {"temperature": 2.0},
    "pcgrad": {},
    "famo": {},
    "imtl": {},
    "cagrad": {"c": 0.4},
    "aligned": {},
    "mgda_ub": {},
}


def tiny_net(num_tasks: int = 2, dim: int = 8, hidden: int = 16) -> MultiTaskNet:
    trunk = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
    return MultiTaskNet(trunk, hidden, num_tasks)


def toy_batch(
    generator: torch.Generator, m: int = 64, dim: int = 8, noise: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two tasks from one direction of x: task 0 clean; task 1 the same rule with a fraction
    `noise` of its labels replaced by coin flips."""
    x = torch.randn(m, dim, generator=generator)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).float()
    noisy = torch.where(
        torch.rand(m, generator=generator) < noise, torch.randint(0, 2, (m,), generator=generator).float(), y
    )
    return x, torch.stack([y, noisy], dim=1)


def step(method: weighting.Weighting, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.keep_features = method.uses_features
    model.zero_grad(set_to_none=True)
    method.zero_grad(set_to_none=True)
    logits = model(x)
    return method.backward(task_terms(logits, y, "seed"), known_tasks(y), model, batch_losses(logits, y))


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]


# ---- task_terms ------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_task_terms_sum_to_masked_bce(reduction):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 3, generator=g)
    targets = torch.randint(0, 2, (6, 3), generator=g).float()
    targets[torch.rand(6, 3, generator=g) < 0.4] = NAN
    targets[:, 2] = NAN
    w = torch.tensor([0.3, 2.0, 5.0])
    terms = task_terms(logits, targets, reduction)
    assert terms.shape == (3,) and terms[2] == 0
    assert (w * terms).sum().item() == pytest.approx(masked_bce(logits, targets, w, reduction).item(), rel=1e-6)


def test_task_terms_bad_reduction():
    with pytest.raises(UserError, match="seed, labeled, per_task"):
        task_terms(torch.zeros(2, 2), torch.zeros(2, 2), "mean")


# ---- get -------------------------------------------------------------------------------------


def test_available_and_get_every_method():
    assert weighting.available() == list(CONFIGS)
    for name, params in CONFIGS.items():
        method = weighting.get(name, num_tasks=2, **params)
        assert isinstance(method, weighting.Weighting) and method.name == name
        assert method.weights() == pytest.approx(
            {"static": [0.5, 2.0], "uncertainty": [0.5, 0.5]}.get(name, [1.0, 1.0])
        )
    assert [n for n in CONFIGS if weighting.METHODS[n].manipulates_gradients] == [
        "gradnorm",
        "pcgrad",
        "imtl",
        "cagrad",
        "aligned",
        "mgda_ub",
    ]


def test_get_from_config_dict():
    method = weighting.get(name="gradnorm", alpha=0.5, lr=0.1, num_tasks=3)
    assert (method.alpha, method.lr, method.weights()) == (0.5, 0.1, [1.0, 1.0, 1.0])


@pytest.mark.parametrize(
    "name, params, message",
    [
        (
            "softmax",
            {},
            "unknown weighting 'softmax': available are equal, static, uncertainty, gradnorm, dwa, pcgrad, famo, "
            "imtl, cagrad, aligned, mgda_ub",
        ),
        ("famo", {"lr": 0}, "weighting 'famo': parameter 'lr' must be a number > 0, got 0"),
        ("cagrad", {"c": -1}, "weighting 'cagrad': parameter 'c' must be a number >= 0, got -1"),
        (
            "mgda_ub",
            {"normalization": "max"},
            "weighting 'mgda_ub': parameter 'normalization' must be one of none, l2, loss, loss+, got 'max'",
        ),
        ("dwa", {"alpha": 1.5}, "weighting 'dwa': unknown parameter 'alpha'; valid: temperature"),
        ("gradnorm", {"temp": 1}, "weighting 'gradnorm': unknown parameter 'temp'; valid: alpha, lr, initial_batches"),
        ("equal", {"weights": [1, 1]}, "weighting 'equal': unknown parameter 'weights'; valid: none"),
        ("static", {"weights": [1.0, 2.0, 3.0]}, "weighting 'static': expected 2 weights (one per task), got 3"),
        ("static", {}, "weighting 'static': parameter 'weights' is required: a list of 2 numbers >= 0, one per task"),
        (
            "static",
            {"weights": 1.0},
            "weighting 'static': parameter 'weights' must be a list of 2 numbers >= 0, got 1.0",
        ),
        ("static", {"weights": [1.0, -1.0]}, "weighting 'static': parameter 'weights' must be a number >= 0, got -1.0"),
        ("gradnorm", {"alpha": "high"}, "weighting 'gradnorm': parameter 'alpha' must be a number >= 0, got 'high'"),
        ("gradnorm", {"lr": 0}, "weighting 'gradnorm': parameter 'lr' must be a number > 0, got 0"),
        ("dwa", {"temperature": True}, "weighting 'dwa': parameter 'temperature' must be a number > 0, got True"),
        ("pcgrad", {"seed": 1.5}, "weighting 'pcgrad': parameter 'seed' must be an integer, got 1.5"),
        (
            "gradnorm",
            {"initial_batches": 0},
            "weighting 'gradnorm': parameter 'initial_batches' must be an integer >= 1, got 0",
        ),
    ],
)
def test_get_errors_are_one_line(name, params, message):
    with pytest.raises(UserError) as err:
        weighting.get(name, num_tasks=2, **params)
    assert str(err.value) == message


# ---- masked tasks ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_all_unknown_task_contributes_nothing(name):
    """Task 1 has no known label: finite gradients, none on its head, the shared gradient does
    not depend on its head (so it carries nothing from task 1), and finite weights."""
    x, y = toy_batch(torch.Generator().manual_seed(1))
    y[:, 1] = NAN
    runs = []
    for head_scale in (1.0, 5.0):
        torch.manual_seed(0)
        model = tiny_net()
        with torch.no_grad():
            model.heads.weight[1] *= head_scale
        method = weighting.get(name, num_tasks=2, **CONFIGS[name])
        total = step(method, model, x, y)
        assert torch.isfinite(total)
        assert all(torch.isfinite(g).all() for g in grads(model))
        assert torch.all(model.heads.weight.grad[1] == 0) and model.heads.bias.grad[1] == 0
        assert all(math.isfinite(w) for w in method.weights())
        runs.append((grads(model), method))
    for a, b in zip(runs[0][0], runs[1][0], strict=True):
        torch.testing.assert_close(a, b)
    method = runs[0][1]
    if name == "uncertainty":
        assert method.log_vars.grad[1] == 0 and method.log_vars.grad[0] != 0
    if name == "gradnorm":
        assert method.weights() == [1.0, 1.0] and torch.isnan(method.initial_losses[1])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_conv_net_with_unknown_task(name):
    model = build("xs", 3, channels_last=True)
    x = torch.randn(4, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.tensor([[1.0, NAN, 0.0], [0.0, NAN, NAN], [1.0, NAN, 1.0], [NAN, NAN, 0.0]])
    params = {"weights": [1.0, 1.0, 1.0]} if name == "static" else CONFIGS[name]
    method = weighting.get(name, num_tasks=3, **params)
    step(method, model, x, y)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert torch.all(model.heads.weight.grad[1] == 0)
    assert any(p.grad.abs().sum() > 0 for p in model.shared_parameters())


# ---- uncertainty -----------------------------------------------------------------------------


def test_uncertainty_down_weights_the_noisy_task():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = tiny_net()
    method = weighting.get("uncertainty", num_tasks=2)
    optimizer = torch.optim.Adam([*model.parameters(), *method.parameters()], lr=0.05)
    for _ in range(60):
        x, y = toy_batch(g, noise=0.8)
        step(method, model, x, y)
        optimizer.step()
    clean, noisy = method.weights()
    assert noisy < 0.5 * clean
    assert method.log_vars[1] > method.log_vars[0]


def test_uncertainty_reduces_its_gradient():
    calls = []

    def record(t):
        calls.append(t.clone())
        return t * 0

    x, y = toy_batch(torch.Generator().manual_seed(0))
    method = weighting.get("uncertainty", num_tasks=2, reduce_mean=record)
    step(method, tiny_net(), x, y)
    assert len(calls) == 1 and calls[0].abs().sum() > 0
    assert torch.all(method.log_vars.grad == 0)


# ---- gradnorm --------------------------------------------------------------------------------


def test_gradnorm_weights_stay_positive_and_sum_to_T():
    """The noisy task's loss hardly falls, so GradNorm moves weight to it."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = tiny_net()
    method = weighting.get("gradnorm", num_tasks=2, alpha=1.5, lr=0.05)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    seen = []
    for i in range(80):
        x, y = toy_batch(g, noise=0.5)
        if i % 7 == 3:
            y[:, 0] = NAN
        step(method, model, x, y)
        optimizer.step()
        w = method.weights()
        assert all(v > 0 for v in w)
        assert sum(w) == pytest.approx(2.0, abs=1e-5)
        seen.append(w)
    assert seen[-1][1] > 1.5
    assert torch.isfinite(method.initial_losses).all()


def test_gradnorm_gives_the_slower_task_more_weight():
    """Task 1 has a 10× larger loss than at its start relative to task 0: it must gain weight."""
    method = weighting.GradNorm(2, lr=0.1)
    method.initial_losses.copy_(torch.tensor([1.0, 0.1]))
    both = torch.ones(2, dtype=bool)
    method._update(BatchLosses(torch.tensor([0.5, 0.5]), torch.tensor([8, 8])), torch.ones(2), both)
    low, high = method.weights()
    assert high > 1.0 > low and low + high == pytest.approx(2.0)


def test_gradnorm_passes_losses_norms_and_weights_through_reduce_mean():
    calls = []

    def record(t):
        calls.append(t.clone())
        return t

    x, y = toy_batch(torch.Generator().manual_seed(0))
    y[:40, 1] = NAN
    model = tiny_net()
    method = weighting.get("gradnorm", num_tasks=2, reduce_mean=record)
    logits = model(x)
    losses = batch_losses(logits, y)
    method.backward(task_terms(logits, y, "sqrt"), known_tasks(y), model, losses)
    assert len(calls) == 1
    stats = calls[0]
    torch.testing.assert_close(stats[0], losses.mean)  # the mean loss, not the term the reduction scaled
    assert torch.all(stats[1] > 0)
    assert stats[2].tolist() == [1.0, 1.0] and stats[3].tolist() == [1.0, 1.0]
    assert stats[5].tolist() == [64.0, 24.0]


def test_gradnorm_averages_over_workers_that_know_the_task():
    """A second worker that has no label for task 1 must not dilute task 1's loss, and L(0) weighs
    each worker's mean by its labels."""
    other = torch.tensor([[0.4, 0.0], [2.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.4 * 4, 0.0], [4.0, 0.0]])
    method = weighting.GradNorm(2, reduce_mean=lambda t: (t + other) / 2, initial_batches=1)
    both = torch.ones(2, dtype=bool)
    method._update(BatchLosses(torch.tensor([0.6, 0.3]), torch.tensor([4, 2])), torch.ones(2), both)
    torch.testing.assert_close(method.initial_losses, torch.tensor([0.5, 0.3]))


def test_gradnorm_starts_each_task_from_its_first_batches_with_labels():
    """L(0) is the mean over every label of a task's first `initial_batches` labeled batches (a batch
    without its labels does not count), and the task waits for it before its weight moves."""
    method = weighting.GradNorm(2, lr=0.1, initial_batches=3)
    known = torch.ones(2, dtype=bool)
    for mean, counts in (([0.7, 0.9], [32, 1]), ([0.7, 0.0], [32, 0]), ([0.7, 0.6], [32, 3])):
        method._update(BatchLosses(torch.tensor(mean), torch.tensor(counts)), torch.ones(2), torch.tensor(counts) > 0)
        assert method.weights() == [1.0, 1.0]
    assert method.initial_losses[0] == pytest.approx(0.7) and torch.isnan(method.initial_losses[1])
    method._update(BatchLosses(torch.tensor([0.7, 0.3]), torch.tensor([32, 4])), torch.ones(2), known)
    assert method.initial_losses[1] == pytest.approx((0.9 + 0.6 * 3 + 0.3 * 4) / 8)
    slow, fast = method.weights()
    assert slow > 1.0 > fast  # task 0 has not come down from its start (0.7 / 0.7), task 1 has (0.3 / 0.49)


# ---- dwa -------------------------------------------------------------------------------------


def test_dwa_weights_one_then_softmax_of_loss_ratios():
    """Epochs 1 and 2 train with weights 1; the end of epoch 2 sets epoch 3's from L(2)/L(1)."""
    method = weighting.get("dwa", num_tasks=2, temperature=2.0)
    method.epoch_end(torch.tensor([1.0, 1.0]))
    assert method.weights() == [1.0, 1.0]
    method.epoch_end(torch.tensor([0.5, 0.9]))
    a, b = math.exp(0.5 / 2), math.exp(0.9 / 2)
    assert method.weights() == pytest.approx([2 * a / (a + b), 2 * b / (a + b)])


def test_dwa_weights_stay_positive_and_sum_to_T_and_ignore_empty_tasks():
    g = torch.Generator().manual_seed(0)
    method = weighting.get("dwa", num_tasks=3, temperature=0.5)
    losses = torch.tensor([1.0, 2.0, 0.0])
    for _ in range(50):
        losses = losses * (0.5 + torch.rand(3, generator=g))
        method.epoch_end(losses)
        w = method.weights()
        assert all(v > 0 for v in w) and sum(w) == pytest.approx(3.0)
    assert method.history[:, 2].tolist() == [0.0, 0.0]


def test_dwa_uses_reduce_mean_for_epoch_losses():
    other = torch.tensor([3.0, 1.0])
    calls = []

    def mean_with_other_worker(t):
        calls.append(t.clone())
        return (t + other) / 2

    method = weighting.get("dwa", num_tasks=2, reduce_mean=mean_with_other_worker)
    for losses in ([1.0, 1.0], [1.0, 1.0], [1.0, 1.0]):
        method.epoch_end(torch.tensor(losses))
    assert len(calls) == 3
    assert method.weights() == pytest.approx([1.0, 1.0])
    method.epoch_end(torch.tensor([0.0, 1.0]))
    a, b = math.exp((1.5 / 2) / 2), math.exp(1.0 / 2)
    assert method.weights() == pytest.approx([2 * a / (a + b), 2 * b / (a + b)])


# ---- pcgrad ----------------------------------------------------------------------------------


def test_projection_removes_conflicts():
    g = torch.Generator().manual_seed(0)
    conflicts = 0
    for _ in range(50):
        grads = torch.randn(2, 10, generator=g)
        projected = project_conflicting(grads, g)
        if grads[0] @ grads[1] < 0:
            conflicts += 1
            assert projected[0] @ projected[1] >= -1e-5
            assert projected[0] @ grads[1] == pytest.approx(0.0, abs=1e-5)
            assert projected[1] @ grads[0] == pytest.approx(0.0, abs=1e-5)
        else:
            torch.testing.assert_close(projected, grads)
    assert conflicts > 10


def test_projection_of_three_tasks_leaves_zero_rows_alone():
    grads = torch.tensor([[1.0, 0.0], [-1.0, 1.0], [0.0, 0.0]])
    projected = project_conflicting(grads, torch.Generator().manual_seed(0))
    torch.testing.assert_close(projected, torch.tensor([[0.5, 0.5], [0.0, 1.0], [0.0, 0.0]]))


def test_pcgrad_backward_sets_shared_grads_to_sum_of_projections():
    torch.manual_seed(0)
    x, y = toy_batch(torch.Generator().manual_seed(3))
    y[:, 1] = 1 - y[:, 0]
    model = tiny_net()
    with torch.no_grad():
        model.heads.weight[1] = model.heads.weight[0]
    shared = list(model.shared_parameters())
    logits = model(x)
    terms = task_terms(logits, y, "seed")
    per_task = torch.stack(
        [torch.cat([g.reshape(-1) for g in torch.autograd.grad(terms[k], shared, retain_graph=True)]) for k in range(2)]
    )
    assert per_task[0] @ per_task[1] < 0
    want = project_conflicting(per_task).sum(dim=0)
    head_want = torch.autograd.grad(terms.sum(), list(model.task_parameters()), retain_graph=True)

    method = weighting.get("pcgrad", num_tasks=2)
    method.backward(terms, known_tasks(y), model, batch_losses(logits, y))
    torch.testing.assert_close(torch.cat([p.grad.reshape(-1) for p in shared]), want)
    for p, g in zip(model.task_parameters(), head_want, strict=True):
        torch.testing.assert_close(p.grad, g)


def test_pcgrad_reduces_per_task_gradients():
    calls = []

    def record(t):
        calls.append(t.shape)
        return t

    x, y = toy_batch(torch.Generator().manual_seed(0))
    model = tiny_net()
    step(weighting.get("pcgrad", num_tasks=2, reduce_mean=record), model, x, y)
    assert calls == [(2, sum(p.numel() for p in model.shared_parameters()))]


def test_state_dict_round_trip():
    method = weighting.get("dwa", num_tasks=2)
    for losses in ([1.0, 2.0], [0.5, 2.0], [0.25, 2.0]):
        method.epoch_end(torch.tensor(losses))
    restored = weighting.get("dwa", num_tasks=2)
    restored.load_state_dict(method.state_dict())
    assert restored.weights() == method.weights() != [1.0, 1.0]
    gradnorm = weighting.get("gradnorm", num_tasks=2)
    assert set(gradnorm.state_dict()) == {"task_weights", "initial_losses", "initial_sums"}
    assert set(weighting.get("uncertainty", num_tasks=2).state_dict()) == {"log_vars"}
