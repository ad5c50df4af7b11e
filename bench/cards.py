"""The cards users train on: what torch reports as each one's memory on Linux, its compute
capability, and its datasheet peaks, with where each figure comes from.

The memory prediction reads `capacity_gib` (the budget) and `capability` (the attention kernel,
the cuBLAS workspace); the time prediction reads the peaks and the bandwidth. Every figure is a
public one; none was measured by this project.

Peaks are NVIDIA's datasheet figures at boost clock: `fp32_tflops` for the CUDA cores and
`fp16_tflops` for dense FP16 tensor-core math with FP32 accumulation (the mode torch's autocast
uses). GeForce Turing runs that at 4x its FP32 rate, GeForce Ampere and Ada at 2x (half their
FP16-accumulate rate); Volta and the datacenter parts have no such halving. Cards of compute
capability 8.0 and above run BF16 at the FP16 rate and TF32 at half of it; Pascal has no tensor
cores at all.

`capacity_gib` is `torch.cuda.get_device_properties(0).total_memory` in GiB, as out-of-memory
messages on Linux print it ("X GiB total capacity"): the nominal size less what the driver
keeps. Where no such message is public, `capacity_source` says how the figure is derived: from
a card of the same chip and memory size, or from the nominal size less the driver's share
measured on a card of the same generation."""

from __future__ import annotations

from dataclasses import dataclass

# The card the prediction is for without --card: an 8 GB GeForce card (RTX 3060 Ti, 3070: sm86;
# RTX 4060: sm89, under the same rules in the prediction).
DEFAULT_TARGET = (8, 6)

# One PCIe lane's data rate each way, 1e9 bytes/s, by generation: 8, 16 and 32 GT/s with
# 128b/130b encoding (PCI-SIG, PCI Express Base Specification 3.0, 4.0, 5.0).
PCIE_LANE_GBS = {3: 8 * 128 / 130 / 8, 4: 16 * 128 / 130 / 8, 5: 32 * 128 / 130 / 8}
# The links each card's datasheet gives: PCIe 3.0 x16 for Pascal, Turing and the V100/T4 hosts;
# PCIe 4.0 x16 for Ampere and the RTX 4070/4090, x8 for the RTX 4060 and 4060 Ti; NVLink on the
# SXM boards, 300 GB/s in all for the V100 (six links) and 600 for the A100 (twelve), half of it
# each way.
_GEN4 = (4, 16)

# Where the peak and bandwidth figures come from, by generation.
WHITEPAPERS = {
    6: "NVIDIA GeForce GTX 1080 whitepaper (Pascal GP104)",
    7: "NVIDIA Tesla V100 / Turing (TU102, TU104, TU106) architecture whitepapers, T4 datasheet",
    8: "NVIDIA A100 / GA102 (Ampere GeForce) / Ada Lovelace (AD102) architecture whitepapers",
}


def sm(capability: tuple[int, int]) -> int:
    """A compute capability as CUDA names its architecture: (8, 6) is sm86."""
    return capability[0] * 10 + capability[1]


@dataclass(frozen=True)
class Card:
    key: str  # the --card name
    name: str
    capability: tuple[int, int]
    sms: int
    capacity_gib: float  # what torch reports on Linux
    capacity_source: str
    fp32_tflops: float
    fp16_tflops: float | None  # dense tensor cores, FP32 accumulate; None: no tensor cores
    bandwidth_gbs: float  # DRAM, 1e9 bytes/s
    pcie: tuple[int, int] = (3, 16)  # (generation, lanes) of its host link
    nvlink_gbs: float | None = None  # NVLink, 1e9 bytes/s each way, on the SXM boards

    @property
    def link_gbs(self) -> float:
        """The rate one direction of the card's link to its peers carries, 1e9 bytes/s:
        NVLink where the card has it (SXM boards), else its PCIe slot (what GeForce cards
        exchange over: an NVLink bridge joins two cards at most)."""
        return self.nvlink_gbs or PCIE_LANE_GBS[self.pcie[0]] * self.pcie[1]

    @property
    def pcie_gbs(self) -> float:
        """The rate one direction of the card's PCIe slot carries, 1e9 bytes/s: what a copy
        between the card and host memory moves over, NVLink or not."""
        return PCIE_LANE_GBS[self.pcie[0]] * self.pcie[1]

    @property
    def link(self) -> str:
        if self.nvlink_gbs:
            return f"NVLink {self.nvlink_gbs:g} GB/s"
        return f"PCIe {self.pcie[0]}.0 x{self.pcie[1]}"

    @property
    def sm(self) -> int:
        return sm(self.capability)

    @property
    def bf16(self) -> bool:
        """BF16 tensor cores (compute capability 8.0 on): elsewhere torch emulates bf16."""
        return self.capability >= (8, 0)

    @property
    def tensor_cores(self) -> bool:
        return self.fp16_tflops is not None

    @property
    def tf32_tflops(self) -> float | None:
        """TF32 tensor math (8.0 on, half the FP16 rate); None where fp32 runs on CUDA cores."""
        return self.fp16_tflops / 2 if self.bf16 and self.fp16_tflops else None

    @property
    def capacity_mib(self) -> float:
        return self.capacity_gib * 1024

    @property
    def source(self) -> str:
        return WHITEPAPERS[min(self.capability[0], 8)]


