"""Grids of whole stages: one stage written once, run over the combinations of a few settings.

    train:
      kind: finetune
      dataset: stage:dataset
      grid:                                  # 2 x 2 x 3 = 12 instances of this stage
        architecture:                        # linked settings: each named value sets several fields
          stylegan3-t: {network: stylegan3-t-ffhq-1024x1024.pkl, cfg: stylegan3-t}
          stylegan2: {network: stylegan2-ffhq-1024x1024.pkl, cfg: stylegan2}
        augment: [none, bgc]                 # one field, a list of values
        max_images: [250, 450, null]
    score:
      kind: evaluate
      network: stage:train.network           # fans out: one evaluate per train instance

An axis is either a field with a list of single values, or a name (not a field) mapping
readable labels to the fields that label sets together. Each combination becomes a stage of
its own, named by its values and labels in grid order, ``train[stylegan2,bgc,250]``, with its
own outputs, job and resume. A stage that reads a grid stage (an input or ``needs``) fans out
with it, instance by instance; a stage reading two grid stages must read grids of the same
combinations. Expansion happens on the raw spec, before validation, and every instance's
fields keep the lines they were written on (a grid value's own line for the field it sets),
so an error in one combination points at the file.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

from cleftgan_hpc.errors import SpecProblem, shown

Loc = tuple[str | int, ...]
GRID_KEY = "grid"
MAX_GRID_INSTANCES = 256
"""Instances one grid may expand to (each is a job on a cluster; more is almost surely a typo)."""
PROTECTED = frozenset({"kind", "needs", "resources", GRID_KEY})
_SLUG = re.compile(r"[^A-Za-z0-9_.+-]")
LABEL_RE = re.compile(r"^[A-Za-z0-9_.+-]{1,40}$")
"""A linked axis's label, as it appears in an instance's name."""
INSTANCE_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_-]{0,62})\[([A-Za-z0-9_.+,-]{1,200})\]$")


GRID_REFERENCE = "\n".join([
    "Any stage may carry `grid:`, a mapping of axes; the stage then runs once per combination of the",
    "axes' values, each an instance of its own named by its values in axis order",
    "(`train[stylegan2,bgc,250]`), with its own outputs, job and resume.",
    "",
    "| axis | example | each value sets |",
    "|---|---|---|",
    "| `FIELD: [VALUE, ...]` | `augment: [none, c, bg, bgc]` "
    "| that field, to a single value (text, number, true/false, null) |",
    "| `AXIS: {LABEL: {FIELD: VALUE, ...}, ...}` | `architecture: {stylegan2: {network: sg2.pkl, cfg: stylegan2}}` "
    "| every field under its label, together (any values); the label names the instance |",
    "",
    f"A grid expands to at most {MAX_GRID_INSTANCES} instances; `kind`, `needs`, `resources` and `grid` cannot",
    "vary; a field is set by one axis only and is not also written on the stage; every label of an",
    "axis sets the same fields. A stage reading a grid stage fans out with it; `compare` gathers every",
    "instance.",
])


def slug(value: Any) -> str:
    """A grid value as it appears in an instance name (a path by its file name, without extension)."""
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    if isinstance(value, str) and "/" in value:
        text = value.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0] or text
    return _SLUG.sub("-", text) or "-"


def base_name(name: str) -> str:
    """``train`` for ``train[stylegan2,bgc]`` (and for ``train``)."""
    m = INSTANCE_RE.match(name)
    return m.group(1) if m else name


def expand_grids(data: dict[str, Any], positions: Any, file: str) -> list[SpecProblem]:
    """Replace every grid stage in ``data['stages']`` by its instances and fan out the stages
    that read one, in place; positions are copied to the new locations. Returns the problems."""
    stages = data.get("stages")
    if not isinstance(stages, dict):
        return []
    problems: list[SpecProblem] = []

    def problem(loc: Loc, message: str, key: bool = False) -> None:
        line, col = positions.of(loc, key=key)
        problems.append(SpecProblem(file, line, col, ".".join(str(p) for p in loc), message))

    suffixes: dict[str, list[str]] = {}  # grid or fanned-out stage -> its instances' suffixes, in order
    out: dict[str, Any] = {}
    for name, stage in stages.items():
        if not isinstance(stage, dict) or GRID_KEY not in stage:
            out[name] = stage
            continue
        axes = _axes(name, stage, problem)
        if axes is None:
            out[name] = {k: v for k, v in stage.items() if k != GRID_KEY}  # validated as is, for its other errors
            continue
        combos = list(itertools.product(*axes))
        names = [f"{name}[{','.join(o.part for o in combo)}]" for combo in combos]
        if len(set(names)) != len(names):
            problem(("stages", name, GRID_KEY), "two combinations have the same name; grid values must differ as text")
            continue
        suffixes[name] = [n[len(name):] for n in names]
        for inst, combo in zip(names, combos, strict=True):
            fields = {k: v for o in combo for k, v in o.fields.items()}
            out[inst] = {**{k: v for k, v in stage.items() if k != GRID_KEY}, **fields}
            _copy_positions(positions, ("stages", name), ("stages", inst))
            for option in combo:
                for key, (value_loc, key_loc) in option.where.items():
                    _copy_subtree(positions, value_loc, ("stages", inst, key))
                    positions.keys[("stages", inst, key)] = positions.of(key_loc, key=True)
    _fan_out(out, suffixes, positions, problem)
    _gather(out, suffixes)
    data["stages"] = out
    return problems


def _gather(stages: dict[str, Any], suffixes: dict[str, list[str]]) -> None:
    """A gathering kind (compare) depends on every instance of the stage it names."""
    from cleftgan_hpc.jobspec.stages import KINDS

    for stage in stages.values():
        kind = KINDS.get(stage.get("kind")) if isinstance(stage, dict) and isinstance(stage.get("kind"), str) else None
        field = kind.gathers if kind is not None else None
        target = stage.get(field) if field else None
        targets = [target] if isinstance(target, str) else target if isinstance(target, list) else []
        targets = [t for t in targets if isinstance(t, str)]
        if not targets:
            continue
        needs = stage.get("needs") if isinstance(stage.get("needs"), list) else []
        expanded: list[Any] = []
        for i, n in enumerate([*needs, *targets]):
            # a stored spec is already expanded: its instances are the stages named after the target
            instances = [x for x in stages if base_name(x) == n and x != n] if isinstance(n, str) else []
            if i >= len(needs) and not instances and n not in stages:
                continue  # an unknown target is reported at the field that names it (check_graph), not in needs
            for one in instances or [n]:
                if one not in expanded:
                    expanded.append(one)
        if expanded or "needs" in stage:
            stage["needs"] = expanded


@dataclass(frozen=True)
class _Option:
    """One value of one axis: its part of the instance name, the fields it sets, and where
    each of them is written (the value's place and its key's place in the file)."""

    part: str
    fields: dict[str, Any]
    where: dict[str, tuple[Loc, Loc]]


def _axes(name: str, stage: dict[str, Any], problem) -> list[list[_Option]] | None:  # noqa: ANN001
    """The options of each axis of a stage's grid, or None (after reporting) when it is malformed."""
    loc: Loc = ("stages", name, GRID_KEY)
    grid = stage[GRID_KEY]
    if not isinstance(grid, dict) or not grid:
        problem(loc, "grid must map settings to lists of values, e.g. {augment: [none, bgc]}, or a name to labelled "
                     "settings, e.g. {architecture: {stylegan2: {network: sg2.pkl, cfg: stylegan2}}}")
        return None
    axes: list[list[_Option]] = []
    set_by: dict[str, str] = {}  # field -> the axis that sets it
    bad = False
    for axis, options in grid.items():
        aloc = loc + (axis,)
        if isinstance(options, dict):
            opts = _linked(aloc, options, problem)
        elif axis in PROTECTED:
            problem(aloc, f"{axis!r} cannot vary in a grid", True)
            opts = None
        elif not isinstance(options, list) or not options:
            problem(aloc, f"expected a non-empty list of values, or labels mapped to settings; got {shown(options)}",
                    True)
            opts = None
        elif any(isinstance(v, (dict, list)) for v in options):
            problem(aloc, "grid values in a list must be single values (text, numbers, true/false, null); to set a "
                          "structured value or several fields at once, label them: {AXIS: {LABEL: {field: value}}}",
                    True)
            opts = None
        else:
            opts = [_Option(slug(v), {axis: v}, {axis: (aloc + (i,), aloc)}) for i, v in enumerate(options)]
        if opts is None:
            bad = True
            continue
        fields = dict.fromkeys(k for o in opts for k in o.fields)
        for field in fields:
            if field in set_by:
                problem(aloc, f"{field!r} is set by two axes of the grid, {set_by[field]!r} and {axis!r}", True)
                bad = True
            elif field in stage:
                problem(aloc, f"{field!r} is both written on the stage and set by the grid's axis {axis!r}; "
                              "remove one of them", True)
                bad = True
            set_by[field] = str(axis)
        axes.append(opts)
    if bad:
        return None
    count = 1
    for opts in axes:
        count *= len(opts)
    if count > MAX_GRID_INSTANCES:
        sizes = " x ".join(str(len(opts)) for opts in axes)
        problem(loc, f"the grid expands to {sizes} = {count} instances; at most {MAX_GRID_INSTANCES}")
        return None
    return axes


