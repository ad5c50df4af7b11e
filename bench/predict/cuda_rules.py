"""Run a training step on this CPU as a CUDA card would run it, for the memory prediction.

Fake CUDA tensors run a forward pass here, but the autograd engine refuses their backward without
a GPU. So each torch call is traced on fake CUDA stand-ins of its arguments, where CUDA's own
rules decide the ops (CUDA autocast's op lists, `native_dropout` with its 1-byte bool mask, the
target card's attention backend), and the traced aten graph is replayed on the fake CPU
arguments, where autograd records the backward exactly as it would for those ops on CUDA: each
op's derivative, and so what it saves, is the same on every device.

Calls that torch.distributed makes inside the autocast region (FSDP2 gathering a unit's
parameters before it runs, DDP preparing its buckets) run as they are: they copy, split and
resize bytes, and neither device's autocast has a rule for any of that; traced and replayed, they
would also lose what they make (FSDP2's whole parameters come back as plain outputs of a graph,
not parameters that require grad).
"""

from __future__ import annotations

import contextlib
import sys

import torch
import torch.nn.functional as F
from torch.autograd.graph import _engine_run_backward
from torch.fx.experimental.proxy_tensor import make_fx
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten

from bench.predict.attention import attention_backend

CUDA = torch.device("cuda", 0)
CPU = torch.device("cpu")


class CudaRules(TorchFunctionMode):
    """with FakeTensorMode(), CudaRules(capability): ...  (tensors are fake CPU tensors).

    Inside a CPU autocast region every call with tensor arguments is replayed from its CUDA
    trace with CPU autocast off; outside it only dropout and attention differ between the two
    devices, so only they are replayed. `capability` is the target card's (major, minor)."""

    def __init__(self, capability: tuple[int, int]):
        super().__init__()
        self.capability = capability
        self._graphs: dict = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _BACKWARD:
            return self._backward(func, *args, **kwargs)
        autocast = torch.is_autocast_enabled("cpu")
        if (
            not (func in _REWRITES or (autocast and _has_tensor(args, kwargs)))
            or func in _DIRECT
            or getattr(func, "__name__", "") in _ATTRIBUTE_ACCESS
            or (func not in _REWRITES and _from_distributed())
        ):
            return func(*args, **kwargs)
        leaves, spec = tree_flatten((args, kwargs))
        tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
        dtype = torch.get_autocast_dtype("cpu") if autocast else None
        key = (func, dtype, torch.is_grad_enabled(), tuple(_signature(x) for x in leaves))
        graph = self._graphs.get(key)
        if graph is None:
            graph = self._graphs[key] = self._trace(func, leaves, spec, dtype)
        if graph is _NO_DEVICE_WORK:
            return func(*args, **kwargs)
        with torch.autocast("cpu", enabled=False):
            return graph(*tensors)

    def _trace(self, func, leaves, spec, dtype):
        """The aten graph CUDA runs for this call, its devices moved to the CPU."""
        positions = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]
        rule = _REWRITES.get(func, func)

        def call(*tensors):
            filled = list(leaves)
            for i, t in zip(positions, tensors):
                filled[i] = t
            args, kwargs = tree_unflatten(filled, spec)
            if func in _REWRITES:
                return rule(self, *args, **kwargs)
            return rule(*args, **kwargs)

        standins = [
            torch.empty_strided(
                leaves[i].shape, leaves[i].stride(), dtype=leaves[i].dtype, device=CUDA
            )
            for i in positions
        ]
        with _cuda_autocast(dtype):
            graph = make_fx(call)(*standins)
        output = next(n for n in graph.graph.nodes if n.op == "output")
        if not any(isinstance(x, torch.fx.Node) for x in tree_flatten(output.args)[0]):
            return _NO_DEVICE_WORK  # e.g. .size() or .dim(): the call itself answers
        return _on_cpu(graph)

    def _backward(
        self,
        func,
        tensors,
        gradient=None,
        retain_graph=None,
        create_graph=False,
        inputs=None,
        **kwargs,
    ):
        """Tensor.backward / torch.autograd.backward with this mode on while the engine runs.

        A mode is off while its own handler runs, and calling the function from here would run
        the whole backward without it: gradient checkpointing's recomputed forward would then
        follow the CPU's rules (dropout's float noise, the CPU's attention) instead of the
        forward's CUDA ones, save other tensors, and torch.utils.checkpoint refuses the step.
        Calling the function with the mode on would come back here, so the engine is run
        directly, as torch.autograd.backward runs it after its argument checks."""
        gradient = kwargs.pop("grad_tensors", gradient)
        if kwargs:
            raise TypeError(f"{func.__name__}: unexpected arguments {sorted(kwargs)}")
        tensors = (tensors,) if isinstance(tensors, torch.Tensor) else tuple(tensors)
        if inputs is None:
            inputs = ()
        elif isinstance(inputs, torch.Tensor):
            inputs = (inputs,)
        else:
            inputs = tuple(inputs.values() if isinstance(inputs, dict) else inputs)
        with self:
            grads = torch.autograd._make_grads(
                tensors,
                torch.autograd._tensor_or_tensors_to_tuple(gradient, len(tensors)),
                is_grads_batched=False,
            )
            _engine_run_backward(
                tensors,
                grads,
                create_graph if retain_graph is None else retain_graph,
                create_graph,
                inputs,
                allow_unreachable=True,
                accumulate_grad=True,
            )

    def dropout(self, input, p=0.5, training=True, inplace=False):
        """CUDA's dropout is the fused kernel: it keeps a bool mask, not a float noise tensor."""
        if not training or p == 0 or input.numel() == 0:
            return input
        out = torch.native_dropout(input, p, True)[0]
        return input.copy_(out) if inplace else out

    def attention(
        self,
        query,
        key,
        value,
        attn_mask=None,
        dropout_p=0.0,
        is_causal=False,
        scale=None,
        enable_gqa=False,
    ):
        """The backend the target card's SDPA dispatcher would pick (it needs a real device to
        choose, so the choice is made here and the backend's op is called directly)."""
        if torch.is_autocast_enabled("cuda"):  # SDPA is on CUDA autocast's lower-precision list
            low = torch.get_autocast_dtype("cuda")
            query, key, value = (x.to(low) for x in (query, key, value))
        backend = attention_backend(
            self.capability,
            query.dtype,
            query.shape[-1],
            requires_grad=torch.is_grad_enabled(),
            has_mask=attn_mask is not None,
        )
        grad = torch.is_grad_enabled()
        with torch.autocast("cuda", enabled=False):
            if backend == "cudnn":
                return torch.ops.aten._scaled_dot_product_cudnn_attention(
                    query, key, value, attn_mask, grad, dropout_p, is_causal, False, scale=scale
                )[0]
            if backend == "flash":
                return torch.ops.aten._scaled_dot_product_flash_attention(
                    query, key, value, dropout_p, is_causal, False, scale=scale
                )[0]
            if backend == "efficient":
                return torch.ops.aten._scaled_dot_product_efficient_attention(
                    query, key, value, attn_mask, grad, dropout_p, is_causal, scale=scale
                )[0]
            with torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH]):
                return F.scaled_dot_product_attention(
                    query,
                    key,
                    value,
                    attn_mask,
                    dropout_p,
                    is_causal,
                    scale=scale,
                    enable_gqa=enable_gqa,
                )


