"""Terminal tables fit the terminal: at 80 and 120 columns every harness's table is split into
pieces no wider than the terminal, and every column name appears whole (folded onto at most two
lines at an underscore), never cut with an ellipsis."""

from __future__ import annotations

import pytest
from rich.console import Console

from bench import harnesses
from bench.core import axes
from bench.tables.results import fold, rich_tables


def wide_rows(columns: list[str]) -> list[dict]:
    """Two rows with the widest values a real sweep writes: six-digit figures, ten-letter
    words (a status, a precision, an attention placement such as 16+8+4)."""
    return [
        {
            c: (123_456.789 if c.endswith(("_mib", "_s", "_pct")) else f"word-{i:05d}")
            for c in columns
        }
        for i in range(2)
    ]


@pytest.mark.parametrize("width", [80, 120])
@pytest.mark.parametrize("name", harnesses.names())
def test_every_column_name_whole_at_width(name, width):
    harness = harnesses.named(name)
    axes = ["batch", "precision", "attention"]
    columns = axes + harness.display_columns
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115
    for table in rich_tables(wide_rows(columns), columns, width, len(axes)):
        console.print(table)
    text = console.export_text()
    assert all(len(line) <= width for line in text.splitlines()), text
    assert "…" not in text
    for column in columns:
        for part in fold(column).splitlines():
            assert part in text, (column, part, text)


def test_fold_splits_long_names_at_an_underscore_into_balanced_halves():
    assert fold("predicted_reserved_mib") == "predicted_\nreserved_mib"
    assert fold("tracked_optimizer_state_mib") == "tracked_optimizer_\nstate_mib"
    assert fold("status") == "status"  # short names stay on one line
    assert fold("max_batch_source") == "max_batch_\nsource"
    assert set(axes()) >= {"batch", "precision", "attention"}


# ----- the CPU named with its ISA ---------------------------------------------------------------


def test_environment_line_names_the_cpu_isa(tmp_path):
    import torch

    from bench.tables.env import cpu_isa, describe, environment

    line = describe(environment("cpu"))
    assert torch.backends.cpu.get_cpu_capability() in line
    assert "bf16" in line  # with or without native bf16: the line says which
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert cpu_isa(cpuinfo).endswith("with avx512_bf16 and amx_bf16")
    cpuinfo.write_text("flags\t\t: fpu sse avx2\n")
    assert cpu_isa(cpuinfo).endswith("without native bf16")
