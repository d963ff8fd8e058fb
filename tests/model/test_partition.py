"""A model of one network per task group (`TrainConfig.groups`): it trains, with every weighting, exactly
as the groups' networks trained apart on the same batches; it is checked before Ray starts; `tune`
searches over it."""

import math

import pytest
import torch

from mtl_ray.config import TrainConfig, TuneConfig
from mtl_ray.errors import UserError
from mtl_ray.model import checkpoint, weighting
from mtl_ray.model.backbones import build
from mtl_ray.model.checks import check_model_config
from mtl_ray.model.partition import PartitionedNet, network, parse, partition_of
from mtl_ray.model.step import train_step
from mtl_ray.training.search import check_pbt, check_search

TASKS = ["a", "b", "c", "d"]
GROUPS = [["a", "d"], ["b", "c"]]  # not in task order, so the logits must be put back in it
AT = [[0, 3], [1, 2]]
NAN = math.nan


def _batches(steps: int = 3):
    g = torch.Generator().manual_seed(7)
    for step in range(steps):
        images = torch.randint(0, 256, (8, 24, 24, 3), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 2, (8, 4), generator=g).float()
        labels[:5, 3] = NAN  # d is starved
        if step == 1:
            labels[:, 2] = NAN  # c unknown in a whole batch: it takes no part
        yield images, labels


def test_the_groups_logits_come_back_in_task_order():
    torch.manual_seed(0)
    model = network("xs", TASKS, groups=GROUPS)
    assert isinstance(model, PartitionedNet) and model.groups == AT
    x = torch.randn(5, 3, 24, 24)
    model.eval()
    own = torch.cat([net(x) for net in model.nets], dim=1)  # a, d, b, c
    torch.testing.assert_close(model(x), own[:, [0, 2, 3, 1]])
    assert isinstance(network("xs", TASKS, groups=[TASKS]), type(build("xs", 4)))  # one group: one network


@pytest.mark.parametrize(
    "method",
    [
        {"name": "equal"},
        {"name": "gradnorm", "initial_batches": 1},
        {"name": "famo"},
        {"name": "mgda_ub"},
        {"name": "static", "weights": [1, 2, 3, 4]},
    ],
    ids=lambda m: m["name"],
)
def test_a_partition_trains_as_its_groups_networks_would_apart(method):
    """Same initial weights, same batches: the partitioned model's networks end equal to networks trained
    alone on their group's label columns, each with its own weighting (static: its tasks' weights)."""
    params = {k: v for k, v in method.items() if k != "name"}
    torch.manual_seed(0)
    together = network("xs", TASKS, groups=GROUPS, channels_last=True)
    joint = weighting.get(method["name"], 4, groups=AT, **params)
    opt = torch.optim.AdamW(together.parameters(), lr=1e-2)
    torch.manual_seed(0)
    apart = [build("xs", 2, channels_last=True) for _ in AT]
    per_task = weighting.METHODS[method["name"]].per_task_parameters
    own = [
        weighting.get(method["name"], 2, **{k: [v[i] for i in g] if k in per_task else v for k, v in params.items()})
        for g in AT
    ]
    opts = [torch.optim.AdamW(net.parameters(), lr=1e-2) for net in apart]
    cpu = torch.device("cpu")
    for images, labels in _batches():
        _, terms, taken = train_step(together, opt, joint, images, labels, cpu, "sqrt")
        assert taken
        for g, net, w, o in zip(AT, apart, own, opts, strict=True):
            _, own_terms, _ = train_step(net, o, w, images, labels[:, g], cpu, "sqrt")
            torch.testing.assert_close(terms[g], own_terms)
    for net, alone in zip(together.nets, apart, strict=True):
        for p, q in zip(net.parameters(), alone.parameters(), strict=True):
            torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)
    weights = joint.weights()
    for g, w in zip(AT, own, strict=True):
        assert [weights[i] for i in g] == pytest.approx(w.weights())
    if method["name"] == "static":
        assert weights == [1, 2, 3, 4]


def test_a_partitioned_checkpoint_loads_into_the_network_its_meta_names(tmp_path):
    torch.manual_seed(1)
    model = network("xs", TASKS, heads="tower", groups=GROUPS)
    meta = {"backbone": "xs", "tasks": TASKS, "heads": "tower", "groups": GROUPS}
    again = checkpoint.network(meta)
    again.load_state_dict(model.state_dict())
    x = torch.randn(3, 3, 24, 24)
    torch.testing.assert_close(again.eval()(x), model.eval()(x))


@pytest.mark.parametrize(
    ("groups", "message"),
    [
        ("a,b|c,x", "groups 'a,b|c,x': unknown task 'x'; tasks are a, b, c, d"),
        ("a,b|b,c,d", "task 'b' is in two groups"),
        ("a,b|c", "task 'd' is in no group"),
        ("auto", "groups 'auto': a run trains a given partition"),
    ],
)
def test_a_bad_partition_names_the_task(groups, message):
    with pytest.raises(UserError, match=message.replace("|", r"\|")):
        check_model_config(TrainConfig(backbone="xs", groups=groups), TASKS)


def test_groups_take_no_init_and_one_group_is_one_network():
    with pytest.raises(
        UserError, match="groups 'a,b|c,d' with init: init starts one shared network".replace("|", r"\|")
    ):
        check_model_config(TrainConfig(backbone="xs", groups="a,b|c,d", init="models:/m@champion"), TASKS)
    assert partition_of("a,b,c,d", TASKS) is None and partition_of(None, TASKS) is None
    assert partition_of("d,a|c,b", TASKS) == [["d", "a"], ["c", "b"]] == parse(" d, a |c,b", TASKS)


def test_tune_searches_partitions_checked_against_the_tasks_and_pbt_keeps_them_fixed():
    cfg = TuneConfig.model_validate({"search": {"groups": [None, "a,d|b,c", "a|b|c|d"]}})
    forms = check_search(cfg, TASKS, "t.yaml")
    assert forms["groups"] == ("grid", [None, "a,d|b,c", "a|b|c|d"])
    bad = TuneConfig.model_validate({"search": {"groups": [None, "a,d|b,e"]}})
    with pytest.raises(UserError, match=r"t.yaml: search.groups: groups 'a,d\|b,e': unknown task 'e'"):
        check_search(bad, TASKS, "t.yaml")
    with pytest.raises(UserError, match="search.groups with scheduler pbt"):
        check_pbt(forms, "t.yaml")
