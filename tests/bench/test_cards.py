"""The card catalogue's internal rules, and its datacenter peaks against torch's own table."""

from __future__ import annotations

import re

import pytest
import torch
from torch._inductor.analysis.device_info import _device_mapping

from bench.cards import CARDS, caveats, listing

WANTED = (
    "gtx1070 gtx1080 rtx2070 rtx2080 rtx2080ti rtx3060 rtx3060ti rtx3070 rtx3080 rtx3080ti "
    "rtx3090 rtx4060 rtx4060ti rtx4070 rtx4090 t4 v100-16gb v100-32gb a100-40gb"
).split()


def test_every_card_users_asked_for_is_there():
    assert set(WANTED) <= set(CARDS)
    assert all(key == card.key for key, card in CARDS.items())


# The nominal memory of each card in GiB (datasheets); torch sees less: the driver's share, and
# on the T4 (ECC on by default) the ECC's.
NOMINAL_GIB = {
    **dict.fromkeys(("gtx1070", "gtx1080", "rtx2070", "rtx2080", "rtx3060ti", "rtx3070"), 8),
    **dict.fromkeys(("rtx4060", "rtx4060ti"), 8),
    "rtx2080ti": 11,
    "rtx3080": 10,
    **dict.fromkeys(("rtx3060", "rtx3080ti", "rtx4070"), 12),
    **dict.fromkeys(("rtx3090", "rtx4090"), 24),
    **dict.fromkeys(("t4", "v100-16gb"), 16),
    "v100-32gb": 32,
    "a100-40gb": 40,
}


@pytest.mark.parametrize("key", WANTED)
def test_capacity_below_the_nominal_size(key):
    card = CARDS[key]
    assert 0.9 * NOMINAL_GIB[key] < card.capacity_gib < NOMINAL_GIB[key]
    assert card.capacity_source


# NVIDIA's published facts per card: its compute capability (developer.nvidia.com/cuda-gpus)
# and what its tensor cores do (the architecture whitepapers: Pascal has none; Volta's and
# Turing's run FP16, not BF16; the A100's, GeForce Ampere's (GA102) and Ada's run BF16 too).
PASCAL, VOLTA, TURING = ((6, 1), False, False), ((7, 0), False, True), ((7, 5), False, True)
AMPERE, GEFORCE_AMPERE, ADA = ((8, 0), True, True), ((8, 6), True, True), ((8, 9), True, True)
PUBLISHED = {
    **dict.fromkeys(("gtx1070", "gtx1080"), PASCAL),
    **dict.fromkeys(("v100-16gb", "v100-32gb"), VOLTA),
    **dict.fromkeys(("rtx2070", "rtx2080", "rtx2080ti", "t4"), TURING),
    "a100-40gb": AMPERE,
    **dict.fromkeys(
        ("rtx3060", "rtx3060ti", "rtx3070", "rtx3080", "rtx3080ti", "rtx3090"), GEFORCE_AMPERE
    ),
    **dict.fromkeys(("rtx4060", "rtx4060ti", "rtx4070", "rtx4090"), ADA),
}


def test_every_card_has_its_published_facts():
    assert set(PUBLISHED) == set(CARDS)


@pytest.mark.parametrize("key", WANTED)
def test_capability_bf16_and_tensor_cores_as_nvidia_publishes_them(key):
    capability, bf16, tensor_cores = PUBLISHED[key]
    card = CARDS[key]
    assert (card.capability, card.bf16, card.tensor_cores) == (capability, bf16, tensor_cores)
    assert card.sm == int(f"{capability[0]}{capability[1]}")  # CUDA's sm86 for 8.6


def test_a100_peaks_agree_with_torchs_device_info():
    torch_a100 = _device_mapping["NVIDIA A100"].tops
    ours = CARDS["a100-40gb"]
    assert ours.fp32_tflops == torch_a100[torch.float32]
    assert ours.fp16_tflops == pytest.approx(torch_a100[torch.float16], rel=0.01)
    assert ours.tf32_tflops == pytest.approx(torch_a100["torch.tf32"], rel=0.01)


def test_caveats_name_emulated_bf16_plain_fp16_and_old_triton():
    assert caveats("t4", "bf16", "off") == [
        "bf16 is emulated on sm75: memory as predicted, speed far below the card's peak "
        "(no BF16 tensor cores before sm80)"
    ]
    assert caveats("t4", "fp16", "off") == []  # Turing has FP16 tensor cores
    assert "without tensor cores" in caveats("gtx1070", "fp16", "off")[0]
    assert "Triton needs compute capability 7.0" in caveats("gtx1080", "fp32", "default")[0]
    assert caveats("rtx3070", "bf16", "default") == []
    assert caveats("", "bf16", "default") == []


def test_listing_fits_80_columns_and_names_every_card_and_source():
    text = listing()
    assert max(map(len, text.splitlines())) <= 80
    for card in CARDS.values():
        assert re.search(rf"^{re.escape(card.key)} ", text, re.M)
        assert re.search(rf"^{re.escape(card.key)}: ", text, re.M)


def test_each_cards_link_each_way_by_hand():
    """PCIe: lanes x GT/s x 128/130 / 8 bits (4.0 x16: 31.51 GB/s); NVLink: half the
    datasheet's both-ways total (V100 SXM2 300 GB/s, A100 SXM4 600)."""
    assert CARDS["rtx3080ti"].link_gbs == pytest.approx(16 * 16 * 128 / 130 / 8)
    assert CARDS["rtx4060"].link_gbs == pytest.approx(8 * 16 * 128 / 130 / 8)
    assert CARDS["rtx2080ti"].link_gbs == pytest.approx(16 * 8 * 128 / 130 / 8)
    assert (CARDS["v100-32gb"].link_gbs, CARDS["a100-40gb"].link_gbs) == (150.0, 300.0)
    assert CARDS["rtx4090"].link == "PCIe 4.0 x16"