def _linked(loc: Loc, options: dict[str, Any], problem) -> list[_Option] | None:  # noqa: ANN001
    """A linked axis: labels, each mapped to the fields it sets together."""
    if not options:
        problem(loc, "expected labels mapped to settings, e.g. {stylegan2: {network: sg2.pkl, cfg: stylegan2}}", True)
        return None
    opts: list[_Option] = []
    bad = False
    for label, settings in options.items():
        lloc = loc + (label,)
        if not isinstance(label, str) or not LABEL_RE.match(label):
            problem(lloc, f"bad label {shown(label)}: it names instances (train[LABEL,...]); use letters, digits "
                          "and '-', '_', '.', '+' (at most 40)", True)
            bad = True
        elif not isinstance(settings, dict) or not settings:
            problem(lloc, f"label {label!r} must map the fields it sets to their values, e.g. "
                          f"{{{label}: {{cfg: stylegan2, network: sg2.pkl}}}}; got {shown(settings)}", True)
            bad = True
        elif any(k in PROTECTED for k in settings):
            k = next(k for k in settings if k in PROTECTED)
            problem(lloc + (k,), f"{k!r} cannot vary in a grid", True)
            bad = True
        else:
            opts.append(_Option(label, dict(settings), {k: (lloc + (k,), lloc + (k,)) for k in settings}))
    if bad:
        return None
    first = set(opts[0].fields)
    for o in opts[1:]:
        if set(o.fields) != first:
            problem(loc + (o.part,), f"label {o.part!r} sets {sorted(o.fields)} but {opts[0].part!r} sets "
                                     f"{sorted(first)}; every label of an axis sets the same fields", True)
            return None
    return opts


