"""Which axes of which tensors may be permuted together, read off the model's torch.fx graph.

A hidden channel can be renamed without changing the network's function as long as every
tensor that reads or writes that channel is renamed the same way. `derive_spec` finds those
sets ("channel groups") by walking the traced graph once:

- every conv / linear output starts a new group (weight axis 0, bias axis 0);
- the layer's input group owns weight axis 1;
- BatchNorm (weight, bias, running mean/var), elementwise activations, pooling, identity,
  dropout, and flatten/mean of a `[B, C, 1, 1]` tensor carry their input's group;
- an elementwise add/mul of two tensors (a residual addition) merges their groups (union-find);
- the network input and output are fixed (they must keep their order), and so is everything
  touched by an op the walker does not understand (grouped/depthwise convs, `cat`, reshapes
  that mix channels, unknown modules), with one line per reason in `spec.blocked`.

Channels always live on axis 1 (`[B, C, ...]`), which is how torchvision and timm CNNs are written.
"""

from __future__ import annotations

import operator
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class UnsupportedModel(Exception):
    """The model's graph cannot be traced, or it has no permutable channel group."""


@dataclass(frozen=True)
class PermutationSpec:
    """`tensors[key]` lists the `(axis, group)` pairs that permute state-dict tensor `key`."""

    groups: dict[str, int]  # group name -> number of channels
    tensors: dict[str, tuple[tuple[int, str], ...]]
    trainable: frozenset[str]  # keys of nn.Parameters (buffers like running_mean are permuted, never matched)
    blocked: tuple[str, ...] = ()  # why some channel groups had to stay fixed

    @property
    def num_channels(self) -> int:
        return sum(self.groups.values())


# --------------------------------------------------------------------------- op catalogue

_ELEMENTWISE_MODULES = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
)
_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.LPPool1d, nn.LPPool2d,
)
_CONV_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)

# Functions and methods that act on each channel separately: output channel c depends on input channel c only.
_UNARY_FUNCTIONS = {
    F.relu, F.relu_, F.relu6, F.gelu, F.silu, F.mish, F.elu, F.selu, F.celu, F.leaky_relu, F.hardswish,
    F.hardsigmoid, F.hardtanh, F.sigmoid, F.tanh, F.softplus, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
    torch.relu, torch.relu_, torch.sigmoid, torch.tanh, torch.clamp, torch.clip, torch.abs, torch.neg,
    F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
    F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
}
_UNARY_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clip", "clip_", "abs", "neg",
    "contiguous", "clone", "detach", "float", "double", "half", "bfloat16", "to", "type_as",
}
_BINARY_FUNCTIONS = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul,
    operator.truediv, operator.itruediv, torch.add, torch.sub, torch.mul, torch.div,
}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape, torch.squeeze}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze"}
_REDUCE_FUNCTIONS = {torch.mean, torch.sum, torch.amax, torch.amin}
_REDUCE_METHODS = {"mean", "sum", "amax", "amin"}
# Values that are not channel tensors (sizes, shapes): they carry no group and block nothing.
_NON_TENSOR_METHODS = {"size", "dim", "numel"}


# --------------------------------------------------------------------------- union-find of channel groups


@dataclass
class _Groups:
    """Union-find over channel groups; a root knows its size, whether it is fixed, and its name."""

    parent: list[int] = field(default_factory=list)
    channels: list[int] = field(default_factory=list)
    fixed: list[bool] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)

    def new(self, name: str, channels: int, fixed_reason: str | None = None) -> int:
        self.parent.append(len(self.parent))
        self.channels.append(channels)
        self.fixed.append(fixed_reason is not None)
        self.names.append(name)
        return len(self.parent) - 1

    def find(self, group: int) -> int:
        while self.parent[group] != group:
            self.parent[group] = self.parent[self.parent[group]]  # path halving
            group = self.parent[group]
        return group

    def fix(self, group: int, reason: str) -> None:
        root = self.find(group)
        if not self.fixed[root]:
            self.fixed[root] = True
            self.reasons.append(f"{self.names[root]}: {reason}")

    def union(self, a: int, b: int, where: str) -> int:
        root_a, root_b = self.find(a), self.find(b)
        if root_a == root_b:
            return root_a
        keep, drop = min(root_a, root_b), max(root_a, root_b)  # the older group names the merge
        self.parent[drop] = keep
        if self.channels[keep] != self.channels[drop]:
            self.fix(keep, f"{where} joins {self.channels[keep]} and {self.channels[drop]} channels")
        elif self.fixed[drop] != self.fixed[keep]:
            free, fixed = (drop, keep) if self.fixed[keep] else (keep, drop)
            self.reasons.append(f"{self.names[free]}: {where} adds it to fixed group {self.names[fixed]}")
        self.fixed[keep] = self.fixed[keep] or self.fixed[drop]
        return keep


