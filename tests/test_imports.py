"""The architecture, read from the imports: no import cycle among the project's modules, ddpm
knows nothing of bench nor its library of its command lines, and within bench every arrow points
down the layers (commands, harnesses, the sweep, the passes, the trackers / predictor / tables,
the models, the contract). Every import counts, at module level or inside a function, except the
one a module's `if __name__ == "__main__":` guard makes of its own CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def modules() -> dict[str, Path]:
    found = {}
    for package in ("ddpm", "bench"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def is_main_guard(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.If)
        and isinstance(node.test, ast.Compare)
        and isinstance(node.test.left, ast.Name)
        and node.test.left.id == "__name__"
    )


def imports(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports, wherever the import statement stands."""
    tree = ast.parse(path.read_text())
    guarded = {id(n) for g in ast.walk(tree) if is_main_guard(g) for n in ast.walk(g)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path a -> ... -> a, or None (depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycle():
    known = modules()
    graph = {name: imports(path, set(known)) - {name} for name, path in known.items()}
    assert len(graph) > 40 and graph["bench.sweep.runner"] >= {
        "bench.tables.markdown",
        "bench.core",
    }
    found = cycle(graph)
    assert found is None, " -> ".join(found)


def test_the_cycle_finder_finds_a_cycle_and_ignores_main_guards(tmp_path):
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set()}) is None
    module = tmp_path / "m.py"
    module.write_text(
        "import ddpm.train\n\ndef f():\n    from bench import report\n\n"
        "if __name__ == '__main__':\n    import bench.sweep.cli\n"
    )
    assert imports(module, {"ddpm.train", "bench.report", "bench.sweep.cli"}) == {
        "ddpm.train",
        "bench.report",
    }


def test_sampling_does_not_import_training():
    """Sampling needs the sampler, the checkpoint decoding and the precision helpers, none of
    which live in ddpm.train: its modules import none of it (the sampling harness's model
    builder, bench.models.workload, serves training harnesses too and may)."""
    known = modules()
    for name in (
        "ddpm.sample",
        "ddpm.cli.sample",
        "bench.sampling",
        "bench.harnesses.sampling",
        "bench.passes.sampling",
    ):
        assert not {m for m in imports(known[name], set(known)) if m.startswith("ddpm.train")}, name


# The commands: python -m bench.<name>, each its own command line.
COMMANDS = (
    "bench.memory",
    "bench.throughput",
    "bench.loss",
    "bench.sampling",
    "bench.profile",
    "bench.report",
    "bench.plan",
    "bench.lever_costs",
    "bench.gpucheck",
    "bench.conftest",
)
# bench's layers, top to bottom: a module imports its own layer or those below, never above. A
# layer names its packages (every module in one is of its layer) and, one by one, bench's
# top-level modules: a new module of bench/ has no layer until it is given one here.
LAYERS = [
    ("commands", COMMANDS),
    (
        "harnesses, the planner and the benchmark suite",
        ("bench.harnesses", "bench.planning", "bench.suite"),
    ),
    ("the sweep", ("bench.sweep",)),
    ("passes", ("bench.passes",)),
    ("trackers, predictor and tables", ("bench.measure", "bench.predict", "bench.tables")),
    ("models", ("bench.models",)),
    (
        "the contract",
        (
            "bench.core",
            "bench.figure",
            "bench.spec",
            "bench.axis",
            "bench.parsers",
            "bench.cards",
            "bench.model_config",
        ),
    ),
    ("a child's lifeline", ("bench.lifeline",)),
    ("the bench package", ("bench",)),
    ("ddpm's command lines", ("ddpm.cli",)),
    ("the ddpm library", ("ddpm",)),
]
# Siblings that must not import each other: a harness's code is no other harness's (what two
# share lives in a layer below), and a command starts only its own harness; bench.gpucheck, the
# first command on a new card, runs three of them by design.
APART = {
    "harnesses": lambda m: m.startswith("bench.harnesses."),
    "commands": lambda m: m in COMMANDS and m != "bench.gpucheck",
}


def layer(module: str) -> int:
    """The index in LAYERS of the entry naming this module: a top-level module of bench by its
    own name, any other by its package's (bench.harnesses for bench.harnesses.memory; ddpm.cli,
    else ddpm, for ddpm's). KeyError names a module no entry names."""
    named = {name: i for i, (_, names) in enumerate(LAYERS) for name in names}
    parts = module.split(".")
    if parts[0] == "bench":
        key = ".".join(parts[:2]) if len(parts) > 2 else module
    else:
        key = "ddpm.cli" if parts[:2] == ["ddpm", "cli"] else "ddpm"
    if key not in named:
        raise KeyError(f"{module} has no layer: name it (or its package) in LAYERS")
    return named[key]


def upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{a} ({LAYERS[layer(a)][0]}) -> {b} ({LAYERS[layer(b)][0]})"
        for a, targets in graph.items()
        for b in targets
        if layer(b) < layer(a)
    )


def sideways(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{a} -> {b} ({kind})"
        for kind, member in APART.items()
        for a, targets in graph.items()
        for b in targets
        if member(a) and member(b)
    )


def test_every_arrow_points_down():
    known = modules()
    graph = {name: imports(path, set(known)) - {name} for name, path in known.items()}
    assert {layer(m) for m in known} == set(range(len(LAYERS)))  # every layer has modules
    assert upward(graph) == []


def test_no_harness_imports_another_and_no_command_another():
    known = modules()
    graph = {name: imports(path, set(known)) - {name} for name, path in known.items()}
    assert sum(APART["harnesses"](m) for m in known) >= 5
    assert sideways(graph) == []


def test_ddpm_imports_nothing_of_bench_and_its_library_no_command_line():
    known = modules()
    for name, path in known.items():
        if name.startswith("ddpm"):
            found = imports(path, set(known))
            assert not {m for m in found if m.startswith("bench")}, name
            if not name.startswith("ddpm.cli"):
                assert not {m for m in found if m.startswith("ddpm.cli")}, name


def test_the_layer_check_finds_an_arrow_up_and_one_sideways():
    assert layer("bench.sweep.runner") == 2 and layer("bench.spec") == 6
    assert layer("bench.harnesses") == layer("bench.harnesses.memory") == 1
    assert layer("ddpm.cli.args") == 9 and layer("ddpm.train") == 10
    assert upward({"bench.spec": {"bench.models.impl"}, "bench.memory": {"bench.spec"}}) == [
        "bench.spec (the contract) -> bench.models.impl (models)"
    ]
    assert sideways(
        {"bench.harnesses.profile": {"bench.harnesses.sampling", "bench.passes.sampling"}}
    ) == ["bench.harnesses.profile -> bench.harnesses.sampling (harnesses)"]
    assert sideways({"bench.loss": {"bench.memory"}, "bench.gpucheck": {"bench.memory"}}) == [
        "bench.loss -> bench.memory (commands)"
    ]


def test_a_new_top_level_module_has_no_layer_until_it_is_given_one():
    """No prefix makes every bench.* module the contract: a module nobody placed is refused."""
    with pytest.raises(KeyError, match="bench.newcomer has no layer"):
        layer("bench.newcomer")
    with pytest.raises(KeyError, match="bench.newpackage.thing has no layer"):
        layer("bench.newpackage.thing")