def _copy_subtree(positions: Any, src: Loc, dst: Loc) -> None:
    """Positions of the value at ``src`` and everything under it, copied to ``dst``."""
    n = len(src)
    positions.values[dst] = positions.of(src)
    for table in (positions.values, positions.keys):
        for loc, where in list(table.items()):
            if loc[:n] == src and len(loc) > n:
                table[dst + loc[n:]] = where


def _copy_positions(positions: Any, src: Loc, dst: Loc) -> None:
    n = len(src)
    for table in (positions.values, positions.keys):
        for loc, where in list(table.items()):
            if loc[:n] == src and (len(loc) == n or loc[n] != GRID_KEY):
                table[dst + loc[n:]] = where


def _gathers(stage: dict[str, Any]) -> bool:
    from cleftgan_hpc.jobspec.stages import KINDS

    kind = KINDS.get(stage["kind"]) if isinstance(stage.get("kind"), str) else None
    return kind is not None and kind.gathers is not None


def _references(stage: dict[str, Any]) -> list[tuple[str, Loc, str]]:
    """(referenced stage, where, how it is written) for the stage: inputs and needs of a raw stage."""
    refs: list[tuple[str, Loc, str]] = []
    for key, value in stage.items():
        if isinstance(value, str) and value.startswith("stage:"):
            target = value[len("stage:"):].split(".", 1)[0]
            refs.append((target, (key,), value))
    needs = stage.get("needs")
    if isinstance(needs, list):
        refs += [(n, ("needs", i), n) for i, n in enumerate(needs) if isinstance(n, str)]
    return refs


def _pointed(stage: dict[str, Any], suffixes: dict[str, str]) -> dict[str, Any]:
    """The stage with its references to the given grid stages pointed at one instance of each."""
    inst = dict(stage)
    for target, where, written in _references(stage):
        if target not in suffixes:
            continue
        suffix = suffixes[target]
        if where[0] == "needs":
            inst["needs"] = [n + suffix if n == target else n for n in inst["needs"]]
        else:
            inst[where[0]] = "stage:" + target + suffix + written[len("stage:") + len(target):]
    return inst


def _fan_out(stages: dict[str, Any], suffixes: dict[str, list[str]], positions: Any, problem) -> None:  # noqa: ANN001
    """Stages reading a grid stage become one instance per grid instance (repeated until no
    stage reads a grid stage as a whole: chains fan out stage by stage)."""
    changed = True
    while changed:
        changed = False
        for name in list(stages):
            stage = stages[name]
            if not isinstance(stage, dict):
                continue
            grids = {t for t, _, _ in _references(stage) if t in suffixes}
            if grids and _gathers(stage):
                continue  # it depends on every instance (see _gather), it does not fan out
            if not grids:
                continue
            if base_name(name) != name:  # a grid's instance: its own grid and the one it reads would cross
                other = sorted(grids)[0]
                problem(("stages", base_name(name), GRID_KEY),
                        f"a grid stage cannot read another grid stage ({other!r}): grids do not cross; read one "
                        f"instance of it (stage:{other}[...]) or give this stage no grid", True)
                stages[name] = _pointed(stage, {g: suffixes[g][0] for g in grids})  # validated for its other errors
                continue
            sets = {tuple(suffixes[g]) for g in grids}
            if len(sets) > 1:
                problem(("stages", name), f"reads grid stages {sorted(grids)} whose combinations differ; "
                                          "a stage can fan out with one grid at a time")
                del stages[name]
                continue
            (order,) = sets
            del stages[name]
            for suffix in order:
                stages[name + suffix] = _pointed(stage, dict.fromkeys(grids, suffix))
                _copy_positions(positions, ("stages", name), ("stages", name + suffix))
            suffixes[name] = list(order)
            changed = True