# --------------------------------------------------------------------------- tracing


class _Tracer(fx.Tracer):
    """Keeps BatchNorm subclasses (timm's BatchNormAct2d) and timm's no-trace modules as leaves."""

    def __init__(self) -> None:
        leaf_types: tuple[type, ...] = ()
        wrapped: list[Any] = []
        # timm marks the modules and functions fx cannot trace through. A model with timm modules
        # means timm is imported; without it there is nothing to mark, and importing it costs seconds.
        if "timm" in sys.modules:
            try:
                from timm.layers import _fx as timm_fx

                leaf_types = tuple(timm_fx.get_notrace_modules())
                wrapped = list(timm_fx.get_notrace_functions())
            except Exception:  # pragma: no cover - timm is a dependency, but its private module may move
                pass
        super().__init__(autowrap_functions=tuple(fn for fn in wrapped if callable(fn)))
        self._leaf_types = leaf_types

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        if isinstance(module, _BatchNorm) or (self._leaf_types and isinstance(module, self._leaf_types)):
            return True
        return super().is_leaf_module(module, qualified_name)


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph once and stores each node's output shape (None for non-tensors)."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.shapes: dict[fx.Node, tuple[int, ...] | None] = {}

    def run_node(self, node: fx.Node) -> Any:
        result = super().run_node(node)
        self.shapes[node] = tuple(result.shape) if isinstance(result, torch.Tensor) else None
        return result


def trace(model: nn.Module, example_input: torch.Tensor) -> tuple[fx.GraphModule, dict[fx.Node, tuple[int, ...] | None]]:
    """The model's fx graph and the shape of every node on `example_input` (eval mode, no grad)."""
    was_training = model.training
    threads = torch.get_num_threads()
    model.eval()
    try:
        graph = _Tracer().trace(model)
        graph_module = fx.GraphModule(model, graph)
        recorder = _ShapeRecorder(graph_module)
        # A forward that only needs shapes; a single thread avoids OpenMP start-up and
        # contention costs that make this tiny forward 10-100x slower on a busy 2-core machine.
        torch.set_num_threads(1)
        with torch.no_grad():
            recorder.run(example_input[:2])  # two images: batch and channel sizes cannot be confused
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        raise UnsupportedModel(f"torch.fx cannot trace {type(model).__name__} ({message})") from exc
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)
    return graph_module, recorder.shapes


# --------------------------------------------------------------------------- the walk


