"""A pure-Python model of PyTorch's CUDA caching allocator (the native backend, one stream), and
the sizes of the cuBLAS / cuBLASLt workspaces that ATen allocates through it.

Replaying a program's allocations and frees through `CachingAllocatorModel` gives the numbers
`torch.cuda.memory_stats()` reports as allocated_bytes.all and reserved_bytes.all (current and
peak), without a GPU. The rules follow c10/cuda/CUDACachingAllocator.cpp (read at pytorch/pytorch
001074d2, and in a recent fork, DustyL/pytorch 023bca65, that has the configurable large segment
of torch 2.14.1) with the constants of c10/core/AllocatorConfig.h as installed with torch 2.14.1;
the function named with each rule is the one in that file that applies it:

- Rounding (`round_size`): a request is rounded up to a multiple of 512 B (kMinBlockSize), so
  1 B takes 512 B. (roundup_power2_divisions, off by default, is not modelled.)
- Pools (`get_pool`): rounded sizes up to 1 MiB (kSmallSize) use the small pool, larger ones
  the large pool. A free block only serves requests of its own pool.
- New segments (`get_allocation_size`): when no free block fits, cudaMalloc gets 2 MiB
  (kSmallBuffer) for the small pool, 20 MiB (kLargeBuffer; `large_segment_size_mb`) for sizes
  under 10 MiB (kMinLargeAlloc), and the size rounded up to 2 MiB (kRoundLarge) from 10 MiB on.
- Best fit (`get_free_block`): the free block of the pool with the smallest size >= the
  request, ties broken by the lowest address (BlockComparatorSize).
- Splitting (`should_split`, `alloc_found_block`): the block is split when the remainder is
  >= 512 B in the small pool, or > 1 MiB in the large pool; otherwise the whole block is handed
  out and allocated_bytes counts all of it (stats count block sizes, not requests).
- Freeing (`free_block`, `try_merge_blocks`): a freed block merges with free neighbours of its
  segment. Segments are never returned to CUDA here: release happens only on cudaMalloc failure
  or empty_cache, and this model has no device capacity and no empty_cache.
- Expandable segments (`expandable_segments:True`; `find_expandable_block`, `map_block`,
  `try_allocate_expandable_block`): each pool has one segment per stream whose mapped size
  grows at its end in pages of 2 MiB (small pool) or 20 MiB (large pool; `large_segment_size`).
  A request no free block fits extends the free block at the end of the mapped range (if any)
  by just enough whole pages. The large pool then splits any remainder >= 512 B, like the
  small pool. Best fit ranks a block that borders unmapped space by its size plus that space,
  so it is chosen only when no other free block fits. reserved_bytes is the mapped size.
- max_split_size_mb (off by default): blocks of at least that size are never split, a request
  below it never takes one, and a request at or above it takes a free block only if the block
  is less than max_non_split_rounding_mb (default: the large segment size) larger.

Segment addresses are modelled as increasing in creation order; real cudaMalloc addresses
differ, which only changes which of two equally sized free blocks a request takes.
"""

from __future__ import annotations

import bisect
import re
import warnings
from collections.abc import Hashable, Iterable

KiB = 1024
MiB = 1024 * KiB

MIN_BLOCK_SIZE = 512  # kMinBlockSize
SMALL_SIZE = 1 * MiB  # kSmallSize: largest request of the small pool
SMALL_BUFFER = 2 * MiB  # kSmallBuffer: small-pool segment, and small-pool expandable page
MIN_LARGE_ALLOC = 10 * MiB  # kMinLargeAlloc: from here on a request gets its own segment
ROUND_LARGE = 2 * MiB  # kRoundLarge
LARGE_BUFFER = 20 * MiB  # kLargeBuffer: default large_segment_size

_NO_LIMIT = 2**64 - 1  # max_split_size when unset (std::numeric_limits<size_t>::max())
_ADDRESS_SPACE = 2**48  # virtual space of one expandable segment: more than any GPU maps