_OOM = "out-of-memory messages on Linux"
_TURING_8GB = "derived: 8 GiB less the 0.24 GiB the driver keeps on an RTX 2080 Ti (Turing)"
_GA104 = "derived: the RTX 3070's figure (same GA104 chip, same 8 GiB)"
_ADA_8GB = "derived: 8 GiB less the 0.22 GiB the driver keeps on an RTX 3070 (a 4090 keeps 0.35)"

CARDS = {
    c.key: c
    for c in (
        Card(
            "gtx1070",
            "GeForce GTX 1070",
            (6, 1),
            15,
            7.93,
            _OOM + ": svip-lab/impersonator#19",
            6.5,
            None,
            256,
        ),
        Card(
            "gtx1080",
            "GeForce GTX 1080",
            (6, 1),
            20,
            7.93,
            "derived: the GTX 1070's figure (same GP104 chip, same 8 GiB)",
            8.9,
            None,
            320,
        ),
        Card("rtx2070", "GeForce RTX 2070", (7, 5), 36, 7.76, _TURING_8GB, 7.5, 29.9, 448),
        Card("rtx2080", "GeForce RTX 2080", (7, 5), 46, 7.76, _TURING_8GB, 10.1, 40.3, 448),
        Card(
            "rtx2080ti",
            "GeForce RTX 2080 Ti",
            (7, 5),
            68,
            10.76,
            _OOM + ": JDAI-CV/image-captioning#11",
            13.4,
            53.8,
            616,
        ),
        Card(
            "rtx3060",
            "GeForce RTX 3060 12 GB",
            (8, 6),
            28,
            11.75,
            _OOM,
            12.7,
            25.5,
            360,
            pcie=_GEN4,
        ),
        Card(
            "rtx3060ti",
            "GeForce RTX 3060 Ti",
            (8, 6),
            38,
            7.78,
            _GA104,
            16.2,
            32.4,
            448,
            pcie=_GEN4,
        ),
        Card(
            "rtx3070",
            "GeForce RTX 3070",
            (8, 6),
            46,
            7.78,
            _OOM + ": akshitac8/OW-DETR#46",
            20.3,
            40.6,
            448,
            pcie=_GEN4,
        ),
        Card(
            "rtx3080",
            "GeForce RTX 3080 10 GB",
            (8, 6),
            68,
            9.78,
            _OOM + ": zai-org/CogVideo#34",
            29.8,
            59.5,
            760,
            pcie=_GEN4,
        ),
        Card(
            "rtx3080ti",
            "GeForce RTX 3080 Ti",
            (8, 6),
            80,
            11.75,
            "derived: the RTX 3060 12 GB's figure (Ampere GeForce, same 12 GiB)",
            34.1,
            68.2,
            912,
            pcie=_GEN4,
        ),
        Card(
            "rtx3090",
            "GeForce RTX 3090",
            (8, 6),
            82,
            23.70,
            _OOM + ": GaoLii/DSP#10",
            35.6,
            71.2,
            936,
            pcie=_GEN4,
        ),
        Card(
            "rtx4060", "GeForce RTX 4060", (8, 9), 24, 7.78, _ADA_8GB, 15.1, 30.2, 272, pcie=(4, 8)
        ),
        Card(
            "rtx4060ti",
            "GeForce RTX 4060 Ti 8 GB",
            (8, 9),
            34,
            7.78,
            _ADA_8GB,
            22.1,
            44.1,
            288,
            pcie=(4, 8),
        ),
        Card(
            "rtx4070",
            "GeForce RTX 4070",
            (8, 9),
            46,
            11.70,
            "derived: the RTX 4070 Ti's figure in out-of-memory messages (same AD104 chip, "
            "same 12 GiB): Kwai-Kolors/Kolors#11",
            29.1,
            58.3,
            504,
            pcie=_GEN4,
        ),
        Card(
            "rtx4090",
            "GeForce RTX 4090",
            (8, 9),
            128,
            23.65,
            _OOM + ": MotrixLab/AiOS#29",
            82.6,
            165.2,
            1008,
            pcie=_GEN4,
        ),
        Card(
            "t4",
            "Tesla T4",
            (7, 5),
            40,
            14.56,
            _OOM + " with 2025 drivers: Zheng-Chong/CatVTON#133 (older drivers: 14.76, "
            "xinge008/Cylinder3D#109)",
            8.1,
            65.0,
            320,
        ),
        Card(
            "v100-16gb",
            "Tesla V100 16 GB (SXM2)",
            (7, 0),
            80,
            15.78,
            _OOM,
            15.7,
            125.0,
            900,
            nvlink_gbs=150.0,
        ),
        Card(
            "v100-32gb",
            "Tesla V100 32 GB (SXM2)",
            (7, 0),
            80,
            31.74,
            _OOM + ": haotian-liu/LLaVA#812",
            15.7,
            125.0,
            900,
            nvlink_gbs=150.0,
        ),
        Card(
            "a100-40gb",
            "A100 40 GB (SXM4)",
            (8, 0),
            108,
            39.50,
            _OOM + ": TianheWu/CoSeR#10",
            19.5,
            312.0,
            1555,
            pcie=_GEN4,
            nvlink_gbs=300.0,
        ),
    )
}


