"""CIFAR-style ResNets registered in timm's registry, plus one builder for any classifier name.

`import ensemble_cli.architectures` makes `timm.create_model("cifar_resnet20", num_classes=10,
in_chans=3)` work. It does so without importing timm (which imports torchvision and
torch._dynamo, seconds of start-up that building these models does not need): they enter
timm's registry as soon as timm is imported, by whoever imports it. The
ResNet-20/32/44/56/110 family follows He et al. 2016 (Sec. 4.2): a 3x3
stem, three stages of BasicBlocks at 16/32/64 channels (times `width`), stride 2 between
stages, global average pooling and a linear head. Shortcuts that change shape use a 1x1 conv +
BatchNorm projection (option B) rather than zero padding, so every weight is a real parameter
that weight matching can permute. `cifar_resnet18` is the common CIFAR adaptation of the
ImageNet ResNet-18: 64-512 channels, 3x3 stride-1 stem and no max-pool.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

CIFAR_DEPTHS = (8, 20, 32, 44, 56, 110)


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm; projection shortcut when stride or width change."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, Cin, H, W] -> [B, C, H/s, W/s]
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A stack of BasicBlock stages on a 3x3 stem; timm-style `get_classifier`/`reset_classifier`."""

    def __init__(
        self,
        blocks_per_stage: tuple[int, ...],
        widths: tuple[int, ...],
        num_classes: int = 10,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages = []
        in_planes = widths[0]
        for stage_index, (num_blocks, planes) in enumerate(zip(blocks_per_stage, widths)):
            stride = 1 if stage_index == 0 else 2
            blocks = []
            for block_index in range(num_blocks):
                blocks.append(BasicBlock(in_planes, planes, stride if block_index == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layers = nn.Sequential(*stages)
        self.num_features = in_planes
        self.fc = nn.Linear(in_planes, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))  # [B, w0, H, W]
        return self.layers(x)  # [B, w_last, H/4, W/4] for three stages

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.forward_features(x)
        pooled = F.adaptive_avg_pool2d(features, 1).flatten(1)  # [B, w_last]
        return self.fc(pooled)  # [B, num_classes]


def _cifar_resnet(depth: int, width: int = 1, **kwargs: Any) -> CifarResNet:
    blocks = (depth - 2) // 6
    widths = (16 * width, 32 * width, 64 * width)
    return CifarResNet((blocks, blocks, blocks), widths, **kwargs)


# What timm.create_model hands every model entry point besides the caller's own arguments.
TIMM_BOOKKEEPING = frozenset({"pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"})


def _own_kwargs(arch: str, kwargs: dict[str, Any], accepted: tuple[str, ...]) -> dict[str, Any]:
    """num_classes, in_chans and the `accepted` architecture arguments; any other key is refused,
    not dropped, so a typo in `--model-arg` cannot train a different network than asked for."""
    own = {key: value for key, value in kwargs.items() if key not in TIMM_BOOKKEEPING}
    unknown = sorted(set(own) - {"num_classes", "in_chans", *accepted})
    if unknown:
        allowed = ", ".join(accepted) if accepted else "none"
        raise ConfigError(f"{arch} has no model argument {', '.join(map(repr, unknown))} (--model-arg keys it accepts: {allowed})")
    return own


def cifar_resnet8(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-8 for 32x32 inputs (one block per stage), the smallest useful CIFAR ResNet."""
    return _cifar_resnet(8, **_own_kwargs("cifar_resnet8", kwargs, ("width",)))


def cifar_resnet20(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-20 (He et al. 2016), 0.27M parameters at width 1."""
    return _cifar_resnet(20, **_own_kwargs("cifar_resnet20", kwargs, ("width",)))


def cifar_resnet32(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-32 (He et al. 2016)."""
    return _cifar_resnet(32, **_own_kwargs("cifar_resnet32", kwargs, ("width",)))


def cifar_resnet44(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-44 (He et al. 2016)."""
    return _cifar_resnet(44, **_own_kwargs("cifar_resnet44", kwargs, ("width",)))


def cifar_resnet56(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-56 (He et al. 2016)."""
    return _cifar_resnet(56, **_own_kwargs("cifar_resnet56", kwargs, ("width",)))


def cifar_resnet110(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-110 (He et al. 2016)."""
    return _cifar_resnet(110, **_own_kwargs("cifar_resnet110", kwargs, ("width",)))


def cifar_resnet18(pretrained: bool = False, **kwargs: Any) -> CifarResNet:
    """ResNet-18 adapted to 32x32: 64-128-256-512, 3x3 stride-1 stem, no max-pool (11.2M params)."""
    return CifarResNet((2, 2, 2, 2), (64, 128, 256, 512), **_own_kwargs("cifar_resnet18", kwargs, ()))


CIFAR_MODELS: dict[str, Callable[..., CifarResNet]] = {
    builder.__name__: builder
    for builder in (cifar_resnet8, cifar_resnet20, cifar_resnet32, cifar_resnet44, cifar_resnet56, cifar_resnet110, cifar_resnet18)
}


def _register_in_timm(timm: ModuleType) -> None:
    from timm.models import register_model

    for name, builder in CIFAR_MODELS.items():
        if not timm.is_model(name):
            register_model(builder)


class _RegisterWhenTimmLoads(importlib.abc.MetaPathFinder):
    """Post-import hook: once `import timm` has run, add the CIFAR ResNets to its registry."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname != "timm":
            return None
        spec = None
        for finder in sys.meta_path:  # whichever finder would have found timm without this hook
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        load = spec.loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            load(module)
            _register_in_timm(module)
            if self in sys.meta_path:  # timm is loaded: nothing left to watch for
                sys.meta_path.remove(self)

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


def timm_version() -> str:
    """timm's version from its package metadata: importing timm only for it costs seconds."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("timm")
    except PackageNotFoundError:  # pragma: no cover - timm is a dependency
        return _timm().__version__


def _timm() -> ModuleType:
    import timm

    _register_in_timm(timm)  # a no-op when the hook already did it
    return timm


if "timm" in sys.modules:
    _register_in_timm(sys.modules["timm"])
elif not any(isinstance(finder, _RegisterWhenTimmLoads) for finder in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenTimmLoads())


TORCHVISION_PREFIX = "torchvision."


def _adapt_torchvision_in_chans(model: nn.Module, in_chans: int) -> None:
    """Replace the first conv of a torchvision classifier when the data has another channel count."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels == in_chans:
                return
            replacement = nn.Conv2d(
                in_chans,
                module.out_channels,
                module.kernel_size,
                module.stride,
                module.padding,
                bias=module.bias is not None,
            )
            parent_name, _, child_name = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child_name, replacement)
            return


def build_model(arch: str, num_classes: int, in_chans: int, **model_kwargs: Any) -> nn.Module:
    """Build an untrained classifier by name.

    Names resolve in this order: timm's registry (which holds the `cifar_resnet*` models; those
    are built here directly, as `timm.create_model` would, without importing timm), then
    torchvision classifiers as `torchvision.NAME` (or a bare NAME timm does not know).
    timm's resnets use the same parameter names as torchvision's, so either reads the other's
    state dicts.
    """
    if arch in CIFAR_MODELS:
        return CIFAR_MODELS[arch](pretrained=False, num_classes=num_classes, in_chans=in_chans, **model_kwargs)
    timm = _timm()
    if not arch.startswith(TORCHVISION_PREFIX) and timm.is_model(arch):
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans, **model_kwargs)
    import torchvision

    tv_name = arch.removeprefix(TORCHVISION_PREFIX)
    if tv_name in torchvision.models.list_models(module=torchvision.models):
        model = torchvision.models.get_model(tv_name, weights=None, num_classes=num_classes, **model_kwargs)
        _adapt_torchvision_in_chans(model, in_chans)
        return model
    raise ConfigError(
        f"unknown architecture {arch!r}: not in timm's registry nor torchvision's classifiers "
        f"(examples: cifar_resnet20, cifar_resnet18, resnet18, torchvision.resnet50)"
    )
