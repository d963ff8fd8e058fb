"""Task groups: TAG's lookahead affinity and the partition search, by hand and on a world whose
answer is known."""

import numpy as np
import pytest
import torch
from torch import nn

from mtl_ray.config import TrainConfig
from mtl_ray.data.synth import families
from mtl_ray.data.synth.families import TASKS
from mtl_ray.data.validate import validate
from mtl_ray.errors import UserError
from mtl_ray.model.backbones import MultiTaskNet
from mtl_ray.model.partition import parse, show
from mtl_ray.studies.groups import (
    EXHAUSTIVE,
    _partitions,
    best_partition,
    lookahead,
    partition_score,
    requested,
)


def blocks(sizes: list[int], within: float = 0.02, across: float = -0.001) -> np.ndarray:
    n = sum(sizes)
    z = np.full((n, n), across)
    start = 0
    for size in sizes:
        z[start : start + size, start : start + size] = within
        start += size
    return z


def test_partitions_are_counted_by_bell_and_stirling_numbers():
    assert sum(1 for _ in _partitions([0, 1, 2, 3], 4)) == 15  # Bell(4)
    assert sum(1 for _ in _partitions([0, 1, 2, 3], 2)) == 8  # S(4,1) + S(4,2)
    assert sorted(len(p) for p in _partitions([0, 1, 2], 3)) == [1, 2, 2, 2, 3]


def test_partition_score_by_hand():
    z = np.array([[0.0, 0.2, -0.1], [0.4, 0.0, 0.3], [np.nan, 0.1, 0.0]])
    # task 0 gets z[1,0]; task 1 gets z[0,1]; task 2 alone: 0.
    assert partition_score(z, [[0, 1], [2]]) == pytest.approx(0.4 + 0.2)
    # all three: task 0 mean(0.4, nan→0), task 1 mean(0.2, 0.1), task 2 mean(-0.1, 0.3)
    assert partition_score(z, [[0, 1, 2]]) == pytest.approx(0.2 + 0.15 + 0.1)


def test_best_partition_finds_blocks_and_respects_the_budget():
    z = blocks([2, 3])
    assert best_partition(z) == [[0, 1], [2, 3, 4]]
    assert best_partition(z, max_groups=1) == [[0, 1, 2, 3, 4]]
    assert best_partition(-np.abs(blocks([2, 2]))) == [[0], [1], [2], [3]]
    assert best_partition(np.zeros((3, 3))) == [[0, 1, 2]]  # a tie goes to fewer networks
    assert show([["a", "b"], ["c"]]) == "a,b|c"


def test_best_partition_merges_greedily_beyond_the_exhaustive_search():
    sizes = [4, 5, 3]
    assert sum(sizes) > EXHAUSTIVE
    z = blocks(sizes)
    z[np.arange(12), np.arange(12)] = 0.5
    assert best_partition(z) == [[0, 1, 2, 3], [4, 5, 6, 7, 8], [9, 10, 11]]
    assert len(best_partition(z, max_groups=2)) == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("a,b|x", "unknown task 'x'; tasks are a, b, c"),
        ("a,b|b,c", "task 'b' is in two groups"),
        ("a|b", "task 'c' is in no group"),
    ],
)
def test_parse_names_the_task_at_fault(text, message):
    assert parse(" a , b| c ", ["a", "b", "c"]) == [["a", "b"], ["c"]]
    with pytest.raises(UserError, match=message):
        parse(text, ["a", "b", "c"])


def test_lookahead_of_identical_tasks_moves_both_alike():
    torch.manual_seed(0)
    model = MultiTaskNet(nn.Sequential(nn.Linear(5, 8), nn.Tanh()), 8, 3)
    with torch.no_grad():
        model.heads.weight[1] = model.heads.weight[0]
        model.heads.bias[1] = model.heads.bias[0]
    x = torch.randn(40, 5)
    y = torch.stack([(x[:, 0] > 0).float(), (x[:, 0] > 0).float(), (x[:, 1] > 0).float()], dim=1)
    y[:20, 2] = float("nan")
    before = [p.clone() for p in model.parameters()]
    z, measured = lookahead(model, (x[:20], y[:20]), (x, y), lr=0.5)
    assert measured[:2].all() and not measured[2].any()  # task 2 has no label in the step's batch to step on
    assert z[0, 0] > 0 and z[0, 0] == pytest.approx(z[0, 1]) == pytest.approx(z[1, 1])
    assert z[0, 2] != 0 and (z[2] == 0).all()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_compare_groups_auto_takes_the_recommended_partition(tmp_path):
    """`compare --groups auto` takes the partition advise recommends (a short joint run here: that it
    finds the two families is test_advise_groups_recovers_the_two_families's claim)."""
    data = families.write(str(tmp_path / "families"), 300, seed=0)
    chosen = requested("auto", validate(data), TrainConfig(), 2, steps=10)
    assert chosen["source"] == "auto" and chosen["steps"] == 10 and chosen["max_groups"] == 2
    assert 1 <= len(chosen["partition"]) <= 2 and sorted(t for g in chosen["partition"] for t in g) == sorted(TASKS)
    assert set(chosen["affinity"]) == set(TASKS)


def test_compare_takes_its_partition_from_the_flag_not_the_config(tmp_path):
    from mtl_ray.config import TrainConfig
    from mtl_ray.studies.compare import compare

    with pytest.raises(UserError, match=r"compare: the config sets groups 'a,b\|c'; .* pass the partition as --groups"):
        compare(str(tmp_path), config=TrainConfig(groups="a,b|c"))
