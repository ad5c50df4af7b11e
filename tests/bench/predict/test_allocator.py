"""The caching-allocator model (bench.predict.allocator) against sequences worked out by hand
from the rules of c10/cuda/CUDACachingAllocator.cpp, and the cuBLAS workspace sizes against
aten/src/ATen/cuda/CublasHandlePool.cpp. Each expected number is written as the arithmetic of
the rule it exercises."""

from __future__ import annotations

import pytest

from bench.predict.allocator import (
    CachingAllocatorModel,
    cublas_workspace_bytes,
    cublaslt_workspace_bytes,
    parse_alloc_conf,
    replay,
)

KiB = 1024
MiB = 1024 * KiB


def stats(m: CachingAllocatorModel) -> tuple[int, int]:
    return m.allocated, m.reserved


# -- rounding and the small pool ------------------------------------------------------------


def test_one_byte_takes_512_bytes_of_a_2_mib_segment():
    # Requests round up to 512 B; a small request opens a 2 MiB small-pool segment.
    m = CachingAllocatorModel()
    m.malloc(1)
    assert stats(m) == (512, 2 * MiB)


def test_requests_round_up_to_multiples_of_512():
    # 513 B rounds to 1024 B, 512 B stays 512 B; both fit the same 2 MiB segment.
    m = CachingAllocatorModel()
    m.malloc(513)
    m.malloc(512)
    assert stats(m) == (1024 + 512, 2 * MiB)


def test_zero_bytes_allocates_nothing():
    # torch allocates no block for a 0-byte request, and freeing it is a no-op.
    m = CachingAllocatorModel()
    h = m.malloc(0)
    assert stats(m) == (0, 0)
    m.free(h)
    assert (m.allocated, m.reserved, m.peak_allocated, m.peak_reserved) == (0, 0, 0, 0)


def test_600_kib_requests_share_a_small_segment_until_one_does_not_fit():
    # Three 600 KiB blocks fit one 2 MiB segment (1800 KiB); the fourth opens a second one.
    m = CachingAllocatorModel()
    m.malloc(600 * KiB)
    m.malloc(600 * KiB)
    assert stats(m) == (2 * 600 * KiB, 2 * MiB)
    m.malloc(600 * KiB)
    assert stats(m) == (3 * 600 * KiB, 2 * MiB)
    m.malloc(600 * KiB)
    assert stats(m) == (4 * 600 * KiB, 2 * 2 * MiB)


def test_1_mib_is_the_largest_small_request():
    # 1 MiB still uses the small pool (2 MiB segment); 1 MiB + 1 B rounds to 1 MiB + 512 B and
    # goes to the large pool, whose segment for requests under 10 MiB is 20 MiB.
    m = CachingAllocatorModel()
    m.malloc(1 * MiB)
    assert stats(m) == (1 * MiB, 2 * MiB)
    m.malloc(1 * MiB + 1)
    assert stats(m) == (1 * MiB + (1 * MiB + 512), 2 * MiB + 20 * MiB)


# -- the large pool ---------------------------------------------------------------------------


def test_1_5_mib_gets_a_20_mib_segment_and_a_second_fits_its_remainder():
    # A 1.5 MiB request opens a 20 MiB segment; the split-off 18.5 MiB serves the next one.
    m = CachingAllocatorModel()
    m.malloc(1 * MiB + 512 * KiB)
    assert stats(m) == (1 * MiB + 512 * KiB, 20 * MiB)
    m.malloc(1 * MiB + 512 * KiB)
    assert stats(m) == (2 * (1 * MiB + 512 * KiB), 20 * MiB)


