"""What one traced step launches on a CUDA card: the kernels each aten op runs there, with the
shapes, FLOPs and bytes the step-time model (bench.predict.step_time) costs them by.

A dispatch mode (KernelRecorder) sits innermost during the trace (bench.predict.runtime), so it
sees every aten op the step dispatches, in order, before fake tensors answer it. An op that
torch computes by decomposition (CompositeImplicitAutograd: conv2d, linear, group_norm, matmul,
einsum, scaled_dot_product_attention...) is decomposed here first, as torch's FlopCounterMode
does, so every convolution, matmul and attention reaches the FLOP registry whatever mode the
step runs in (inference mode hands these ops over undecomposed). Each op then becomes the CUDA
kernels it launches:

  - a convolution: one implicit GEMM (batch = groups, M = output pixels, N = output channels,
    K = input channels x kernel taps) and, where it has a bias, one more kernel that adds it to
    the output (cuDNN takes no bias: aten/src/ATen/native/Convolution.cpp adds it with add_);
    its backward: the data-gradient GEMM, the weight-gradient GEMM (K = output pixels) and the
    bias gradient (a sum over the output gradient), each as output_mask asks;
  - a half-precision convolution on tensor cores over NCHW tensors: cuDNN's fastest kernels
    take NHWC, so it transposes the operands in and the result out (NVIDIA, "Convolutional
    Layers User's Guide", Tensor Layouts In Memory: NCHW vs NHWC);
  - mm, addmm, bmm, baddbmm and the attention kernels: one GEMM each (attention: batch x heads
    tiles over the query rows);
  - group_norm: one pass over the input for its statistics before the pass that normalises it,
    and in backward one pass over the gradient and the input before the pass that writes the
    input's gradient (aten/src/ATen/native/cuda/group_norm_kernel.cu);
  - a foreach or fused multi-tensor op (AdamW, the EMA, GradScaler's unscale): the launches of
    aten/src/ATen/native/cuda/MultiTensorApply.cuh, which packs chunks of 65,536 elements,
    at most 320 blocks and a depth-dependent number of tensors per launch;
  - every other op: one kernel that reads its inputs and writes its outputs once.

Three more things a step does are recorded in their place: a collective (a c10d op, or DDP's
bucket all-reduce through its comm hook), a host-device synchronisation (`.item()`: GradScaler's
scale, a loss read), and the host's own dispatch of every aten op, views included.

Host memory (the EMA's shadow under --ema cpu) is traced on the meta device (HOST): an op with
tensors on both sides is a blocking copy over the card's PCIe link of its card-side bytes (a
blocking copy converts dtypes on the CPU: aten/src/ATen/native/cuda/Copy.cu,
copy_requires_temporaries, so a conversion is host work after it), and an op on host tensors
alone is the host's own memory traffic."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, replace
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from bench.measure.flops import CPU_ATTENTION

aten = torch.ops.aten

FLOPS = {**flop_registry, **CPU_ATTENTION}
CONVOLUTION = {aten.convolution, aten._convolution, aten.convolution_backward}
MATMUL = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm}
# Ops that allocate, alias or describe tensors but launch nothing on the card.
NO_KERNEL = {
    aten.empty,
    aten.empty_like,
    aten.empty_strided,
    aten.new_empty,
    aten.new_empty_strided,
    aten._unsafe_view,
    aten.lift_fresh,
    aten.detach,
}
FUSED_ADAM = {aten._fused_adam_, aten._fused_adamw_}
# MultiTensorApply.cuh: kChunkSize, depth_to_max_tensors, depth_to_max_blocks.
CHUNK = 65_536
MAX_TENSORS = {1: 110, 2: 64, 3: 48, 4: 36, 5: 30}
MAX_BLOCKS = 320
# c10d ops and the share of their message that a ring moves per rank is the step model's; here,
# which ones the compute stream waits for at once (all but reduce-scatters: those join, like
# DDP's bucket all-reduces, when the backward ends).
COLLECTIVES = {
    "allreduce_": "all_reduce",
    "allreduce_coalesced_": "all_reduce",
    "broadcast_": "broadcast",
    "allgather_": "all_gather",
    "_allgather_base_": "all_gather",
    "allgather_into_tensor_coalesced_": "all_gather",
    "reduce_scatter_": "reduce_scatter",
    "_reduce_scatter_base_": "reduce_scatter",
    "reduce_scatter_tensor_coalesced_": "reduce_scatter",
}


HOST = "meta"  # the device host memory is traced on


@dataclass(frozen=True)
class Kernel:
    """One thing the step does on the card or the host, in program order.

    kind: "conv", "matmul" or "attention" (a GEMM: `gemm` is (batch, M, N, K)), "memory"
    (reads and writes `bytes`), "collective" (a message of `bytes` across the ranks), "join"
    (the compute stream waits for the collectives issued so far), "sync" (the host waits for
    the card), "to_host" (a blocking copy of `bytes` from the card to host memory over PCIe),
    "host_memory" (the host's CPU reads and writes `bytes` of host memory) or "host" (dispatch
    only: a view, an allocation)."""

    op: str
    kind: str
    flops: int = 0
    bytes: int = 0
    dtype: torch.dtype = torch.float32  # the dtype its math runs in
    launches: int = 1
    gemm: tuple[int, int, int, int] | None = None
    host_ops: int = 0  # aten ops the host dispatches for it
    engine: bool = False  # dispatched by autograd's engine (backward), not by Python code
    waits: bool = False  # a collective the compute stream waits for at once
    # A kernel CUDA's implementation adds beyond the op's own read and write (a bias add, a
    # layout transpose, a statistics pass): the step model's ablation can leave these out.
    beyond_aten: bool = False


def _bytes(t: torch.Tensor) -> int:
    """Bytes a kernel touches in a tensor: broadcast (stride-0) dimensions read once, as torch's
    own estimator counts them (torch.utils._runtime_estimation.get_num_bytes)."""
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size()


def _tensors(x) -> list[torch.Tensor]:
    return [t for t in tree_flatten(x)[0] if isinstance(t, torch.Tensor)]


def multi_tensor_launches(numels: list[int], depth: int) -> int:
    """Kernel launches of one multi_tensor_apply over tensors of these sizes (MultiTensorApply.cuh:
    a launch when the pack holds its most tensors, at a tensor's last chunk, or its most blocks;
    a tensor cut by a full pack goes on in the next)."""
    max_tensors = MAX_TENSORS[min(max(depth, 1), 5)]
    sizes = [n for n in numels if n > 0]
    launches = tensors = blocks = 0
    for i, numel in enumerate(sizes):
        tensors += 1
        chunks = math.ceil(numel / CHUNK)
        for c in range(chunks):
            blocks += 1
            last_chunk = c == chunks - 1
            full = (tensors == max_tensors and last_chunk) or blocks == MAX_BLOCKS
            if full or (last_chunk and i == len(sizes) - 1):
                launches += 1
                blocks = 0
                tensors = 0 if last_chunk else 1
    return launches


def conv_kernels(func, args, kwargs, out, dtype, tensor_cores: bool) -> list[Kernel]:
    """A convolution or its backward as the GEMMs and the bias kernels CUDA runs (their FLOPs
    are the registry's: a backward's two GEMMs each as many as the forward)."""
    packet = func._overloadpacket
    bound = dict(zip((a.name for a in func._schema.arguments), args)) | kwargs
    groups = int(bound.get("groups", 1))
    weight = bound["weight"]
    taps = math.prod(weight.shape[2:])
    # A transposed convolution's forward is a convolution's data gradient, and back.
    c_out, c_in = weight.shape[0] // groups, weight.shape[1]
    if bound.get("transposed"):
        c_out, c_in = c_in, c_out
    transposes = tensor_cores and dtype in (torch.float16, torch.bfloat16)
    flops = int(FLOPS[packet](*args, **kwargs, out_val=out))
    found = []
    if packet is not aten.convolution_backward:
        x, y, bias = bound["input"], out, bound.get("bias")
        pixels = y.shape[0] * math.prod(y.shape[2:])
        moved = _bytes(x) + _bytes(weight) + _bytes(y)
        found.append(
            Kernel(
                "convolution",
                "conv",
                flops,
                moved,
                dtype,
                gemm=(groups, pixels, c_out, c_in * taps),
            )
        )
        if bias is not None:
            found.append(
                Kernel(
                    "convolution_bias",
                    "memory",
                    0,
                    2 * _bytes(y) + _bytes(bias),
                    dtype,
                    beyond_aten=True,
                )
            )
        if transposes and not _channels_last(x):
            found.append(_transposes("convolution", x, y, dtype))
        return found
    dy, x = bound["grad_output"], bound["input"]
    dx, dw, db = (out[i] if bound["output_mask"][i] else None for i in range(3))
    out_pixels = dy.shape[0] * math.prod(dy.shape[2:])
    in_pixels = x.shape[0] * math.prod(x.shape[2:])
    gemms = [
        ("data", dx, (groups, in_pixels, c_in, c_out * taps), _bytes(dy) + _bytes(weight), dy),
        ("weight", dw, (groups, c_out, c_in * taps, out_pixels), _bytes(dy) + _bytes(x), x),
    ]
    wanted = [g for g in gemms if g[1] is not None]
    for what, grad, gemm, read, operand in wanted:
        name = f"convolution_backward_{what}"
        moved = read + _bytes(grad)
        found.append(Kernel(name, "conv", flops // len(wanted), moved, dtype, gemm=gemm))
        if transposes and not _channels_last(x):
            found.append(_transposes(name, operand, grad if what == "data" else dy, dtype))
    if db is not None:
        found.append(
            Kernel("convolution_backward_bias", "memory", 0, _bytes(dy) + _bytes(db), dtype)
        )
    return found


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def _transposes(name: str, a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> Kernel:
    """cuDNN's NCHW <-> NHWC copies around a half-precision tensor-core convolution: each of
    the two activation operands read and written once."""
    moved = 2 * (_bytes(a) + _bytes(b))
    return Kernel(
        f"{name}_nhwc_transposes", "memory", 0, moved, dtype, launches=2, beyond_aten=True
    )


def gemm_kernel(func, args, kwargs, out, dtype) -> Kernel:
    """mm, addmm, bmm, baddbmm: one GEMM."""
    packet = func._overloadpacket
    a, b = (args[1], args[2]) if packet in (aten.addmm, aten.baddbmm) else (args[0], args[1])
    batch = a.shape[0] if a.dim() == 3 else 1
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    flops = int(FLOPS[packet](*args, **kwargs, out_val=out))
    moved = sum(_bytes(t) for t in _tensors((args, kwargs)) + _tensors(out))
    return Kernel(
        str(packet).removeprefix("aten."), "matmul", flops, moved, dtype, gemm=(batch, m, n, k)
    )


def attention_kernel(func, args, kwargs, out, dtype) -> Kernel:
    """A fused attention kernel, forward or backward: its CTAs tile batch x heads x query rows
    (M = queries, N = the value width, K = keys)."""
    packet = func._overloadpacket
    backward = "backward" in packet.__name__
    q, k, v = args[1:4] if backward else args[0:3]
    batch = math.prod(q.shape[:-2])
    flops = int(FLOPS[packet](*args, **kwargs, out_val=out))
    moved = sum(_bytes(t) for t in _tensors((args, kwargs)) + _tensors(out))
    gemm = (batch, q.shape[-2], v.shape[-1], k.shape[-2])
    return Kernel(str(packet).removeprefix("aten."), "attention", flops, moved, dtype, gemm=gemm)


def _is_attention(packet) -> bool:
    name = packet.__name__
    return packet in FLOPS and ("attention" in name) and packet not in MATMUL


class KernelRecorder(TorchDispatchMode):
    """Records the kernels of each aten op while `on` is set (see the module's docstring).

    `capability` is the target card's: it decides whether half-precision convolutions run on
    tensor cores (7.0 on; bf16 from 8.0). Ops on CUDA stand-ins are CudaRules tracing a call
    (it replays the traced graph on the step's own fake CPU tensors, which are recorded), so
    they are skipped. `.item()` on a fake tensor, which has no value, answers `item_value` here
    (0 by default: GradScaler's scale read, a found-inf sum: the steady state's no-overflow step;
    1 inside an optimizer step that divides by the norms it reads, bench.predict.optimizer_update)
    and is recorded as a synchronisation."""

    def __init__(self, capability: tuple[int, int] = (8, 6)):
        super().__init__()
        self.capability = capability
        self.kernels: list[Kernel] = []
        self.on = False
        self.item_value = 0
        self._in_backward = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default and _valueless(args[0]):
            if self.on:
                self._add([Kernel("item", "sync", launches=0)], engine=False)
            return bool(self.item_value) if args[0].dtype == torch.bool else self.item_value
        if _decomposed_on_cuda(func):
            with self:
                decomposed = func.decompose(*args, **kwargs)
            if decomposed is not NotImplemented:
                return decomposed
        out = func(*args, **kwargs)
        if self.on:
            self.record(func, args, kwargs, out)
        return out

    def collective(self, op: str, nbytes: int, waits: bool) -> None:
        """A collective issued outside the dispatcher (DDP's bucket all-reduce, by its hook)."""
        if self.on:
            kernel = Kernel(op, "collective", 0, nbytes, launches=1, waits=waits)
            self._add([kernel], engine=torch._C._current_graph_task_id() != -1)

    def extend(self, kernels: list[Kernel]) -> None:
        """Kernels the step launches outside the dispatcher (a modelled optimizer's update,
        bench.predict.optimizer_update), in their place."""
        if self.on:
            self.kernels.extend(kernels)

    def record(self, func, args, kwargs, out) -> None:
        engine = torch._C._current_graph_task_id() != -1
        if self._in_backward and not engine:
            # Leaving the backward: DDP's finalize (and FSDP's) waits for the exchanges here.
            self.kernels.append(Kernel("backward_end", "join", launches=0))
        self._in_backward = engine
        inputs = _tensors((args, kwargs))
        outputs = _tensors(out)
        if func.namespace == "prim" or any(t.device.type == "cuda" for t in inputs + outputs):
            return  # fake tensors' own queries (prim.device); CudaRules tracing a call
        if func.namespace == "c10d":
            self._add([self._collective(func, args)], engine)
            return
        packet = func._overloadpacket
        if func.namespace != "aten" or func.is_view or packet in NO_KERNEL:
            self._add([Kernel(packet.__name__, "host", launches=0)], engine)
            return
        if any(t.device.type == HOST for t in inputs + outputs):
            self._add(host_kernels(func, args, kwargs, inputs, outputs), engine)
            return
        self._add(self.kernels_of(func, args, kwargs, out, inputs, outputs), engine)

    def _add(self, kernels: list[Kernel], engine: bool) -> None:
        """One op's kernels; the host dispatches the op once, before the first."""
        first, *rest = kernels
        self.kernels.append(replace(first, host_ops=1, engine=engine))
        self.kernels.extend(replace(k, engine=engine) for k in rest)

    def _collective(self, func, args) -> Kernel:
        name = func._overloadpacket.__name__
        op = COLLECTIVES.get(name, name)
        message = max((sum(_bytes(t) for t in _tensors(a)) for a in args), default=0)
        return Kernel(op, "collective", 0, message, waits=op != "reduce_scatter")

    def kernels_of(self, func, args, kwargs, out, inputs, outputs) -> list[Kernel]:
        packet = func._overloadpacket
        floating = [t.dtype for t in inputs if t.is_floating_point()]
        dtype = floating[0] if floating else torch.float32
        if packet in CONVOLUTION:
            tensor_cores = self.capability >= ((8, 0) if dtype == torch.bfloat16 else (7, 0))
            return conv_kernels(func, args, kwargs, out, dtype, tensor_cores)
        if packet in MATMUL:
            return [gemm_kernel(func, args, kwargs, out, dtype)]
        if _is_attention(packet):
            return [attention_kernel(func, args, kwargs, out, dtype)]
        if not outputs:  # in place with no return (fused AdamW, foreach): it writes its args
            outputs = _written(func, args, kwargs)
        moved = sum(_bytes(t) for t in inputs + outputs)
        launches = 1
        name = packet.__name__
        found = []
        if packet is aten.native_group_norm:  # the statistics pass (and its tiny follow-up)
            found.append(
                Kernel(f"{name}_moments", "memory", 0, _bytes(args[0]), dtype, 2, beyond_aten=True)
            )
        elif packet is aten.native_group_norm_backward:  # the sums over dY and dY * X
            read = _bytes(args[0]) + _bytes(args[1])
            found.append(Kernel(f"{name}_sums", "memory", 0, read, dtype, 2, beyond_aten=True))
        elif name.startswith(("_foreach_", "_fused_", "_amp_foreach")):
            lists = [a for a in args if isinstance(a, (list, tuple)) and _tensors(a)]
            depth = len(lists) + (1 if _tensors(out) else 0)
            launches = multi_tensor_launches([t.numel() for t in _tensors(lists[0])], depth)
            launches += name == "_foreach_norm"  # the per-tensor norms' cleanup kernel
        return found + [Kernel(name, "memory", 0, moved, dtype, launches=launches)]


def host_kernels(func, args, kwargs, inputs, outputs) -> list[Kernel]:
    """An op that touches host memory (HOST): the blocking copies of its card-side tensors to
    the host, one per tensor (a foreach copy across devices copies tensor by tensor), then the
    host's pass over its host-side tensors (all of them where the op runs on the host alone; the
    conversion where a copy changes the dtype)."""
    if not outputs:  # in place (a foreach lerp or copy): it writes its args
        outputs = _written(func, args, kwargs)
    tensors = list({id(t): t for t in inputs + outputs}.values())
    card = [t for t in tensors if t.device.type != HOST]
    host = [t for t in tensors if t.device.type == HOST]
    name = func._overloadpacket.__name__
    found = []
    if card:
        moved = sum(_bytes(t) for t in card)
        found.append(Kernel(f"{name}_to_host", "to_host", 0, moved, launches=len(card)))
        converts = {t.dtype for t in card} != {t.dtype for t in host}
        if converts:  # the staging copy read and the host tensor written
            host_moved = moved + sum(_bytes(t) for t in host)
            found.append(Kernel(f"{name}_convert", "host_memory", 0, host_moved, launches=0))
    else:
        moved = sum(_bytes(t) for t in inputs + outputs)
        found.append(Kernel(name, "host_memory", 0, moved, launches=0))
    return found


def _written(func, args, kwargs) -> list[torch.Tensor]:
    """The arguments an in-place op with no return writes (its schema's write aliases). Fused
    AdamW's schema may write its gradients, which it does only to unscale them."""
    written = [a.name for a in func._schema.arguments if a.alias_info and a.alias_info.is_write]
    if func._overloadpacket in FUSED_ADAM and kwargs.get("grad_scale") is None:
        written = [w for w in written if w != "grads"]
    found = [t for n in written for t in _tensors(kwargs.get(n))]
    found += [
        t for a, v in zip(func._schema.arguments, args) if a.name in written for t in _tensors(v)
    ]
    return found


def _decomposed_on_cuda(func) -> bool:
    """Whether CUDA runs this op as its decomposition: it has one (CompositeImplicitAutograd)
    and no CUDA kernel of its own (conv2d, linear, group_norm, matmul, SDPA do; silu_backward,
    whose decomposition is only a fallback, does not)."""
    if func._overloadpacket in FLOPS or func.namespace != "aten":
        return False
    name = func.name()
    has = torch._C._dispatch_has_kernel_for_dispatch_key
    return has(name, "CompositeImplicitAutograd") and not has(name, "CUDA")


def _valueless(t) -> bool:
    """A fake tensor with no value; under FSDP2, a DTensor whose shard is one."""
    if isinstance(t, DTensor):
        t = t._local_tensor
    return isinstance(t, FakeTensor) and t.constant is None


@contextlib.contextmanager
def cuda_optimizer_defaults() -> Iterator[None]:
    """torch.optim's defaults as on CUDA: an optimizer given neither foreach nor fused steps
    with the foreach kernels there, but takes the per-parameter loop for fake (or CPU) tensors;
    under this block it takes the foreach kernels, as the card would run it."""
    import torch.optim.optimizer as optimizer
    import torch.utils._foreach_utils as foreach_utils

    types = [*optimizer._foreach_supported_types, FakeTensor]
    with (
        mock.patch.object(optimizer, "_foreach_supported_types", types),
        mock.patch.object(foreach_utils, "_foreach_supported_types", types),
        mock.patch.object(
            optimizer, "_get_foreach_kernels_supported_devices", lambda: ["cuda", "cpu"]
        ),
    ):
        yield
