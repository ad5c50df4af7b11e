"""Two traces paired record for record (bench.predict.pairing): the lines through two batches,
and every way two record lists can fail to be the same step."""

from __future__ import annotations

import pytest

from bench.predict.pairing import Line, Unpaired, at, line, pair


def test_a_line_of_whole_numbers_through_two_batches():
    # 3 MiB of weights and 4 KiB an image, traced at 2 and 3 images
    assert line(3 * 2**20 + 2 * 4096, 3 * 2**20 + 3 * 4096, (2, 3)) == Line(3 * 2**20, 4096)
    assert line(512, 512, (2, 3)) == Line(512, 0)  # a size the batch does not change
    assert Line(100, 7).at(1000) == 7100


def test_no_line_where_it_would_not_be_whole_or_would_go_below_zero():
    assert line(10, 13, (2, 4)) is None  # 1.5 bytes an image
    assert line(20, 10, (2, 3)) is None  # shrinks as the batch grows
    assert line(4, 9, (2, 3)) is None  # 5 an image from -6: below zero at batch 1
    # b^2 x 8 at 2 and 3 is 32, 72: a line of 40 an image from -48, refused
    assert line(32, 72, (2, 3)) is None


def test_two_traces_of_one_step_pair_and_read_at_any_batch():
    def step(b):
        return [
            (("alloc", "aten.empty"), (1000,)),
            (("alloc", "aten.convolution"), (4096 * b,)),
            (("free", 1), ()),
            (("kernel", "mm"), (2 * 64 * 64 * b, 64 * 4 + 8 * b)),
        ]

    paired = pair(step(2), step(3), (2, 3))
    assert paired[1] == (("alloc", "aten.convolution"), (Line(0, 4096),))
    for batch in (1, 7, 139, 1 << 24):
        assert at(paired, batch) == step(batch)


@pytest.mark.parametrize(
    "second, index, words",
    [
        ([(("alloc", "aten.mm"), (8,))], 0, "'aten.mm'"),  # another op
        ([(("alloc", "aten.empty"), (8, 8))], 0, "'aten.empty'"),  # another number of sizes
        ([(("alloc", "aten.empty"), (7,))], 0, "no line"),  # shrinks
        ([(("alloc", "aten.empty"), (8,)), (("free", 0), ())], 1, "1 records at batch 2"),
    ],
)
def test_traces_that_are_not_one_step_do_not_pair(second, index, words):
    first = [(("alloc", "aten.empty"), (8,))]
    with pytest.raises(Unpaired) as info:
        pair(first, second, (2, 3))
    assert info.value.index == index and words in str(info.value)


def test_pairing_needs_two_batches_in_order():
    with pytest.raises(ValueError, match="0 < b1 < b2"):
        pair([], [], (3, 2))
