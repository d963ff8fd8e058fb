"""Multi-task networks: a shared trunk from a backbone registry plus one head per task.

The registry maps a backbone name to a function that builds the trunk and returns it with its
feature dimension; `build` adds the heads (`HEADS`: linear, or a tower per task). The own CNN family
`xs … xl` needs nothing beyond torch and trains on a laptop CPU at 64 px; `resnet18/34/50` come from
torchvision, an optional extra, imported only when such a backbone is asked for. See docs/models.md.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from mtl_ray.errors import UserError

# ImageNet statistics: right for torchvision backbones, harmless for the own family.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

TrunkBuilder = Callable[..., tuple[nn.Module, int]]


@functools.cache
def _normalisation(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(bias, scale) [1, 3, 1, 1] with (pixel * scale + bias) == (pixel / 255 - mean) / std."""
    scale = 1.0 / (torch.tensor(STD).view(1, 3, 1, 1) * 255.0)
    bias = -torch.tensor(MEAN).view(1, 3, 1, 1) * 255.0 * scale
    return bias.to(device), scale.to(device)


def to_input(images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """uint8 images [N, H, W, 3] → normalised float32 [N, 3, H, W].

    Meant to run on the training device after the transfer, which moves 4× fewer bytes as uint8.
    The permuted NHWC buffer already is channels_last memory, so that layout costs no copy.
    """
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [N, H, W, 3], got {tuple(images.shape)}")
    x = images.permute(0, 3, 1, 2)
    if not channels_last:
        x = x.contiguous()
    bias, scale = _normalisation(x.device)
    return torch.addcmul(bias, x.float(), scale)


class TowerHeads(nn.Module):
    """A tower per task: task j's logit is w2[j] · relu(W1[j] features + b1[j]) + b2[j], a hidden layer
    of `width` units that no other task's loss reaches, the T towers in one batched matmul. Private
    capacity for a task whose gradients pull the shared features away from what the others need.
    Every parameter has the task on its first dimension, as a Linear(feature_dim, T) head does."""

    def __init__(self, feature_dim: int, num_tasks: int, width: int) -> None:
        super().__init__()
        first, second = nn.Linear(feature_dim, num_tasks * width), nn.Linear(width, num_tasks)
        self.w1 = nn.Parameter(first.weight.detach().view(num_tasks, width, feature_dim).clone())
        self.b1 = nn.Parameter(first.bias.detach().view(num_tasks, width).clone())
        self.w2 = nn.Parameter(second.weight.detach().clone())
        self.b2 = nn.Parameter(second.bias.detach().clone())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(torch.einsum("mf,thf->mth", features, self.w1) + self.b1)
        return (hidden * self.w2).sum(-1) + self.b2


HEADS = ("linear", "tower")


class MultiTaskNet(nn.Module):
    """Shared trunk → features [m, feature_dim] → `heads` → logits [m, T].

    `heads` is one Linear(feature_dim, T) (`linear`): row j is task j's own linear head (no parameters
    are shared between rows), computed in one matmul instead of T small ones; or `TowerHeads` with a
    hidden layer of feature_dim units per task (`tower`).

    With `keep_features` set, a forward with gradients keeps the trunk's output, in the autograd
    graph, as `features` for weighting methods that work on the gradients of the shared representation
    (MGDA-UB, IMTL-G); they take it and set it back to None.
    """

    def __init__(self, trunk: nn.Module, feature_dim: int, num_tasks: int, heads: str = "linear") -> None:
        super().__init__()
        self.trunk = trunk
        self.feature_dim = feature_dim
        self.num_tasks = num_tasks
        self.heads = (
            TowerHeads(feature_dim, num_tasks, feature_dim) if heads == "tower" else nn.Linear(feature_dim, num_tasks)
        )
        self.keep_features = False
        self.features: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.trunk(x)
        if self.keep_features and torch.is_grad_enabled():
            self.features = features
        return self.heads(features)

    def shared_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters every task's loss flows through (the trunk)."""
        return self.trunk.parameters()

    def task_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the task heads."""
        return self.heads.parameters()

    def stages(self) -> list[nn.Module]:
        """The trunk's stages, whose outputs are its feature maps from fine to coarse: the residual
        blocks of the own family, `layer1`…`layer4` of a torchvision ResNet."""
        blocks = [m for m in self.trunk.modules() if isinstance(m, ResidualBlock)]
        return blocks or [getattr(self.trunk, f"layer{i}") for i in range(1, 5)]

    def load_initial(self, state: dict[str, torch.Tensor], source_tasks: list[str], tasks: list[str]) -> list[str]:
        """Start from another model's weights (transfer): its whole trunk, and for each of `tasks` that
        the source also had (by name) that task's head; the other heads keep their fresh weights.
        Returns the tasks whose heads came from the source."""
        trunk = {k[len("trunk.") :]: v for k, v in state.items() if k.startswith("trunk.")}
        missing, unexpected = self.trunk.load_state_dict(trunk, strict=False)
        if missing or unexpected:
            raise UserError(
                f"the initial weights do not fit this trunk: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        kept = [t for t in tasks if t in source_tasks]
        heads = dict(self.heads.named_parameters())
        if kept and {f"heads.{k}" for k in heads} - set(state):
            raise UserError("the initial weights have another kind of task heads than this model (linear or tower)")
        with torch.no_grad():
            for t in kept:
                for key, param in heads.items():
                    param[tasks.index(t)] = state[f"heads.{key}"][source_tasks.index(t)]
        return kept

    def last_shared_layer(self) -> nn.Module:
        """The trunk's last conv/linear layer in module order, where GradNorm measures per-task
        gradient norms; for the own family and torchvision ResNets, the last block's final conv."""
        layers = [m for m in self.trunk.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        return layers[-1]


@dataclass(frozen=True)
class CNNSpec:
    """One member of the own family: per-stage widths (the stem has the first) and blocks per stage."""

    widths: tuple[int, ...]
    blocks: tuple[int, ...]

    @property
    def depth(self) -> int:
        """Weight layers on the main path, counted as ResNets are: stem, two per block, the head."""
        return 1 + 2 * sum(self.blocks) + 1


# A ResNet layout scaled down for 64 px on CPUs: `l` is a half-width ResNet-18, `xl` a half-width
# ResNet-34; the smaller members shrink width and depth further.
CNN_SPECS: dict[str, CNNSpec] = {
    "xs": CNNSpec(widths=(8, 8, 16, 16), blocks=(1, 1, 1, 1)),
    "s": CNNSpec(widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1)),
    "m": CNNSpec(widths=(24, 48, 96, 192), blocks=(1, 2, 2, 1)),
    "l": CNNSpec(widths=(32, 64, 128, 256), blocks=(2, 2, 2, 2)),
    "xl": CNNSpec(widths=(32, 64, 128, 256), blocks=(3, 4, 6, 3)),
}


def _conv_bn(c_in: int, c_out: int, stride: int = 1, kernel: int = 3) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
    ]