@pytest.mark.parametrize(
    "second, allocated",
    [
        # 18.5 MiB free - 18 MiB leaves 0.5 MiB <= 1 MiB: not split, the whole block counts.
        (18 * MiB, (1 * MiB + 512 * KiB) + (18 * MiB + 512 * KiB)),
        # a remainder of exactly 1 MiB is still not split (the rule is remainder > 1 MiB).
        (17 * MiB + 512 * KiB, (1 * MiB + 512 * KiB) + (18 * MiB + 512 * KiB)),
        # a 1.5 MiB remainder is split off: only the request counts.
        (17 * MiB, (1 * MiB + 512 * KiB) + 17 * MiB),
    ],
)
def test_large_remainder_of_at_most_1_mib_is_not_split(second, allocated):
    m = CachingAllocatorModel()
    m.malloc(1 * MiB + 512 * KiB)
    m.malloc(second)
    assert stats(m) == (allocated, 20 * MiB)


def test_10_mib_plus_1_byte_gets_a_12_mib_segment():
    # From 10 MiB on, a request gets its own segment rounded up to 2 MiB: 10 MiB + 512 B -> 12 MiB;
    # the 2 MiB - 512 B remainder is over 1 MiB, so it is split off.
    m = CachingAllocatorModel()
    m.malloc(10 * MiB + 1)
    assert stats(m) == (10 * MiB + 512, 12 * MiB)


@pytest.mark.parametrize(
    "request_, allocated, reserved",
    [
        # under 10 MiB: a 20 MiB segment, the 10.5 MiB remainder split off.
        (9 * MiB + 512 * KiB, 9 * MiB + 512 * KiB, 20 * MiB),
        # exactly 10 MiB: a 10 MiB segment, nothing left over.
        (10 * MiB, 10 * MiB, 10 * MiB),
        # 11 MiB: a 12 MiB segment; the 1 MiB remainder is not split, so all 12 MiB count.
        (11 * MiB, 12 * MiB, 12 * MiB),
        # 13 MiB: a 14 MiB segment, again a 1 MiB remainder kept in the block.
        (13 * MiB, 14 * MiB, 14 * MiB),
        # 100 MiB + 1 B: 100 MiB + 512 B in a 102 MiB segment, the rest split off.
        (100 * MiB + 1, 100 * MiB + 512, 102 * MiB),
    ],
)
def test_segment_size_of_one_large_request(request_, allocated, reserved):
    m = CachingAllocatorModel()
    m.malloc(request_)
    assert stats(m) == (allocated, reserved)


def test_best_fit_takes_the_smallest_free_block_that_fits():
    # Free 12, 14 and 16 MiB segments: 13 MiB takes the 14 MiB one, 11 MiB the 12 MiB one, each
    # whole (1 MiB remainders are not split), and no new segment is opened.
    m = CachingAllocatorModel()
    a, b, c = m.malloc(12 * MiB), m.malloc(14 * MiB), m.malloc(16 * MiB)
    addr_a, addr_b = m.address(a), m.address(b)
    for h in (a, b, c):
        m.free(h)
    x = m.malloc(13 * MiB)
    assert m.address(x) == addr_b
    assert stats(m) == (14 * MiB, 12 * MiB + 14 * MiB + 16 * MiB)
    y = m.malloc(11 * MiB)
    assert m.address(y) == addr_a
    assert stats(m) == (14 * MiB + 12 * MiB, 12 * MiB + 14 * MiB + 16 * MiB)


def test_best_fit_ties_go_to_the_lowest_address():
    # Two free 12 MiB segments: a 12 MiB request takes the one at the lower address, whatever
    # the order they were freed in (segments are modelled in creation order).
    m = CachingAllocatorModel()
    x, y = m.malloc(12 * MiB), m.malloc(12 * MiB)
    addr_x, addr_y = m.address(x), m.address(y)
    assert addr_x < addr_y
    m.free(y)
    m.free(x)
    z = m.malloc(12 * MiB)
    assert m.address(z) == addr_x
    assert stats(m) == (12 * MiB, 2 * 12 * MiB)