# Calls whose CUDA form is not what CPU's dispatcher would choose, and the method that gives it.
_REWRITES = {F.dropout: CudaRules.dropout, F.scaled_dot_product_attention: CudaRules.attention}
# Calls that return no tensor computed on a device, or that drive autograd itself.
# Calls that run the autograd engine: run with CudaRules on (CudaRules._backward).
_BACKWARD = {torch.Tensor.backward, torch.autograd.backward}
_DIRECT = {
    torch.autograd.grad,
    torch.Tensor.register_hook,
    torch.Tensor.register_post_accumulate_grad_hook,
}
_ATTRIBUTE_ACCESS = {"__get__", "__set__", "__delete__"}  # .requires_grad, .grad, .dtype, ...
_NO_DEVICE_WORK = object()
_DISTRIBUTED = ("torch.distributed", "torch.nn.parallel")


def _from_distributed() -> bool:
    """Whether torch.distributed made this call: the torch frames above it, up to the first
    frame outside torch (the model's code, the trainer's), include one of torch.distributed or
    torch.nn.parallel."""
    frame = sys._getframe(2)  # the caller of __torch_function__
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith(_DISTRIBUTED):
            return True
        if not (name == "torch" or name.startswith("torch.")):
            return False
        frame = frame.f_back
    return False


def _has_tensor(args, kwargs) -> bool:
    return any(isinstance(x, torch.Tensor) for x in tree_flatten((args, kwargs))[0])


def _signature(leaf):
    if isinstance(leaf, torch.Tensor):
        return ("tensor", tuple(leaf.shape), leaf.stride(), leaf.dtype, leaf.requires_grad)
    try:
        hash(leaf)
        return leaf
    except TypeError:
        return repr(leaf)


@contextlib.contextmanager
def _cuda_autocast(dtype: torch.dtype | None):
    """CUDA autocast on fake CUDA tensors. torch.autocast("cuda") turns itself off when no GPU
    is present, so the autocast state is set directly (and restored)."""
    enabled, previous = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    torch.set_autocast_enabled("cuda", dtype is not None)
    if dtype is not None:
        torch.set_autocast_dtype("cuda", dtype)
    try:
        yield
    finally:
        torch.set_autocast_enabled("cuda", enabled)
        torch.set_autocast_dtype("cuda", previous)


def _on_cpu(graph: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Move every device argument and constant of a traced graph from CUDA to the CPU."""

    def move(x):
        if isinstance(x, torch.device) and x.type == "cuda":
            return CPU
        return x

    for node in graph.graph.nodes:
        node.args = tree_map(move, node.args)
        node.kwargs = tree_map(move, node.kwargs)
        if node.op == "get_attr":
            value = getattr(graph, node.target)
            if isinstance(value, torch.Tensor) and value.device.type == "cuda":
                setattr(graph, node.target, value.to(CPU))
    graph.recompile()
    return graph
