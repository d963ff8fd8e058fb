"""FAMO, IMTL-G, CAGrad, Aligned-MTL and MGDA-UB: each solver against a hand-computed case and an
independent computation, and each method's gradients against what its paper prescribes."""

import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from mtl_ray.config import TrainConfig
from mtl_ray.model import weighting
from mtl_ray.model.backbones import MultiTaskNet, build
from mtl_ray.model.losses import batch_losses, known_tasks, task_terms
from mtl_ray.model.partition import network
from mtl_ray.model.step import train_step
from mtl_ray.model.weighting.gradient import aligned_weights, cagrad_weights, imtl_weights, min_norm_weights

NAN = float("nan")


def gram_of(rows) -> torch.Tensor:
    g = torch.tensor(rows, dtype=torch.float64)
    return g @ g.T


def simplex_grid(k: int, n: int = 60):
    """Every point of the simplex in K dimensions with coordinates in steps of 1/n."""
    for parts in itertools.product(range(n + 1), repeat=k - 1):
        if sum(parts) <= n:
            yield torch.tensor([*parts, n - sum(parts)], dtype=torch.float64) / n


def tiny_net(num_tasks: int = 3) -> MultiTaskNet:
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 8), nn.Tanh())
    return MultiTaskNet(trunk, 8, num_tasks)


def batch(seed: int = 0, m: int = 40, tasks: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, 6, generator=g)
    y = torch.stack([(x[:, k] - 0.5 * x[:, k + 1] > 0).float() for k in range(tasks)], dim=1)
    y[:, 0] = 1 - y[:, 1]  # tasks 0 and 1 conflict
    return x, y


def flat(params) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in params])


def per_task(model, x, y, inputs_of) -> tuple[torch.Tensor, torch.Tensor]:
    """(terms, per-task flat gradients [T, P] on inputs_of(model, features))."""
    model.keep_features = True
    logits = model(x)
    terms = task_terms(logits, y, "seed")
    inputs = inputs_of(model)
    grads = torch.stack(
        [torch.cat([g.reshape(-1) for g in torch.autograd.grad(t, inputs, retain_graph=True)]) for t in terms]
    )
    return terms, grads


# ---- solvers ---------------------------------------------------------------------------------