def test_freed_neighbours_merge_so_a_larger_request_fits():
    # Three 5 MiB blocks in one 20 MiB segment (5 MiB left free at its end). Freeing the first
    # two merges them into 10 MiB, which then holds 9 MiB (its 1 MiB remainder not split).
    m = CachingAllocatorModel()
    a, b, _c = m.malloc(5 * MiB), m.malloc(5 * MiB), m.malloc(5 * MiB)
    addr_a = m.address(a)
    assert stats(m) == (3 * 5 * MiB, 20 * MiB)
    m.free(a)
    m.free(b)
    d = m.malloc(9 * MiB)
    assert m.address(d) == addr_a
    assert stats(m) == (5 * MiB + 10 * MiB, 20 * MiB)


def test_free_merges_both_sides_back_into_the_whole_segment():
    # Freeing a, c, then b leaves one free 20 MiB block: 19 MiB takes all of it, no new segment.
    m = CachingAllocatorModel()
    a, b, c = m.malloc(5 * MiB), m.malloc(5 * MiB), m.malloc(5 * MiB)
    m.free(a)
    m.free(c)
    m.free(b)
    assert stats(m) == (0, 20 * MiB)
    m.malloc(19 * MiB)
    assert stats(m) == (20 * MiB, 20 * MiB)


def test_segments_are_kept_after_everything_is_freed():
    # Nothing is returned to CUDA: reserved stays at 2 + 20 + 30 MiB.
    m = CachingAllocatorModel()
    handles = [m.malloc(1), m.malloc(1 * MiB + 512 * KiB), m.malloc(30 * MiB)]
    for h in handles:
        m.free(h)
    assert stats(m) == (0, 2 * MiB + 20 * MiB + 30 * MiB)


def test_the_pools_do_not_share_free_blocks():
    # A free small segment does not serve a large request, nor a free large one a small request.
    m = CachingAllocatorModel()
    m.free(m.malloc(512))
    m.malloc(1 * MiB + 512 * KiB)
    assert stats(m) == (1 * MiB + 512 * KiB, 2 * MiB + 20 * MiB)
    m = CachingAllocatorModel()
    m.free(m.malloc(1 * MiB + 512 * KiB))
    m.malloc(1 * KiB)
    assert stats(m) == (1 * KiB, 20 * MiB + 2 * MiB)


def test_free_rejects_unknown_and_freed_handles():
    m = CachingAllocatorModel()
    h = m.malloc(1)
    m.free(h)
    with pytest.raises(ValueError):
        m.free(h)
    with pytest.raises(ValueError):
        m.free(12345)


def test_random_program_keeps_the_stats_consistent():
    # Whatever the order: allocated never exceeds reserved nor falls below the live requests,
    # reserved never shrinks, and freeing everything brings allocated back to 0.
    import random

    rng = random.Random(0)
    for expandable in (False, True):
        m = CachingAllocatorModel(expandable_segments=expandable)
        live: dict[int, int] = {}
        reserved = 0
        for _ in range(3000):
            if live and rng.random() < 0.45:
                handle = rng.choice(list(live))
                del live[handle]
                m.free(handle)
            else:
                nbytes = rng.choice(
                    [rng.randint(0, 2 * KiB), rng.randint(1, 3 * MiB), rng.randint(1, 40 * MiB)]
                )
                live[m.malloc(nbytes)] = nbytes
            assert sum(live.values()) <= m.allocated <= m.reserved
            assert m.reserved >= reserved
            reserved = m.reserved
            assert m.peak_allocated >= m.allocated and m.peak_reserved == m.reserved
        for h in list(live):
            m.free(h)
        assert (m.allocated, m.reserved) == (0, reserved)


# -- peaks ------------------------------------------------------------------------------------