def round_size(nbytes: int) -> int:
    """The block size a request of nbytes (> 0) occupies."""
    return max(MIN_BLOCK_SIZE, -(-nbytes // MIN_BLOCK_SIZE) * MIN_BLOCK_SIZE)


def allocation_size(size: int, large_segment_size: int = LARGE_BUFFER) -> int:
    """The cudaMalloc size of a new segment for a rounded request of `size` bytes."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return large_segment_size
    return -(-size // ROUND_LARGE) * ROUND_LARGE


class _Block:
    """A run of bytes in one segment: allocated, free, or (expandable only) unmapped."""

    __slots__ = ("addr", "size", "small", "allocated", "mapped", "prev", "next")

    def __init__(self, addr: int, size: int, small: bool, mapped: bool = True):
        self.addr = addr
        self.size = size
        self.small = small
        self.allocated = False
        self.mapped = mapped
        self.prev: _Block | None = None
        self.next: _Block | None = None


def _link_before(new: _Block, block: _Block) -> None:
    """Put `new` just in front of `block` in its segment's address-ordered list."""
    new.prev, new.next = block.prev, block
    if block.prev is not None:
        block.prev.next = new
    block.prev = new


class CachingAllocatorModel:
    """PyTorch's CUDA caching allocator on one stream, as byte counts (see the module docstring).

    allocated, reserved, peak_allocated and peak_reserved are the all-pool current and peak
    allocated_bytes / reserved_bytes of torch.cuda.memory_stats().
    """

    def __init__(
        self,
        expandable_segments: bool = False,
        *,
        max_split_size_mb: int | None = None,
        max_non_split_rounding_mb: int | None = None,
        large_segment_size_mb: int = 20,
        backend: str = "native",
    ):
        if backend != "native":
            raise ValueError(
                f"The model covers the native caching allocator only, not backend:{backend}."
            )
        if max_non_split_rounding_mb is None:
            # AcceleratorAllocatorConfig::parseArgs defaults it to the large segment size.
            max_non_split_rounding_mb = large_segment_size_mb
        _check_sizes(max_split_size_mb, max_non_split_rounding_mb, large_segment_size_mb)
        self.expandable_segments = expandable_segments
        self.max_split_size = _NO_LIMIT if max_split_size_mb is None else max_split_size_mb * MiB
        self.max_non_split_rounding_size = max_non_split_rounding_mb * MiB
        self.large_segment_size = large_segment_size_mb * MiB
        self.allocated = 0
        self.reserved = 0
        self.peak_allocated = 0
        self.peak_reserved = 0
        # Free mapped blocks per pool (key: is-small), as a sorted list of (size, addr).
        self._free: dict[bool, list[tuple[int, int]]] = {True: [], False: []}
        self._free_blocks: dict[int, _Block] = {}  # addr -> free block
        self._live: dict[int, _Block | None] = {}  # handle -> allocated block (None for 0 B)
        self._tails: dict[bool, _Block] = {}  # is-small -> unmapped end of its expandable segment
        self._next_handle = 0
        self._next_addr = 2**40  # where the next segment starts

    # -- public API ---------------------------------------------------------------------------

    def malloc(self, nbytes: int) -> int:
        """Allocate nbytes and return a handle for `free`; 0 bytes allocate nothing."""
        if nbytes < 0:
            raise ValueError(f"Cannot allocate a negative number of bytes ({nbytes}).")
        handle = self._next_handle
        self._next_handle += 1
        if nbytes == 0:
            # torch's allocate(0) returns a null pointer and touches no block.
            self._live[handle] = None
            return handle
        size = round_size(nbytes)
        small = size <= SMALL_SIZE
        block = self._take_free_block(small, size)
        if block is None and self.expandable_segments:
            block = self._grow(small, size)
        elif block is None:
            block = self._segment(small, size)
        if self._should_split(block, size):
            block = self._split(block, size)
        block.allocated = True
        self.allocated += block.size
        self.peak_allocated = max(self.peak_allocated, self.allocated)
        self._live[handle] = block
        return handle

    def free(self, handle: int) -> None:
        """Free the block behind a handle from `malloc`."""
        if handle not in self._live:
            raise ValueError(f"Handle {handle} is not allocated (never returned, or freed).")
        block = self._live.pop(handle)
        if block is None:
            return
        block.allocated = False
        self.allocated -= block.size
        # Free neighbours in the same segment merge; unmapped space never merges with mapped.
        for neighbour in (block.prev, block.next):
            if neighbour is not None and not neighbour.allocated and neighbour.mapped:
                self._unlist(neighbour)
                self._merge(block, neighbour)
        self._list(block)

    def reset_peaks(self) -> None:
        """Like torch.cuda.reset_peak_memory_stats: each peak becomes its current value."""
        self.peak_allocated = self.allocated
        self.peak_reserved = self.reserved

    def address(self, handle: int) -> int:
        """The modelled device address of a live allocation (0 for a 0-byte one)."""
        block = self._live[handle]
        return 0 if block is None else block.addr

    # -- internals ----------------------------------------------------------------------------

    def _take_free_block(self, small: bool, size: int) -> _Block | None:
        """get_free_block: best fit in the pool, under the max_split_size rules."""
        free = self._free[small]
        i = bisect.bisect_left(free, (size, -1))
        if i == len(free):
            return None
        if self.expandable_segments:
            # A block bordering unmapped space counts as its size plus that space.
            while i + 1 < len(free) and self._reach(free[i + 1]) < self._reach(free[i]):
                i += 1
        found = free[i][0]
        # Oversize blocks serve only oversize requests, and only with bounded waste.
        if size < self.max_split_size <= found:
            return None
        if size >= self.max_split_size and found >= size + self.max_non_split_rounding_size:
            return None
        addr = free.pop(i)[1]
        return self._free_blocks.pop(addr)

    def _reach(self, entry: tuple[int, int]) -> int:
        """A free block's size plus the unmapped space right after it (expandable best fit)."""
        block = self._free_blocks[entry[1]]
        after = block.next
        return block.size + (after.size if after is not None and not after.mapped else 0)

    def _segment(self, small: bool, size: int) -> _Block:
        """alloc_block: cudaMalloc a new segment sized for the request."""
        nbytes = allocation_size(size, self.large_segment_size)
        block = _Block(self._next_addr, nbytes, small)
        self._next_addr += nbytes
        self._add_reserved(nbytes)
        return block

    def _grow(self, small: bool, size: int) -> _Block:
        """try_allocate_expandable_block: map whole pages at the end of the pool's segment."""
        tail = self._tails.get(small)
        if tail is None:
            # The first request of a pool reserves its address space, all of it unmapped.
            tail = _Block(self._next_addr, _ADDRESS_SPACE, small, mapped=False)
            self._next_addr += _ADDRESS_SPACE
            self._tails[small] = tail
        page = SMALL_BUFFER if small else self.large_segment_size
        # A free block just before the unmapped space is extended rather than left behind.
        block = tail.prev
        if block is not None and not block.allocated:
            self._unlist(block)
            missing = size - block.size
        else:
            block = None
            missing = size
        if missing > 0:
            nbytes = -(-missing // page) * page
            mapped = _Block(tail.addr, nbytes, small)
            _link_before(mapped, tail)
            tail.addr += nbytes
            tail.size -= nbytes
            self._add_reserved(nbytes)
            if block is not None:
                self._merge(mapped, block)
            block = mapped
        return block

    def _should_split(self, block: _Block, size: int) -> bool:
        remaining = block.size - size
        if block.small or self.expandable_segments:
            return remaining >= MIN_BLOCK_SIZE
        return size < self.max_split_size and remaining > SMALL_SIZE

    def _split(self, block: _Block, size: int) -> _Block:
        """alloc_found_block: the front `size` bytes are handed out, the rest stays free."""
        front = _Block(block.addr, size, block.small)
        _link_before(front, block)
        block.addr += size
        block.size -= size
        self._list(block)
        return front

    def _merge(self, block: _Block, other: _Block) -> None:
        """try_merge_blocks: `block` absorbs its neighbour `other`."""
        if other is block.prev:
            block.addr = other.addr
            block.prev = other.prev
            if block.prev is not None:
                block.prev.next = block
        else:
            block.next = other.next
            if block.next is not None:
                block.next.prev = block
        block.size += other.size

    def _list(self, block: _Block) -> None:
        bisect.insort(self._free[block.small], (block.size, block.addr))
        self._free_blocks[block.addr] = block

    def _unlist(self, block: _Block) -> None:
        free = self._free[block.small]
        del free[bisect.bisect_left(free, (block.size, block.addr))]
        del self._free_blocks[block.addr]

    def _add_reserved(self, nbytes: int) -> None:
        self.reserved += nbytes
        self.peak_reserved = max(self.peak_reserved, self.reserved)


def replay(
    events: Iterable[tuple], expandable_segments: bool = False, **options
) -> CachingAllocatorModel:
    """Run ("alloc", key, nbytes), ("free", key) and ("reset",) events (the last one is
    reset_peak_memory_stats), in program order, through a model.

    Keys are any hashable names for the allocations; options are the model's keyword arguments
    (so `replay(events, **parse_alloc_conf(text))` replays under a PYTORCH_CUDA_ALLOC_CONF).
    """
    model = CachingAllocatorModel(expandable_segments, **options)
    handles: dict[Hashable, int] = {}
    for event in events:
        if event[0] == "alloc":
            _, key, nbytes = event
            if key in handles:
                raise ValueError(f"Key {key!r} is allocated again before it is freed.")
            handles[key] = model.malloc(nbytes)
        elif event[0] == "free":
            _, key = event
            if key not in handles:
                raise ValueError(f"Key {key!r} is freed but not allocated.")
            model.free(handles.pop(key))
        elif event == ("reset",):
            model.reset_peaks()
        else:
            raise ValueError(f"Event {event!r} is neither an alloc, a free nor a reset.")
    return model


# PYTORCH_CUDA_ALLOC_CONF keys torch 2.14.1 accepts (c10/core/AllocatorConfig and
# c10/cuda/CUDAAllocatorConfig.h getKeys); any other key makes torch raise "Unrecognized key".
_BOOL_KEYS = {
    "expandable_segments",
    "pinned_use_background_threads",
    "release_lock_on_cudamalloc",
    "release_lock_on_hipmalloc",
    "pinned_use_cuda_host_register",
    "pinned_use_hip_host_register",
    "graph_capture_record_stream_reuse",
    "pinned_free_catch_all",
    "throw_on_cudamalloc_oom",
}
_MB_KEYS = {"max_split_size_mb", "max_non_split_rounding_mb", "large_segment_size_mb"}
_OTHER_KEYS = {
    "backend",
    "garbage_collection_threshold",
    "roundup_power2_divisions",
    "pinned_max_round_threshold_mb",
    "pinned_max_cached_size_mb",
    "pinned_reserve_segment_size_mb",
    "pinned_num_register_threads",
    "per_process_memory_fraction",
}
_KEYS = _BOOL_KEYS | _MB_KEYS | _OTHER_KEYS


def parse_alloc_conf(text: str | None) -> dict:
    """PYTORCH_CUDA_ALLOC_CONF -> the model's keyword arguments.

    Returns {"expandable_segments", "max_split_size_mb", "max_non_split_rounding_mb",
    "large_segment_size_mb", "backend"}, with torch's defaults for keys not given (20 MiB large
    segments, max_non_split_rounding_mb equal to them, no max_split_size_mb).

    As in torch 2.14.1 (AcceleratorAllocatorConfig::parseArgs and ConfigTokenizer): the text is
    comma-separated key:value pairs, whitespace ignored, lists in [...]; booleans are exactly
    True or False; a key torch does not know raises ValueError, because torch raises too;
    keys torch knows but the model does not use (pinned_*, garbage_collection_threshold,
    roundup_power2_divisions, ...) need a value and are otherwise ignored; max_split_size_mb
    and max_non_split_rounding_mb must be at least large_segment_size_mb, which must be over
    10. Malformed text raises ValueError.
    """
    conf: dict = {
        "expandable_segments": False,
        "max_split_size_mb": None,
        "max_non_split_rounding_mb": None,
        "large_segment_size_mb": 20,
        "backend": "native",
    }
    # torch's ConfigTokenizer: separators , : [ ] are tokens and whitespace is dropped.
    tokens = re.findall(r"[,:\[\]]|[^,:\[\]]+", "".join((text or "").split()))
    i = 0
    while i < len(tokens):
        key = tokens[i]
        if key not in _KEYS:
            raise ValueError(f"PYTORCH_CUDA_ALLOC_CONF has an unrecognized key {key!r}.")
        if i + 2 >= len(tokens) or tokens[i + 1] != ":" or tokens[i + 2] in ",:]":
            raise ValueError(f"PYTORCH_CUDA_ALLOC_CONF key {key!r} needs a ':value' after it.")
        value = tokens[i + 2]
        i += 3
        if value == "[":
            if key != "roundup_power2_divisions" or "]" not in tokens[i:]:
                raise ValueError(f"PYTORCH_CUDA_ALLOC_CONF key {key!r} has a malformed list.")
            i = tokens.index("]", i) + 1
        elif key in _BOOL_KEYS:
            if value not in ("True", "False"):
                raise ValueError(f"PYTORCH_CUDA_ALLOC_CONF {key} must be True or False.")
            if key == "expandable_segments":
                conf[key] = value == "True"
        elif key in _MB_KEYS:
            if not re.fullmatch(r"[0-9]+", value):
                raise ValueError(f"PYTORCH_CUDA_ALLOC_CONF {key} must be a whole number of MB.")
            conf[key] = int(value)
        elif key == "backend":
            if value not in ("native", "cudaMallocAsync"):
                raise ValueError(
                    "PYTORCH_CUDA_ALLOC_CONF backend must be native or cudaMallocAsync."
                )
            conf[key] = value
        if i < len(tokens):
            if tokens[i] != ",":
                raise ValueError(f"PYTORCH_CUDA_ALLOC_CONF expects a ',' after {key}:{value}.")
            i += 1
    if conf["max_non_split_rounding_mb"] is None:
        # Unset, it follows large_segment_size_mb (AcceleratorAllocatorConfig::parseArgs).
        conf["max_non_split_rounding_mb"] = conf["large_segment_size_mb"]
    _check_sizes(
        conf["max_split_size_mb"], conf["max_non_split_rounding_mb"], conf["large_segment_size_mb"]
    )
    return conf


def _check_sizes(max_split_mb: int | None, max_non_split_mb: int, large_segment_mb: int) -> None:
    """The limits torch 2.14.1's config parser enforces on the modelled sizes."""
    if large_segment_mb <= 10:
        raise ValueError(f"large_segment_size_mb must be over 10, not {large_segment_mb}.")
    if max_split_mb is not None and max_split_mb < large_segment_mb:
        raise ValueError(
            f"max_split_size_mb must be at least large_segment_size_mb ({large_segment_mb})."
        )
    if max_non_split_mb < large_segment_mb:
        raise ValueError(
            f"max_non_split_rounding_mb must be at least large_segment_size_mb "
            f"({large_segment_mb})."
        )


def cublas_workspace_bytes(capability: tuple[int, int], config: str | None = None) -> int:
    """Bytes of the cuBLAS workspace ATen allocates through the caching allocator, once per
    (cuBLAS handle, stream); handles are per thread, and autograd's backward runs on its own
    thread, so a training step on one stream usually holds two.

    Rule (aten/src/ATen/cuda/CublasHandlePool.cpp, parseChosenWorkspaceSize): with
    CUBLAS_WORKSPACE_CONFIG unset, ":4096:2:16:8" = 2 x 4096 KiB + 8 x 16 KiB on compute
    capability major < 9, and ":4096:8" = 32 MiB on majors 9, 10, 11 and 12 (Hopper, Blackwell;
    earlier versions gave 32 MiB to sm_90 alone). A given config sums SIZE KiB x COUNT over
    every ":SIZE:COUNT" in it; one with no such pair falls back to the default, with a warning.
    """
    major, _minor = capability
    if major in (9, 10, 11, 12):
        default = 8 * 4096 * KiB
    else:
        default = 2 * 4096 * KiB + 8 * 16 * KiB
    if config is None:
        return default
    pairs = re.findall(r":([0-9]+):([0-9]+)", config)
    if not pairs:
        warnings.warn(
            f"Could not parse CUBLAS_WORKSPACE_CONFIG {config!r}; torch uses the default "
            f"{default} bytes.",
            stacklevel=2,
        )
        return default
    return sum(int(size) * KiB * int(count) for size, count in pairs)


def cublaslt_workspace_bytes(size_kib: str | None = None, unified: bool = True) -> int:
    """Bytes of the separate cuBLASLt workspace ATen allocates per (handle, stream): 0 when
    cuBLASLt shares the cuBLAS workspace.

    Rule (CublasHandlePool.cpp, getCUDABlasLtWorkspace and parseCUDABlasLtWorkspaceSize): in
    torch's own builds the two workspaces are unified unless TORCH_CUBLASLT_UNIFIED_WORKSPACE
    is set false (`unified`), and then cuBLASLt uses the cuBLAS workspace of its handle and
    stream, capped at its size. Otherwise cuBLASLt gets its own CUBLASLT_WORKSPACE_SIZE KiB
    (`size_kib`, read like std::stoi; default 1024 KiB) from the caching allocator. (Unified by
    default is what torch 2.14.1's library carries; some earlier versions kept them apart unless
    the variable was set true, and later sources keep them apart unless
    TORCH_CUBLAS_WORKSPACE_CACHE is set.)
    """
    if unified:
        return 0
    kib = 1024
    if size_kib is not None:
        leading = re.match(r"\s*([+-]?[0-9]+)", size_kib)
        if leading is None:
            warnings.warn(
                f"Invalid CUBLASLT_WORKSPACE_SIZE {size_kib!r}; torch uses 1024 KiB.",
                stacklevel=2,
            )
        else:
            kib = int(leading.group(1))
    return kib * KiB