def test_min_norm_by_hand_and_against_a_grid():
    assert min_norm_weights(gram_of([[1, 0], [0, 1]])).tolist() == pytest.approx([0.5, 0.5])
    assert min_norm_weights(gram_of([[1, 0], [1, 1]])).tolist() == pytest.approx([1.0, 0.0])
    g = torch.randn(3, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    g[1] = -0.8 * g[0] + 0.3 * g[1]
    alpha = min_norm_weights(g @ g.T, iters=2000)
    best = min(float((w @ g).norm()) for w in simplex_grid(3))
    assert alpha.sum().item() == pytest.approx(1.0) and (alpha >= 0).all()
    assert float((alpha @ g).norm()) <= best + 1e-6


def test_imtl_equal_projections():
    # g₁ = (2, 0), g₂ = (0, 1): d = (2α₁, α₂) projects 2α₁ on u₁ and α₂ on u₂, equal when α = (1/3, 2/3).
    assert imtl_weights(gram_of([[2, 0], [0, 1]])).tolist() == pytest.approx([1 / 3, 2 / 3])
    g = torch.randn(4, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    alpha = imtl_weights(g @ g.T)
    d = alpha @ g
    projections = (g @ d) / g.norm(dim=1)
    assert alpha.sum().item() == pytest.approx(1.0)
    torch.testing.assert_close(projections, projections[:1].expand(4))


@pytest.mark.parametrize("c", [0.0, 0.4, 1.0])
def test_cagrad_against_its_objective_on_a_grid(c):
    unit = cagrad_weights(gram_of([[1, 0], [0, 1]]), c)
    assert unit.tolist() == pytest.approx([0.5 * (1 + c) / (1 + c**2)] * 2)
    g = torch.randn(3, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    g[2] = -0.5 * g[0] + 0.2 * g[2]
    g0 = g.mean(dim=0)

    def objective(w):
        return float((w @ g) @ g0 + c * g0.norm() * (w @ g).norm())

    w_best = min(simplex_grid(3), key=objective)
    alpha = cagrad_weights(g @ g.T, c)
    # α = (1/K + λ·w)/(1 + c²): recover w from α and check it is as good as the grid's best.
    lam_w = alpha * (1 + c**2) - 1 / 3
    if c == 0:
        torch.testing.assert_close(alpha, torch.full((3,), 1 / 3, dtype=torch.float64))
        return
    w = lam_w / lam_w.sum()
    assert objective(w) <= objective(w_best) + 1e-6
    lam = c * g0.norm() / (w @ g).norm()
    torch.testing.assert_close(alpha, (1 / 3 + lam * w) / (1 + c**2))


def test_aligned_by_hand_and_against_the_svd():
    # g₁ = (2, 0), g₂ = (0, 1): both scaled to the smallest singular value 1, summed: d = (1, 1).
    assert aligned_weights(gram_of([[2, 0], [0, 1]])).tolist() == pytest.approx([0.5, 1.0])
    g = torch.randn(3, 8, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    u, s, vt = np.linalg.svd(g.numpy(), full_matrices=False)
    want = (s.min() * u @ vt).sum(axis=0)  # the paper's G' = σ_min·U·Vᵀ, rows summed
    np.testing.assert_allclose((aligned_weights(g @ g.T) @ g).numpy(), want, rtol=1e-8)
    rank_two = torch.stack([g[0], g[1], g[0] + g[1]])
    assert torch.isfinite(aligned_weights(rank_two @ rank_two.T)).all()


# ---- the methods' gradients ------------------------------------------------------------------


def run(name: str, model, x, y, reduce_mean=None, **params) -> weighting.Weighting:
    method = weighting.get(name, num_tasks=y.shape[1], reduce_mean=reduce_mean, **params)
    model.keep_features = method.uses_features
    model.zero_grad(set_to_none=True)
    logits = model(x)
    method.backward(task_terms(logits, y, "seed"), known_tasks(y), model, batch_losses(logits, y))
    return method


@pytest.mark.parametrize(
    "name, solver", [("cagrad", lambda gram: 3 * cagrad_weights(gram, 0.4)), ("aligned", aligned_weights)]
)
def test_parameter_methods_set_shared_grads_to_the_weighted_sum(name, solver):
    x, y = batch()
    model = tiny_net()
    terms, grads = per_task(model, x, y, lambda m: list(m.shared_parameters()))
    alpha = solver(grads.double() @ grads.double().T).float()
    heads_want = torch.autograd.grad(terms.sum(), list(model.task_parameters()), retain_graph=True)
    method = run(name, model, x, y)
    torch.testing.assert_close(flat(model.shared_parameters()), alpha @ grads, rtol=1e-4, atol=1e-6)
    for p, g in zip(model.task_parameters(), heads_want, strict=True):
        torch.testing.assert_close(p.grad, g)
    assert method.weights() == pytest.approx(alpha.tolist(), rel=1e-4)


@pytest.mark.parametrize("name", ["imtl", "mgda_ub"])
def test_feature_methods_weigh_the_losses_by_the_representation_gradients(name):
    x, y = batch()
    model = tiny_net()
    terms, grads = per_task(model, x, y, lambda m: [m.features])
    gram = grads.double() @ grads.double().T
    if name == "imtl":
        alpha = 3 * imtl_weights(gram)
    else:
        losses = batch_losses(model(x), y).mean.double()
        scale = losses * gram.diagonal().sqrt()
        alpha = 3 * min_norm_weights(gram / (scale[:, None] * scale[None, :]))
    weighted = (alpha.float() * terms).sum()
    shared_want = torch.autograd.grad(weighted, list(model.shared_parameters()), retain_graph=True)
    heads_loss = weighted if name == "mgda_ub" else terms.sum()
    heads_want = torch.autograd.grad(heads_loss, list(model.task_parameters()), retain_graph=True)
    run(name, model, x, y)
    for p, g in zip(model.shared_parameters(), shared_want, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-7)
    for p, g in zip(model.task_parameters(), heads_want, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-7)
    assert model.features is None


@pytest.mark.parametrize("name", ["imtl", "cagrad", "aligned", "mgda_ub"])
def test_an_unknown_task_keeps_its_weight_and_takes_no_part(name):
    x, y = batch()
    y[:, 2] = NAN
    model = tiny_net()
    method = run(name, model, x, y)
    assert method.weights()[2] == 1.0
    two = tiny_net(num_tasks=2)
    with torch.no_grad():
        two.trunk.load_state_dict(model.trunk.state_dict())
        two.heads.weight.copy_(model.heads.weight[:2])
        two.heads.bias.copy_(model.heads.bias[:2])
    run(name, two, x, y[:, :2])
    torch.testing.assert_close(flat(model.shared_parameters()), flat(two.shared_parameters()))


@pytest.mark.parametrize(
    "name, shapes",
    [
        ("cagrad", lambda t, p: [(t, p), (2, t)]),
        ("imtl", lambda t, p: [(t + 2, t)]),
        ("famo", lambda t, p: [(3, t)]),
    ],
)
def test_everything_that_decides_the_weights_goes_through_reduce_mean(name, shapes):
    calls = []

    def record(t):
        calls.append(tuple(t.shape))
        return t

    x, y = batch()
    model = tiny_net()
    run(name, model, x, y, reduce_mean=record)
    assert calls == shapes(3, sum(p.numel() for p in model.shared_parameters()))


# ---- FAMO ------------------------------------------------------------------------------------


def test_famo_weights_and_logit_step_by_hand():
    method = weighting.get("famo", num_tasks=2)
    terms = torch.tensor([0.5, 1.0], requires_grad=True)
    losses = batch_losses(torch.zeros(4, 2), torch.tensor([[1.0, 0.0]] * 4))  # ln 2 each
    method.backward(terms, torch.tensor([True, True]), tiny_net(2), losses)
    # z = (½, ½); weight on term k ∝ zₖ/ℓₖ = (1, ½), scaled to sum to 2.
    assert terms.grad.tolist() == pytest.approx([4 / 3, 2 / 3])
    assert method.weights() == pytest.approx([4 / 3, 2 / 3])
    # After the step task 0's loss halved and task 1's stayed: δ = (ln 2, 0), the softmax's Jacobian
    # gives ξ's gradient ¼(δ₀ − δ₁)·(1, −1), and Adam's first step moves each logit by lr against its sign.
    after = torch.tensor([math.log(2) / 2, math.log(2)])
    method.after_step(weighting.base.BatchLosses(after, torch.tensor([4, 4])), torch.tensor([True, True]))
    assert method.logits.tolist() == pytest.approx([-0.025, 0.025], rel=1e-5)
    terms = torch.tensor([0.5, 1.0], requires_grad=True)
    method.backward(terms, torch.tensor([True, True]), tiny_net(2), losses)
    z = torch.softmax(torch.tensor([-0.025, 0.025]), dim=0)
    inverse = z / torch.tensor([0.5, 1.0])
    assert terms.grad.tolist() == pytest.approx((2 * inverse / inverse.sum()).tolist(), rel=1e-5)


def test_famo_task_without_labels_keeps_its_logit_and_adam_state():
    method = weighting.get("famo", num_tasks=3)
    known = torch.tensor([True, True, False])
    losses = weighting.base.BatchLosses(torch.tensor([0.7, 0.7, 0.0]), torch.tensor([5, 5, 0]))
    terms = torch.tensor([0.7, 0.7, 0.0], requires_grad=True)
    method.backward(terms, known, tiny_net(3), losses)
    assert terms.grad.tolist() == pytest.approx([1.0, 1.0, 0.0])
    method.after_step(weighting.base.BatchLosses(torch.tensor([0.3, 0.6, 0.0]), torch.tensor([5, 5, 0])), known)
    assert method.logits[2] == 0 and method.adam[:, 2].tolist() == [0.0, 0.0, 0.0]
    assert method.logits[0] < 0 < method.logits[1] and method.adam[2, :2].tolist() == [1.0, 1.0]
    assert set(method.state_dict()) == {"logits", "adam", "before", "task_weights"}


def test_train_step_gives_famo_the_losses_after_the_step_without_touching_batch_norm():
    images = torch.randint(0, 256, (8, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([[1.0, 0.0, NAN], [0.0, 1.0, 1.0]] * 4)
    stats = {}
    for name in ("equal", "famo"):
        torch.manual_seed(0)
        model = build("xs", 3, channels_last=True)
        method = weighting.get(name, num_tasks=3)
        optimizer = torch.optim.AdamW(model.parameters(), lr=TrainConfig().lr)
        _, _, taken = train_step(model, optimizer, method, images, labels, torch.device("cpu"), "sqrt")
        assert taken
        stats[name] = [b.clone() for b in model.buffers()]
    for a, b in zip(stats["equal"], stats["famo"], strict=True):
        torch.testing.assert_close(a, b)
    assert method.logits.abs().sum() > 0 and torch.isnan(method.before).all()


# ---- DDP -------------------------------------------------------------------------------------

NEW_METHODS = ["famo", "imtl", "cagrad", "aligned", "mgda_ub"]
GROUPED = "gradnorm per task group"


def _ddp_worker(rank: int, port: int, out: str) -> None:
    import torch.distributed as dist

    from mtl_ray.model.step import mean_over_workers

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    images = torch.randint(0, 256, (3, 8, 24, 24, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(rank))
    labels = torch.randint(0, 2, (3, 8, 3), generator=torch.Generator().manual_seed(10 + rank)).float()
    if rank == 1:
        labels[:, :, 2] = NAN  # the third task is known on rank 0 only
    result = {}
    for name in [*NEW_METHODS, GROUPED]:
        torch.manual_seed(0)
        if name == GROUPED:  # a network per group, each with its own GradNorm
            net = network("xs", ["a", "b", "c"], groups=[["a", "c"], ["b"]], channels_last=True)
            method = weighting.get("gradnorm", 3, mean_over_workers, groups=net.groups, initial_batches=1)
        else:
            net = build("xs", 3, channels_last=True)
            method = weighting.get(name, num_tasks=3, reduce_mean=mean_over_workers)
        model = nn.parallel.DistributedDataParallel(net)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        for i in range(3):
            train_step(model, optimizer, method, images[i], labels[i], torch.device("cpu"), "sqrt")
        result[name] = (torch.cat([p.detach().reshape(-1) for p in model.parameters()]), method.weights())
    torch.save(result, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_every_ddp_worker_ends_with_the_same_model_and_weights(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for name in [*NEW_METHODS, GROUPED]:
        (params0, weights0), (params1, weights1) = ranks[0][name], ranks[1][name]
        torch.testing.assert_close(params0, params1, msg=name)
        assert weights0 == pytest.approx(weights1), name
        assert weights0 != [1.0, 1.0, 1.0], name