def test_peaks_follow_the_high_water_mark_and_reset_to_current():
    m = CachingAllocatorModel()
    a = m.malloc(1 * MiB + 512 * KiB)
    b = m.malloc(1 * MiB + 512 * KiB)
    m.free(a)
    # Two 1.5 MiB blocks were live at once; one is left.
    assert (m.allocated, m.peak_allocated) == (1 * MiB + 512 * KiB, 2 * (1 * MiB + 512 * KiB))
    assert (m.reserved, m.peak_reserved) == (20 * MiB, 20 * MiB)
    # reset_peak_memory_stats: each peak drops to its current value.
    m.reset_peaks()
    assert (m.peak_allocated, m.peak_reserved) == (1 * MiB + 512 * KiB, 20 * MiB)
    # A 512 B block opens a small segment: both peaks rise with it.
    m.malloc(512)
    assert (m.peak_allocated, m.peak_reserved) == (1 * MiB + 512 * KiB + 512, 20 * MiB + 2 * MiB)
    # Freeing lowers the current value, never the peak.
    m.free(b)
    assert (m.allocated, m.peak_allocated) == (512, 1 * MiB + 512 * KiB + 512)


# -- max_split_size_mb and large_segment_size_mb ----------------------------------------------


def test_without_max_split_size_a_big_free_block_is_split():
    # Default: a free 50 MiB segment serves 30 MiB and the 20 MiB remainder is split off.
    m = CachingAllocatorModel()
    m.free(m.malloc(50 * MiB))
    m.malloc(30 * MiB)
    assert stats(m) == (30 * MiB, 50 * MiB)


def test_max_split_size_keeps_oversize_blocks_whole_and_for_oversize_requests():
    m = CachingAllocatorModel(max_split_size_mb=40)
    m.free(m.malloc(50 * MiB))
    # 30 MiB is under 40 MiB, so the free 50 MiB (>= 40 MiB) block is off limits: new segment.
    m.malloc(30 * MiB)
    assert stats(m) == (30 * MiB, 50 * MiB + 30 * MiB)
    # 45 MiB >= 40 MiB takes the 50 MiB block (under 45 + 20 MiB) whole, unsplit.
    m.malloc(45 * MiB)
    assert stats(m) == (30 * MiB + 50 * MiB, 50 * MiB + 30 * MiB)
    # Another 45 MiB gets a 46 MiB segment and, being oversize, is not split either.
    m.malloc(45 * MiB)
    assert stats(m) == (30 * MiB + 50 * MiB + 46 * MiB, 50 * MiB + 30 * MiB + 46 * MiB)


def test_max_split_size_bounds_the_waste_of_an_oversize_block():
    # With max_split_size_mb=40 a free 100 MiB block serves an oversize request only if it is
    # less than max_non_split_rounding_mb (20) larger: not 60 MiB (100 >= 80), but 85 MiB.
    m = CachingAllocatorModel(max_split_size_mb=40)
    m.free(m.malloc(100 * MiB))
    m.malloc(60 * MiB)
    assert stats(m) == (60 * MiB, 100 * MiB + 60 * MiB)
    m.malloc(85 * MiB)
    assert stats(m) == (60 * MiB + 100 * MiB, 100 * MiB + 60 * MiB)


def test_max_non_split_rounding_follows_the_large_segment_size():
    # Unset, the rounding limit equals large_segment_size_mb (64 here): a free 100 MiB block
    # serves a 64 MiB oversize request (100 < 64 + 64) and is taken whole.
    m = CachingAllocatorModel(max_split_size_mb=64, large_segment_size_mb=64)
    m.free(m.malloc(100 * MiB))
    m.malloc(64 * MiB)
    assert stats(m) == (100 * MiB, 100 * MiB)


def test_large_segment_size_sets_the_segment_of_1_to_10_mib_requests():
    # large_segment_size_mb:64 replaces the 20 MiB segment (and the large expandable page).
    m = CachingAllocatorModel(large_segment_size_mb=64)
    m.malloc(1 * MiB + 512 * KiB)
    assert stats(m) == (1 * MiB + 512 * KiB, 64 * MiB)
    m = CachingAllocatorModel(expandable_segments=True, large_segment_size_mb=64)
    m.malloc(65 * MiB)
    assert stats(m) == (65 * MiB, 2 * 64 * MiB)


# -- expandable segments ----------------------------------------------------------------------


