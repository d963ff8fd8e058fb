"""Backbone registry, the own CNN family, input normalisation and the multi-task wrapper."""

from pathlib import Path

import pytest
import torch
from conftest import REPO
from torch import nn

from mtl_ray.errors import UserError
from mtl_ray.model import backbones as models
from mtl_ray.model.losses import masked_bce

OWN = ["xs", "s", "m", "l", "xl"]
DOCS = Path(REPO) / "docs" / "models.md"


def images(n: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=gen)


def test_own_family_is_always_available():
    assert models.available()[:5] == OWN


@pytest.mark.parametrize("backbone", models.available())
@pytest.mark.parametrize("num_tasks", [1, 7])
def test_builds_and_returns_one_logit_per_task(backbone, num_tasks):
    model = models.build(backbone, num_tasks).eval()
    with torch.no_grad():
        out = model(models.to_input(images(3)))
    assert out.shape == (3, num_tasks)
    assert out.dtype == torch.float32
    assert model.heads(torch.zeros(1, model.feature_dim)).shape == (1, num_tasks)


@pytest.mark.parametrize("backbone", models.available())
def test_every_backbone_trains_at_odd_and_non_square_sizes_from_its_minimum(backbone):
    """Odd sides once broke the own family (strided conv rounds up, the skip's pool rounded down)."""
    least = models.min_image_side(backbone)
    model = models.build(backbone, 3).train()
    for height, width in [(least, least), (28, 56), (36, 36), (75, 100), (96, 160), (least + 1, 2 * least + 3)]:
        if min(height, width) < least:
            continue
        x = torch.randint(0, 256, (2, height, width, 3), dtype=torch.uint8)
        out = model(models.to_input(x))
        assert out.shape == (2, 3), (height, width)
        out.sum().backward()


def test_image_size_below_the_backbones_minimum_is_one_line_before_ray():
    from mtl_ray.config import TrainConfig
    from mtl_ray.model.checks import check_model_config

    least = models.min_image_side("s")
    check_model_config(TrainConfig(backbone="s"), ["a", "b", "c", "d"], (least, 3 * least))
    with pytest.raises(UserError) as caught:
        check_model_config(TrainConfig(backbone="s", image_size=[least - 1, 64]), ["a", "b", "c", "d"])
    assert str(caught.value) == (
        f"image size {least - 1}x64 (HxW) is below backbone 's''s minimum of {least} px "
        f"per side: set image_size to at least {least}"
    )


def test_parameter_counts_strictly_increase():
    counts = [sum(p.numel() for p in models.build(name, 4).parameters()) for name in OWN]
    assert counts == sorted(set(counts))
    assert counts[0] < 20_000
    assert 1_000_000 < counts[-1] < 10_000_000


def test_parameters_split_into_shared_and_task():
    model = models.build("s", 5)
    shared = {id(p) for p in model.shared_parameters()}
    task = {id(p) for p in model.task_parameters()}
    assert not shared & task
    assert shared | task == {id(p) for p in model.parameters()}


@pytest.mark.parametrize("backbone", models.available())
def test_last_shared_layer_is_the_trunks_last_weight_layer(backbone):
    model = models.build(backbone, 3)
    layer = model.last_shared_layer()
    assert isinstance(layer, nn.Conv2d)
    shared = {id(p) for p in model.shared_parameters()}
    assert all(id(p) in shared for p in layer.parameters())


def test_last_shared_layer_is_on_the_main_path_of_the_last_block():
    model = models.build("s", 3)
    last_block = [m for m in model.trunk if isinstance(m, models.ResidualBlock)][-1]
    assert model.last_shared_layer() is last_block.body[-2]
    assert model.last_shared_layer().kernel_size == (3, 3)