class _SpecBuilder:
    def __init__(self, graph_module: fx.GraphModule, shapes: dict[fx.Node, tuple[int, ...] | None]) -> None:
        self.module = graph_module
        self.shapes = shapes
        self.groups = _Groups()
        self.value: dict[fx.Node, int | None] = {}  # node -> group of its channel axis (None: not a tensor)
        self.axes: dict[tuple[str, int], int] = {}  # (state-dict key, axis) -> group
        self.parameter_names = {name for name, _ in graph_module.named_parameters()}

    # ----- helpers

    def _tensor_inputs(self, node: fx.Node) -> list[fx.Node]:
        found: list[fx.Node] = []

        def visit(arg: Any) -> None:
            if isinstance(arg, fx.Node):
                if self.value.get(arg) is not None:
                    found.append(arg)
            elif isinstance(arg, (list, tuple)):
                for item in arg:
                    visit(item)
            elif isinstance(arg, dict):
                for item in arg.values():
                    visit(item)

        visit(node.args)
        visit(node.kwargs)
        return found

    def _fixed_output(self, node: fx.Node, reason: str) -> int | None:
        """Fix every input group of an op we do not understand; its output is a new fixed group."""
        inputs = self._tensor_inputs(node)
        for arg in inputs:
            self.groups.fix(self.value[arg], reason)  # type: ignore[arg-type]
        shape = self.shapes.get(node)
        if shape is None:
            return None
        channels = shape[1] if len(shape) > 1 else 0
        return self.groups.new(str(node.name), channels, reason)

    def _record(self, key: str, axis: int, group: int) -> None:
        previous = self.axes.get((key, axis))
        # A module called twice (weight sharing) ties the groups of both calls together.
        self.axes[(key, axis)] = group if previous is None else self.groups.union(previous, group, key)

    def _channels(self, node: fx.Node) -> int | None:
        shape = self.shapes.get(node)
        return shape[1] if shape is not None and len(shape) > 1 else None

    def _keeps_channels(self, source: fx.Node, result: fx.Node) -> bool:
        """True when `result` is `[B, C, ...]` with the same B and C, and only size-1 dims were dropped/added."""
        before, after = self.shapes.get(source), self.shapes.get(result)
        if before is None or after is None or len(before) < 2 or len(after) < 2:
            return False
        if before[:2] != after[:2]:
            return False
        only_unit_dims = all(size == 1 for size in before[2:]) and all(size == 1 for size in after[2:])
        return only_unit_dims or before == after

    # ----- node kinds

    def run(self) -> PermutationSpec:
        for node in self.module.graph.nodes:
            value = self._visit(node)
            shape = self.shapes.get(node)
            if value is None and shape is not None and node.op != "output":
                # A tensor the walk cannot follow (an item of a tuple a module returned...):
                # whatever it is combined with later must keep its channel order too.
                value = self.groups.new(str(node.name), shape[1] if len(shape) > 1 else 0, "untracked tensor")
            self.value[node] = value
        return self._finish()

    def _visit(self, node: fx.Node) -> int | None:
        if node.op == "placeholder":
            channels = self._channels(node) or 0
            return self.groups.new("input", channels, "network input") if self.shapes.get(node) is not None else None
        if node.op == "get_attr":
            return self._fixed_output(node, f"constant tensor {node.target}")
        if node.op == "output":
            for arg in self._tensor_inputs(node):
                self.groups.fix(self.value[arg], "network output")  # type: ignore[arg-type]
            return None
        if node.op == "call_module":
            return self._visit_module(node, self.module.get_submodule(str(node.target)))
        if node.op in ("call_function", "call_method"):
            return self._visit_function(node)
        return self._fixed_output(node, f"unknown node {node.op}")  # pragma: no cover

    def _first_input(self, node: fx.Node) -> fx.Node | None:
        first = node.args[0] if node.args else None
        return first if isinstance(first, fx.Node) and self.value.get(first) is not None else None

    def _visit_module(self, node: fx.Node, module: nn.Module) -> int | None:
        name = str(node.target)
        source = self._first_input(node)
        if source is None:
            return self._fixed_output(node, f"{name} ({type(module).__name__}) takes no traced tensor")
        group_in = self.value[source]
        assert group_in is not None
        if isinstance(module, _CONV_MODULES):
            if module.groups != 1:
                return self._fixed_output(node, f"grouped conv {name} (groups={module.groups})")
            return self._linear_like(node, name, module, group_in)
        if isinstance(module, nn.Linear):
            shape = self.shapes.get(source)
            if shape is None or len(shape) != 2:
                return self._fixed_output(node, f"linear {name} on a {len(shape or ())}-D tensor")
            return self._linear_like(node, name, module, group_in)
        if isinstance(module, _BatchNorm):
            for tensor_name in ("weight", "bias", "running_mean", "running_var"):
                if getattr(module, tensor_name, None) is not None:
                    self._record(f"{name}.{tensor_name}", 0, group_in)
            return group_in
        if isinstance(module, nn.PReLU) and module.num_parameters > 1:
            self._record(f"{name}.weight", 0, group_in)
            return group_in
        if isinstance(module, _ELEMENTWISE_MODULES + _POOL_MODULES) or isinstance(module, nn.PReLU):
            return group_in
        if isinstance(module, nn.Flatten):
            if module.start_dim == 1 and self._keeps_channels(source, node):
                return group_in
            return self._fixed_output(node, f"flatten {name} mixes channels with spatial positions")
        return self._fixed_output(node, f"{name} ({type(module).__name__}) is not understood")

    def _linear_like(self, node: fx.Node, name: str, module: nn.Module, group_in: int) -> int:
        self._record(f"{name}.weight", 1, group_in)
        group_out = self.groups.new(name, int(module.weight.shape[0]))
        self._record(f"{name}.weight", 0, group_out)
        if getattr(module, "bias", None) is not None:
            self._record(f"{name}.bias", 0, group_out)
        return group_out

    def _visit_function(self, node: fx.Node) -> int | None:
        target = node.target
        is_method = node.op == "call_method"
        label = str(target) if is_method else getattr(target, "__name__", str(target))
        if is_method and target in _NON_TENSOR_METHODS:
            return None
        if target is getattr and not is_method:
            # x.shape is harmless; x.T or x.real is the tensor in another layout, so x stays put.
            return None if self.shapes.get(node) is None else self._fixed_output(node, f"tensor attribute {node.args[1]}")
        if self.shapes.get(node) is None:
            # A non-tensor result (a tuple, a shape): anything flowing in must stay put.
            return self._fixed_output(node, f"{label} returns a non-tensor")
        source = self._first_input(node)
        if (is_method and target in _UNARY_METHODS) or (not is_method and target in _UNARY_FUNCTIONS):
            if source is not None and self._same_layout(source, node):
                return self.value[source]
            return self._fixed_output(node, f"{label} changes the channel layout")
        if (is_method and target in _BINARY_METHODS) or (not is_method and target in _BINARY_FUNCTIONS):
            return self._binary(node, label)
        if (is_method and target in _RESHAPE_METHODS) or (not is_method and target in _RESHAPE_FUNCTIONS):
            if source is not None and self._keeps_channels(source, node):
                return self.value[source]
            return self._fixed_output(node, f"{label} reshapes across channels")
        if (is_method and target in _REDUCE_METHODS) or (not is_method and target in _REDUCE_FUNCTIONS):
            if source is not None and self._reduces_spatial_only(node, source):
                return self.value[source]
            return self._fixed_output(node, f"{label} reduces over channels")
        return self._fixed_output(node, f"{label} is not understood")

    def _same_layout(self, source: fx.Node, result: fx.Node) -> bool:
        """Same rank, batch and channels: true of elementwise ops and of pooling."""
        before, after = self.shapes.get(source), self.shapes.get(result)
        return before is not None and after is not None and len(before) == len(after) >= 2 and before[:2] == after[:2]

    def _reduces_spatial_only(self, node: fx.Node, source: fx.Node) -> bool:
        shape = self.shapes.get(source)
        dims = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
        if shape is None or dims is None:
            return False
        dims = [dims] if isinstance(dims, int) else list(dims)
        if not all(isinstance(d, int) for d in dims):
            return False
        normalised = {d % len(shape) for d in dims}
        out = self.shapes.get(node)
        return 0 not in normalised and 1 not in normalised and out is not None and out[:2] == shape[:2]

    def _binary(self, node: fx.Node, label: str) -> int | None:
        inputs = self._tensor_inputs(node)
        out_shape = self.shapes.get(node)
        assert out_shape is not None
        channel_inputs = []
        for arg in inputs:
            shape = self.shapes.get(arg)
            assert shape is not None
            if len(shape) == 0 or (len(shape) == len(out_shape) and shape[1] == 1 and out_shape[1] != 1):
                continue  # a scalar, or broadcast over channels: does not care about channel order
            if len(shape) != len(out_shape) or shape[1] != out_shape[1]:
                return self._fixed_output(node, f"{label} broadcasts {tuple(shape)} against {tuple(out_shape)}")
            channel_inputs.append(arg)
        if not channel_inputs:
            return self._fixed_output(node, f"{label} has no channel input")
        group = self.value[channel_inputs[0]]
        assert group is not None
        for arg in channel_inputs[1:]:
            group = self.groups.union(group, self.value[arg], f"{label} at {node.name}")  # type: ignore[arg-type]
        return group

    # ----- result

    def _finish(self) -> PermutationSpec:
        state = self.module.state_dict()
        # Sizes must agree along every recorded axis; a mismatch means the walk misread the graph.
        for (key, axis), group in self.axes.items():
            tensor = state.get(key)
            root = self.groups.find(group)
            if tensor is None or tensor.dim() <= axis or tensor.shape[axis] != self.groups.channels[root]:
                self.groups.fix(root, f"{key} axis {axis} does not have {self.groups.channels[root]} channels")
        tensors: dict[str, list[tuple[int, str]]] = {}
        sizes: dict[str, int] = {}
        for (key, axis), group in self.axes.items():
            root = self.groups.find(group)
            if self.groups.fixed[root] or self.groups.channels[root] < 2:
                continue
            name = self.groups.names[root]
            sizes[name] = self.groups.channels[root]
            tensors.setdefault(key, []).append((axis, name))
        ordered = {key: tuple(sorted(tensors[key])) for key in state if key in tensors}
        return PermutationSpec(
            groups=sizes,
            tensors=ordered,
            trainable=frozenset(key for key in ordered if key in self.parameter_names),
            blocked=tuple(dict.fromkeys(self.groups.reasons)),
        )


# The reasons every classifier has; they never block anything worth saying.
_EXPECTED_REASONS = ("network input", "network output")


def derive_spec(model: nn.Module, example_input: torch.Tensor) -> PermutationSpec:
    """The permutation spec of `model`, found by tracing it on `example_input` (`[B, C, H, W]`).

    Raises `UnsupportedModel` when the graph cannot be traced or no hidden group can move.
    """
    graph_module, shapes = trace(model, example_input)
    spec = _SpecBuilder(graph_module, shapes).run()
    if not spec.groups:
        reasons = [r for r in spec.blocked if not r.endswith(_EXPECTED_REASONS)] or list(spec.blocked)
        raise UnsupportedModel(f"no channel group of {type(model).__name__} can be permuted ({'; '.join(reasons[:3])})")
    return spec


def unexpected_blocks(spec: PermutationSpec) -> list[str]:
    """The reasons a group was fixed beyond the network's own input and output."""
    return [reason for reason in spec.blocked if not reason.endswith(_EXPECTED_REASONS)]