def test_expandable_small_pool_grows_in_2_mib_pages():
    # One 1 B request maps one 2 MiB small page.
    m = CachingAllocatorModel(expandable_segments=True)
    m.malloc(1)
    assert stats(m) == (512, 2 * MiB)


def test_expandable_small_pool_packs_across_pages():
    # Five 700 KiB blocks: separate 2 MiB segments hold two each (3 segments), one growing
    # segment holds all 3500 KiB in two pages.
    fixed = CachingAllocatorModel()
    grown = CachingAllocatorModel(expandable_segments=True)
    for _ in range(5):
        fixed.malloc(700 * KiB)
        grown.malloc(700 * KiB)
    assert stats(fixed) == (5 * 700 * KiB, 3 * 2 * MiB)
    assert stats(grown) == (5 * 700 * KiB, 2 * 2 * MiB)


def test_expandable_large_pool_grows_in_20_mib_pages():
    # 1.5 MiB maps one 20 MiB page; 25 MiB extends the free 18.5 MiB end by one more page
    # (6.5 MiB short), where a plain allocator opens a 26 MiB segment and, its 1 MiB remainder
    # not being split, counts all of it.
    m = CachingAllocatorModel(expandable_segments=True)
    m.malloc(1 * MiB + 512 * KiB)
    assert stats(m) == (1 * MiB + 512 * KiB, 20 * MiB)
    m.malloc(25 * MiB)
    assert stats(m) == (1 * MiB + 512 * KiB + 25 * MiB, 2 * 20 * MiB)
    plain = CachingAllocatorModel()
    plain.malloc(1 * MiB + 512 * KiB)
    plain.malloc(25 * MiB)
    assert stats(plain) == (1 * MiB + 512 * KiB + 26 * MiB, 20 * MiB + 26 * MiB)


def test_expandable_maps_whole_pages_and_fills_them_first():
    m = CachingAllocatorModel(expandable_segments=True)
    # 45 MiB needs three 20 MiB pages.
    m.malloc(45 * MiB)
    assert stats(m) == (45 * MiB, 3 * 20 * MiB)
    # 14 MiB fits the 15 MiB left in them.
    m.malloc(14 * MiB)
    assert stats(m) == (45 * MiB + 14 * MiB, 3 * 20 * MiB)
    # 2 MiB does not fit the last 1 MiB: one more page, joined to that 1 MiB.
    m.malloc(2 * MiB)
    assert stats(m) == (45 * MiB + 14 * MiB + 2 * MiB, 4 * 20 * MiB)


def test_expandable_large_pool_splits_any_remainder_of_512_bytes_or_more():
    # Unlike the plain large pool, 18 MiB out of the free 18.5 MiB leaves 0.5 MiB split off.
    m = CachingAllocatorModel(expandable_segments=True)
    m.malloc(1 * MiB + 512 * KiB)
    m.malloc(18 * MiB)
    assert stats(m) == (1 * MiB + 512 * KiB + 18 * MiB, 20 * MiB)


def test_expandable_reuses_freed_space_without_mapping_more():
    # 30 MiB maps 40 MiB; once freed it merges with the free 10 MiB after it and holds 35 MiB.
    m = CachingAllocatorModel(expandable_segments=True)
    m.free(m.malloc(30 * MiB))
    assert stats(m) == (0, 2 * 20 * MiB)
    m.malloc(35 * MiB)
    assert stats(m) == (35 * MiB, 2 * 20 * MiB)