class ResidualBlock(nn.Module):
    """Two 3×3 conv-BN layers plus a skip connection.

    When the shape changes, the skip average-pools then projects with a 1×1 conv (ResNet-D): on
    CPUs the backward of a strided 1×1 conv costs over half that of the strided 3×3 beside it.
    """

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        # Registered before `body` so that the main path's last conv is the last conv in module
        # order, which is what `MultiTaskNet.last_shared_layer` picks.
        if stride == 1 and c_in == c_out:
            self.skip: nn.Module = nn.Identity()
        else:
            # ceil_mode: for an odd side the main path's padded stride-2 conv rounds up, so must the pool.
            pool = nn.AvgPool2d(stride, ceil_mode=True, count_include_pad=False) if stride > 1 else nn.Identity()
            self.skip = nn.Sequential(pool, *_conv_bn(c_in, c_out, kernel=1))
        self.body = nn.Sequential(*_conv_bn(c_in, c_out, stride), nn.ReLU(inplace=True), *_conv_bn(c_out, c_out))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


def _cnn_trunk(spec: CNNSpec) -> tuple[nn.Module, int]:
    """ResNet stem (stride-2 conv, max-pool), stages that halve the resolution after the first, GAP."""
    layers: list[nn.Module] = [*_conv_bn(3, spec.widths[0], stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    c_in = spec.widths[0]
    for stage, (width, blocks) in enumerate(zip(spec.widths, spec.blocks, strict=True)):
        for i in range(blocks):
            layers.append(ResidualBlock(c_in, width, stride=2 if stage > 0 and i == 0 else 1))
            c_in = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    return nn.Sequential(*layers), c_in


def _torchvision_resnet(name: str, pretrained: bool = False) -> tuple[nn.Module, int]:
    """A torchvision ResNet with its classifier replaced by Identity, so it returns pooled features."""
    tv_models = importlib.import_module("torchvision.models")
    trunk = getattr(tv_models, name)(weights="DEFAULT" if pretrained else None)
    feature_dim = trunk.fc.in_features
    trunk.fc = nn.Identity()
    return trunk, feature_dim


TORCHVISION_BACKBONES = ("resnet18", "resnet34", "resnet50")
IMAGENET_FILES = {
    "resnet18": "resnet18-f37072fd.pth",
    "resnet34": "resnet34-b627a593.pth",
    "resnet50": "resnet50-0676ba61.pth",
}
"""torchvision's ImageNet weights (IMAGENET1K_V1) as its weight loader names them in the torch hub cache."""
MIN_SIDE = 16
"""Smallest image side the own family takes: its stem and pooling leave a 1×1 map by the second stage."""
MIN_SIDE_TORCHVISION = 32
"""Smallest image side for the torchvision ResNets: their last stage is 1×1 at 32 px."""

BACKBONES: dict[str, TrunkBuilder] = {
    **{name: functools.partial(_cnn_trunk, spec) for name, spec in CNN_SPECS.items()},
    **{name: functools.partial(_torchvision_resnet, name) for name in TORCHVISION_BACKBONES},
}


@functools.cache
def torchvision_available() -> bool:
    """Whether torchvision imports (an installed one can still fail against this torch build)."""
    try:
        importlib.import_module("torchvision.models")
    except Exception:  # noqa: BLE001 — any import failure means "not usable"
        return False
    return True


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def imagenet_state(backbone: str) -> dict[str, torch.Tensor]:
    """The ImageNet weights of a torchvision ResNet from the torch hub cache, as a `MultiTaskNet` state
    (its classifier dropped). Nothing is downloaded: a file that is not there is a one-line error."""
    if backbone not in IMAGENET_FILES:
        raise UserError(
            f"--init torchvision: ImageNet weights exist for {', '.join(IMAGENET_FILES)}, not for backbone {backbone!r}"
        )
    path = os.path.join(torch.hub.get_dir(), "checkpoints", IMAGENET_FILES[backbone])
    if not os.path.isfile(path):
        raise UserError(
            f"--init torchvision: no ImageNet weights for {backbone} at {path}; fetch them where there is a "
            f"network (torchvision.models.{backbone}(weights='IMAGENET1K_V1')) and copy the file here, "
            "or point TORCH_HOME at a cache that has it"
        )
    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise UserError(f"--init torchvision: {path} is not a torch state dict ({type(exc).__name__})") from None
    return {f"trunk.{k}": v for k, v in weights.items() if not k.startswith("fc.")}


def min_image_side(backbone: str) -> int:
    """The smallest height or width `backbone` is meant for; every size from it up works, odd ones too."""
    return MIN_SIDE_TORCHVISION if backbone in TORCHVISION_BACKBONES else MIN_SIDE


def available() -> list[str]:
    """Backbone names that can be built in this environment."""
    return [n for n in BACKBONES if n not in TORCHVISION_BACKBONES or torchvision_available()]


def build(backbone: str, num_tasks: int, channels_last: bool = False, heads: str = "linear", **kw) -> MultiTaskNet:
    """A multi-task network: trunk `backbone` plus `num_tasks` heads (`HEADS`), returning [m, T] logits.

    `channels_last` stores conv weights NHWC; with `to_input(..., channels_last=True)` convolutions
    run faster on GPUs and, with oneDNN, on CPUs too. Other keywords go to the backbone's builder
    (e.g. `pretrained` for the torchvision ResNets).
    """
    if backbone in TORCHVISION_BACKBONES and not torchvision_available():
        raise UserError(
            f"backbone {backbone!r} needs torchvision, which does not import here (pip install 'mtl-ray[vision]'); "
            f"available are {', '.join(available())}"
        )
    if backbone not in BACKBONES:
        raise UserError(f"unknown backbone {backbone!r}: available are {', '.join(available())}")
    if num_tasks < 1:
        raise UserError(f"a multi-task model needs at least one task, got {num_tasks}")
    if heads not in HEADS:
        raise UserError(f"unknown heads {heads!r}: expected one of {', '.join(HEADS)}")
    trunk, feature_dim = BACKBONES[backbone](**kw)
    model = MultiTaskNet(trunk, feature_dim, num_tasks, heads)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def count_flops(model: nn.Module, image_size: int = 64) -> int:
    """Forward FLOPs for one image (convs and matmuls, 2 per multiply-add), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    model.train(was_training)
    return counter.get_total_flops()


def describe(image_size: int = 64, num_tasks: int = 4) -> list[dict]:
    """Width, depth, parameters and forward FLOPs per image of each own backbone."""
    rows = []
    for name, spec in CNN_SPECS.items():
        model = build(name, num_tasks)
        rows.append(
            {
                "backbone": name,
                "widths": list(spec.widths),
                "blocks": list(spec.blocks),
                "depth": spec.depth,
                "feature_dim": model.feature_dim,
                "trunk_params": sum(p.numel() for p in model.shared_parameters()),
                "params": sum(p.numel() for p in model.parameters()),
                "flops": count_flops(model, image_size),
            }
        )
    return rows


def table(image_size: int = 64, num_tasks: int = 4) -> str:
    """`describe()` as a Markdown table."""
    lines = [
        f"| backbone | stage widths | blocks | depth | trunk params | MFLOPs/image @ {image_size} px |",
        "|---|---|---|---|---|---|",
    ]
    for r in describe(image_size, num_tasks):
        lines.append(
            f"| `{r['backbone']}` | {'-'.join(map(str, r['widths']))} | {'-'.join(map(str, r['blocks']))} "
            f"| {r['depth']} | {r['trunk_params']:,} | {r['flops'] / 1e6:.1f} |"
        )
    return "\n".join(lines)