def test_channels_last_gives_the_same_logits():
    torch.manual_seed(0)
    plain = models.build("s", 4).eval()
    fast = models.build("s", 4, channels_last=True).eval()
    fast.load_state_dict(plain.state_dict())
    assert fast.trunk[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = images(4)
    with torch.no_grad():
        want = plain(models.to_input(x))
        got = fast(models.to_input(x, channels_last=True))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels_last", [False, True])
def test_bf16_autocast_forward_and_backward(channels_last):
    model = models.build("s", 4, channels_last=channels_last)
    targets = torch.tensor([[1.0, 0.0, float("nan"), 1.0]] * 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(models.to_input(images(4), channels_last=channels_last))
        loss = masked_bce(logits, targets)
    assert logits.dtype == torch.bfloat16
    assert logits.shape == (4, 4)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_unknown_backbone_lists_available_names():
    with pytest.raises(UserError) as err:
        models.build("resnet9000", 4)
    message = str(err.value)
    assert "resnet9000" in message
    assert ", ".join(models.available()) in message


@pytest.mark.skipif(models.torchvision_available(), reason="torchvision imports here")
def test_torchvision_backbone_without_torchvision_says_why():
    assert "resnet18" not in models.available()
    with pytest.raises(UserError, match="torchvision"):
        models.build("resnet18", 4)


def test_needs_at_least_one_task():
    with pytest.raises(UserError, match="at least one task"):
        models.build("xs", 0)


def test_to_input_normalises_and_lays_out():
    x = torch.zeros(2, 5, 6, 3, dtype=torch.uint8)
    x[1] = 255
    out = models.to_input(x)
    assert out.shape == (2, 3, 5, 6)
    assert out.dtype == torch.float32
    assert out.is_contiguous()
    for c in range(3):
        mean, std = models.MEAN[c], models.STD[c]
        torch.testing.assert_close(out[0, c], torch.full((5, 6), -mean / std))
        torch.testing.assert_close(out[1, c], torch.full((5, 6), (1 - mean) / std))
    assert models.to_input(x, channels_last=True).is_contiguous(memory_format=torch.channels_last)


def test_to_input_keeps_pixels_in_place():
    x = images(2, size=8)
    out = models.to_input(x)
    for c in range(3):
        want = (x[..., c].float() / 255 - models.MEAN[c]) / models.STD[c]
        torch.testing.assert_close(out[:, c], want)


def test_to_input_rejects_other_shapes():
    with pytest.raises(ValueError):
        models.to_input(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_describe_covers_the_family():
    rows = models.describe()
    assert [r["backbone"] for r in rows] == OWN
    for key in ("params", "trunk_params", "flops", "depth"):
        values = [r[key] for r in rows]
        assert values == sorted(values), key
    assert rows[1]["params"] == sum(p.numel() for p in models.build("s", 4).parameters())
    assert [r["depth"] for r in rows][-2:] == [18, 34]


def test_docs_table_is_current():
    assert models.table() in DOCS.read_text()


def test_tower_heads_give_each_task_a_hidden_layer_that_no_other_task_trains():
    torch.manual_seed(0)
    linear, tower = models.build("xs", 3), models.build("xs", 3, heads="tower")
    width = tower.feature_dim
    extra = sum(p.numel() for p in tower.parameters()) - sum(p.numel() for p in linear.parameters())
    assert extra == 3 * width * width + 3 * width  # per task: width x width weights and width biases more
    logits = tower(models.to_input(images(4)))
    assert logits.shape == (4, 3)
    logits[:, 1].sum().backward()  # task 1's loss alone
    heads = dict(tower.heads.named_parameters())
    for name, param in heads.items():
        assert param.grad[1].abs().sum() > 0, name
        assert param.grad[[0, 2]].abs().sum() == 0, name
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tower.trunk.parameters() if p.dim() > 1)
    with torch.no_grad():  # task 1's logit is its tower on the trunk's features
        features = tower.trunk(models.to_input(images(4)))
        hidden = torch.relu(features @ heads["w1"][1].T + heads["b1"][1])
        torch.testing.assert_close(tower.heads(features)[:, 1], hidden @ heads["w2"][1] + heads["b2"][1])
    with pytest.raises(UserError, match="unknown heads 'mlp': expected one of linear, tower"):
        models.build("xs", 3, heads="mlp")