def test_expandable_best_fit_passes_over_the_block_that_borders_unmapped_space():
    m = CachingAllocatorModel(expandable_segments=True)
    a = m.malloc(30 * MiB)  # maps [0, 40) MiB; [30, 40) free
    addr_a = m.address(a)
    m.malloc(10 * MiB)  # takes [30, 40) exactly
    m.malloc(5 * MiB)  # maps [40, 60); [45, 60) free, bordering unmapped space
    m.free(a)  # [0, 30) free
    assert stats(m) == (10 * MiB + 5 * MiB, 3 * 20 * MiB)
    # 12 MiB: the end block (15 MiB) counts as 15 MiB plus the unmapped space, so [0, 30) wins.
    d = m.malloc(12 * MiB)
    assert m.address(d) == addr_a
    # 14 MiB: plain best fit would take the 15 MiB end block; the 18 MiB at [12, 30) is chosen.
    e = m.malloc(14 * MiB)
    assert m.address(e) == addr_a + 12 * MiB
    # 16 MiB fits no free block: the free 15 MiB end grows by one page and holds it.
    f = m.malloc(16 * MiB)
    assert m.address(f) == addr_a + 45 * MiB
    assert stats(m) == (10 * MiB + 5 * MiB + 12 * MiB + 14 * MiB + 16 * MiB, 4 * 20 * MiB)


def test_expandable_pools_have_separate_segments():
    # The small pool maps 2 MiB pages, the large pool 20 MiB pages, each in its own segment.
    m = CachingAllocatorModel(expandable_segments=True)
    m.malloc(1)
    m.malloc(1 * MiB + 512 * KiB)
    assert stats(m) == (512 + 1 * MiB + 512 * KiB, 2 * MiB + 20 * MiB)


# -- replay -----------------------------------------------------------------------------------

EVENTS = [
    ("alloc", "x", 1 * MiB + 512 * KiB),
    ("alloc", "y", 1 * MiB + 512 * KiB),
    ("free", "x"),
    ("alloc", ("z", 1), 1 * MiB + 1),
]


def test_replay_runs_events_in_program_order():
    # z (1 MiB + 512 B) takes x's freed 1.5 MiB block; the 0.5 MiB - 512 B left is not split.
    m = replay(EVENTS)
    assert stats(m) == (2 * (1 * MiB + 512 * KiB), 20 * MiB)
    assert m.peak_allocated == 2 * (1 * MiB + 512 * KiB)
    # With expandable segments that remainder (>= 512 B) is split off.
    m = replay(EVENTS, expandable_segments=True)
    assert stats(m) == (1 * MiB + 512 * KiB + 1 * MiB + 512, 20 * MiB)


def test_replay_takes_a_parsed_alloc_conf():
    m = replay(EVENTS, **parse_alloc_conf("expandable_segments:True"))
    assert stats(m) == (1 * MiB + 512 * KiB + 1 * MiB + 512, 20 * MiB)


@pytest.mark.parametrize(
    "events",
    [
        [("free", "never")],
        [("alloc", "x", 1), ("alloc", "x", 1)],
        [("alloc", "x", 1), ("free", "x"), ("free", "x")],
        [("realloc", "x", 1)],
    ],
)
def test_replay_rejects_inconsistent_events(events):
    with pytest.raises(ValueError):
        replay(events)


# -- PYTORCH_CUDA_ALLOC_CONF ------------------------------------------------------------------

DEFAULTS = {
    "expandable_segments": False,
    "max_split_size_mb": None,
    "max_non_split_rounding_mb": 20,
    "large_segment_size_mb": 20,
    "backend": "native",
}


@pytest.mark.parametrize("text", [None, "", "   "])
def test_parse_alloc_conf_defaults(text):
    assert parse_alloc_conf(text) == DEFAULTS


@pytest.mark.parametrize(
    "text, changes",
    [
        ("expandable_segments:True", {"expandable_segments": True}),
        ("expandable_segments:False", {}),
        # whitespace is ignored, and a trailing comma is accepted
        (
            " expandable_segments : True , max_split_size_mb:300,",
            {"expandable_segments": True, "max_split_size_mb": 300},
        ),
        # keys torch knows but the model does not use are accepted and ignored
        ("garbage_collection_threshold:0.6,pinned_use_background_threads:True", {}),
        (
            "roundup_power2_divisions:[256:1,>:4],expandable_segments:True",
            {"expandable_segments": True},
        ),
        # max_non_split_rounding_mb follows large_segment_size_mb unless given
        (
            "large_segment_size_mb:64,max_split_size_mb:64",
            {"large_segment_size_mb": 64, "max_split_size_mb": 64, "max_non_split_rounding_mb": 64},
        ),
        ("max_non_split_rounding_mb:30", {"max_non_split_rounding_mb": 30}),
        ("backend:cudaMallocAsync", {"backend": "cudaMallocAsync"}),
    ],
)
def test_parse_alloc_conf_accepts(text, changes):
    assert parse_alloc_conf(text) == {**DEFAULTS, **changes}


