"""Fuzz the loader: whatever the text, it returns a spec or raises SpecError, never anything else."""

from __future__ import annotations

import copy

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cleftgan_hpc.errors import SpecError
from cleftgan_hpc.jobspec.load import parse_spec

BASE = {
    "name": "demo",
    "store": "file://./store",
    "resources": {"gpus": 0, "cpus_per_task": 2, "time": "01:00:00"},
    "stages": {
        "faces": {"kind": "demo_data", "count": 8, "seed": 1},
        "dataset": {"kind": "preprocess", "images": "stage:faces.images", "resolution": 64, "needs": ["faces"]},
    },
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["stage:faces", "stage:nope.x", "store:../x", "${X}", "${X:-1}", "$$", "${"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)


def paths(d: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(d, dict):
        for k, v in d.items():
            out += paths(v, prefix + (k,))
    return out


def check(text: str) -> None:
    try:
        parse_spec(text, file="fuzz.yaml", env={"X": "7"})
    except SpecError as exc:
        assert exc.problems, "a SpecError must carry at least one problem"
        for p in exc.problems:
            assert str(p).startswith("fuzz.yaml:") and p.line >= 1 and p.col >= 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=200))
def test_arbitrary_text(text: str) -> None:
    check(text)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_specs(data: st.DataObject) -> None:
    spec = copy.deepcopy(BASE)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths(spec)))
        value = data.draw(values)
        if not path:
            spec = value
            continue
        parent = spec
        for k in path[:-1]:
            parent = parent[k]
        if data.draw(st.booleans()):
            parent[path[-1]] = value
        else:
            parent.pop(path[-1], None)
        if not isinstance(spec, dict):
            break
    check(yaml.safe_dump(spec, allow_unicode=True))


tokens = st.sampled_from(
    [
        "name:",
        "stages:",
        "kind:",
        " ",
        "\n",
        "  ",
        "- ",
        "[",
        "]",
        "{",
        "}",
        ",",
        ":",
        "&a",
        "*a",
        "!!python/object:os.system",
        "<<:",
        "'",
        '"',
        "#",
        "${X}",
        "preprocess",
        "demo_data",
        "64",
        "\t",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(tokens, max_size=40))
def test_yaml_shaped_noise(parts: list[str]) -> None:
    check("".join(parts))


def test_alias_bomb_is_refused_quickly() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [
        f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]"
        for i in range(1, 9)
    ]
    try:
        parse_spec("\n".join(lines) + "\nname: demo\n", file="bomb.yaml")
    except SpecError as exc:
        assert "too many values" in str(exc)
    else:
        raise AssertionError("an alias bomb must be refused")


def test_alias_loops_and_deep_nesting_are_spec_errors() -> None:
    for text, message in [
        ("name: x\nstages: &x {s: *x}\n", "f.yaml:2:9: stages.s: a YAML alias refers to a value that contains it"),
        ("name: " + "[" * 3000 + "]" * 3000 + "\n", "f.yaml:1:1: the spec is nested too deeply"),
    ]:
        try:
            parse_spec(text, file="f.yaml")
        except SpecError as exc:
            assert message in str(exc)
        else:
            raise AssertionError(f"accepted {text[:40]!r}")