def card_words(key: str) -> str:
    """The card as a verdict names it: "an RTX 3070 (sm86, 7.78 GiB)"; "" for no card."""
    if not key:
        return ""
    card = CARDS[key]
    name = card.name.removeprefix("GeForce ").removeprefix("Tesla ")
    article = "an" if name[0] in "AEFHILMNORSX8" else "a"
    return f"{article} {name} (sm{card.sm}, {card.capacity_gib:.2f} GiB)"


def listing(width: int = 80) -> str:
    """The catalogue as `--list-cards` prints it: a table, then where each capacity comes from."""
    import textwrap

    rows = [("key", "card", "sm", "torch GiB", "bf16", "FP32", "FP16 TC", "GB/s")]
    for c in CARDS.values():
        rows.append(
            (
                c.key,
                c.name.removeprefix("GeForce "),
                str(c.sm),
                f"{c.capacity_gib:.2f}",
                "yes" if c.bf16 else "no",
                f"{c.fp32_tflops:g}",
                f"{c.fp16_tflops:g}" if c.fp16_tflops else "-",
                f"{c.bandwidth_gbs:g}",
            )
        )
    sizes = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            cell.ljust(n) if i < 2 else cell.rjust(n) for i, (cell, n) in enumerate(zip(r, sizes))
        )
        for r in rows
    ]
    notes = [
        "torch GiB: torch.cuda.get_device_properties().total_memory on Linux, the budget "
        "--card sets. FP32 / FP16 TC: datasheet TFLOPS at boost clock (FP16 on tensor cores, "
        "dense, FP32 accumulate; - : no tensor cores). bf16: BF16 tensor cores (sm80 on). "
        "Peaks and bandwidth: " + "; ".join(WHITEPAPERS.values()) + ".",
        "Links (the exchange of --ranks, each way): "
        + "; ".join(
            f"{link}: {', '.join(c.key for c in CARDS.values() if c.link == link)}"
            for link in dict.fromkeys(c.link for c in CARDS.values())
        )
        + ".",
        "Capacity sources:",
    ]
    out = lines + [""] + [line for n in notes for line in textwrap.wrap(n, width)]
    for c in CARDS.values():
        out += textwrap.wrap(f"{c.key}: {c.capacity_source}", width, subsequent_indent="    ")
    return "\n".join(out)


# torch.compile's Inductor backend generates Triton kernels, and torch refuses cards below 7.0:
# torch/_inductor/scheduler.py raises GPUTooOldForTriton for major < 7 (its message, in
# torch/_inductor/exc.py: "Triton only supports devices of CUDA Capability >= 7.0").
TRITON_MIN_CAPABILITY = (7, 0)


def caveats(key: str, precision: str, compile_mode: str) -> list[str]:
    """What a verdict must say about a card that does not run the spec as the prediction
    assumes: bf16 without BF16 tensor cores, fp16 without tensor cores, torch.compile below
    Triton's minimum. The memory is predicted all the same; the speed is not the card's peak."""
    if not key:
        return []
    card = CARDS[key]
    said = []
    if precision == "bf16" and not card.bf16:
        said.append(
            f"bf16 is emulated on sm{card.sm}: memory as predicted, speed far below the "
            "card's peak (no BF16 tensor cores before sm80)"
        )
    if precision == "fp16" and not card.tensor_cores:
        said.append(
            f"fp16 runs without tensor cores on sm{card.sm}: memory as predicted, speed "
            "no better than fp32"
        )
    if compile_mode != "off" and card.capability < TRITON_MIN_CAPABILITY:
        said.append(
            f"torch.compile does not run on sm{card.sm}: Triton needs compute capability "
            f"{TRITON_MIN_CAPABILITY[0]}.{TRITON_MIN_CAPABILITY[1]} or later, so this card "
            "runs the step eager or not at all"
        )
    return said