@pytest.mark.parametrize(
    "text",
    [
        "expandable_segments:true",  # booleans are exactly True or False
        "expandable_segments",  # a key needs :value
        "expandable_segments:",
        "foo:bar",  # torch rejects unknown keys
        "EXPANDABLE_SEGMENTS:True",
        ",expandable_segments:True",
        "expandable_segments:True,,",
        "expandable_segments:True;max_split_size_mb:50",
        "expandable_segments:[True]",
        "max_split_size_mb:abc",
        "max_split_size_mb:10",  # under large_segment_size_mb (20)
        "large_segment_size_mb:30,max_split_size_mb:25",
        "max_non_split_rounding_mb:5",
        "large_segment_size_mb:10",  # must be over 10
        "backend:bogus",
        "roundup_power2_divisions:[256:1",
    ],
)
def test_parse_alloc_conf_rejects_with_one_sentence(text):
    with pytest.raises(ValueError) as error:
        parse_alloc_conf(text)
    message = str(error.value)
    assert message.endswith(".") and "\n" not in message and message.count(". ") == 0


def test_the_model_refuses_the_cuda_malloc_async_backend():
    with pytest.raises(ValueError):
        CachingAllocatorModel(**parse_alloc_conf("backend:cudaMallocAsync"))


# -- cuBLAS / cuBLASLt workspaces -------------------------------------------------------------


@pytest.mark.parametrize(
    "capability, nbytes",
    [
        # default :4096:2:16:8 before Hopper
        ((7, 5), 2 * 4096 * KiB + 8 * 16 * KiB),
        ((8, 6), 2 * 4096 * KiB + 8 * 16 * KiB),
        ((8, 9), 2 * 4096 * KiB + 8 * 16 * KiB),
        # 32 MiB on Hopper and Blackwell
        ((9, 0), 32 * MiB),
        ((10, 0), 32 * MiB),
        ((12, 0), 32 * MiB),
    ],
)
def test_cublas_default_workspace(capability, nbytes):
    assert cublas_workspace_bytes(capability) == nbytes


@pytest.mark.parametrize(
    "capability, config, nbytes",
    [
        ((8, 6), ":4096:8", 8 * 4096 * KiB),  # SIZE KiB x COUNT
        ((9, 0), ":16:8", 8 * 16 * KiB),  # smaller than the sm90 default
        ((9, 0), ":4096:2:16:8", 2 * 4096 * KiB + 8 * 16 * KiB),  # pairs add up
        ((8, 6), ":4096:1", 4096 * KiB),
    ],
)
def test_cublas_workspace_from_config(capability, config, nbytes):
    assert cublas_workspace_bytes(capability, config) == nbytes


def test_cublas_unparsable_config_falls_back_to_the_default():
    with pytest.warns(UserWarning):
        assert cublas_workspace_bytes((9, 0), "4096") == 32 * MiB


def test_cublaslt_workspace():
    # Unified (torch's default): cuBLASLt uses the cuBLAS workspace, nothing more is allocated.
    assert cublaslt_workspace_bytes() == 0
    # Separate: CUBLASLT_WORKSPACE_SIZE KiB, 1024 KiB by default.
    assert cublaslt_workspace_bytes(unified=False) == 1024 * KiB
    assert cublaslt_workspace_bytes("2048", unified=False) == 2048 * KiB
    with pytest.warns(UserWarning):
        assert cublaslt_workspace_bytes("lots", unified=False) == 1024 * KiB
