"""Grids of whole stages: one stage written once, run over the combinations of a few settings.

    train:
      kind: finetune
      dataset: stage:dataset
      grid:                                  # 2 x 2 x 3 = 12 instances of this stage
        cfg: [stylegan3-t, stylegan3-r]
        augment: [none, bgc]
        max_images: [250, 450, null]
    score:
      kind: evaluate
      network: stage:train.network           # fans out: one evaluate per train instance

Each combination becomes a stage of its own, named by its values in grid order,
``train[stylegan3-t,bgc,250]``, with its own outputs, job and resume. A stage that reads a
grid stage (an input or ``needs``) fans out with it, instance by instance; a stage reading
two grid stages must read grids of the same combinations. Expansion happens on the raw spec,
before validation, and every instance's fields keep the lines they were written on (a grid
value's own line for the field it sets), so an error in one combination points at the file.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

from cleftgan_hpc.errors import SpecProblem, shown

Loc = tuple[str | int, ...]
GRID_KEY = "grid"
MAX_GRID_INSTANCES = 256
"""Instances one grid may expand to (each is a job on a cluster; more is almost surely a typo)."""
PROTECTED = frozenset({"kind", "needs", "resources", GRID_KEY})
_SLUG = re.compile(r"[^A-Za-z0-9_.+-]")
INSTANCE_RE = re.compile(r"^([A-Za-z][A-Za-z0-9_-]{0,62})\[([A-Za-z0-9_.+,-]{1,200})\]$")


def slug(value: Any) -> str:
    """A grid value as it appears in an instance name (a path by its file name, without extension)."""
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    if isinstance(value, str) and "/" in value:
        text = value.rstrip("/").rsplit("/", 1)[-1].split(".", 1)[0] or text
    return _SLUG.sub("-", text) or "-"


def instance_name(stage: str, values: tuple[Any, ...]) -> str:
    return f"{stage}[{','.join(slug(v) for v in values)}]"


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

    def problem(loc: Loc, message: str) -> None:
        line, col = positions.of(loc)
        problems.append(SpecProblem(file, line, col, ".".join(str(p) for p in loc), message))

    suffixes: dict[str, list[str]] = {}  # grid or fanned-out stage -> its instances' suffixes, in order
    out: dict[str, Any] = {}
    for name, stage in stages.items():
        if not isinstance(stage, dict) or GRID_KEY not in stage:
            out[name] = stage
            continue
        combos = _combinations(name, stage[GRID_KEY], problem)
        if combos is None:
            out[name] = {k: v for k, v in stage.items() if k != GRID_KEY}  # validated as is, for its other errors
            continue
        keys, values = combos
        names = [instance_name(name, v) for v in values]
        if len(set(names)) != len(names):
            problem(("stages", name, GRID_KEY), "two combinations have the same name; grid values must differ as text")
            continue
        suffixes[name] = [n[len(name):] for n in names]
        for inst, vals in zip(names, values, strict=True):
            out[inst] = {**{k: v for k, v in stage.items() if k != GRID_KEY}, **dict(zip(keys, vals, strict=True))}
            _copy_positions(positions, ("stages", name), ("stages", inst))
            for key, i in zip(keys, (values_index(stage[GRID_KEY][k], v) for k, v in zip(keys, vals, strict=True)),
                              strict=True):
                where = positions.of(("stages", name, GRID_KEY, key, i))
                positions.values[("stages", inst, key)] = where
                positions.keys[("stages", inst, key)] = positions.of(("stages", name, GRID_KEY, key), key=True)
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
        if not isinstance(target, str):
            continue
        needs = stage.get("needs") if isinstance(stage.get("needs"), list) else []
        expanded: list[Any] = []
        for n in [*needs, target]:
            # a stored spec is already expanded: its instances are the stages named after the target
            instances = [x for x in stages if base_name(x) == n and x != n] if isinstance(n, str) else []
            for one in instances or [n]:
                if one not in expanded:
                    expanded.append(one)
        stage["needs"] = expanded


def values_index(options: list[Any], value: Any) -> int:
    return next(i for i, v in enumerate(options) if v is value or v == value)


def _combinations(name: str, grid: Any, problem) -> tuple[list[str], list[tuple[Any, ...]]] | None:  # noqa: ANN001
    loc: Loc = ("stages", name, GRID_KEY)
    if not isinstance(grid, dict) or not grid:
        problem(loc, "grid must map settings to lists of values, e.g. {augment: [none, bgc]}")
        return None
    bad = False
    for key, options in grid.items():
        if key in PROTECTED:
            problem(loc + (key,), f"{key!r} cannot vary in a grid")
            bad = True
        elif not isinstance(options, list) or not options:
            problem(loc + (key,), f"expected a non-empty list of values, got {shown(options)}")
            bad = True
        elif any(isinstance(v, (dict, list)) for v in options):
            problem(loc + (key,), "grid values must be single values (text, numbers, true/false, null)")
            bad = True
    if bad:
        return None
    keys = list(grid)
    count = 1
    for k in keys:
        count *= len(grid[k])
    if count > MAX_GRID_INSTANCES:
        sizes = " x ".join(str(len(grid[k])) for k in keys)
        problem(loc, f"the grid expands to {sizes} = {count} instances; at most {MAX_GRID_INSTANCES}")
        return None
    return keys, list(itertools.product(*(grid[k] for k in keys)))


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
            sets = {tuple(suffixes[g]) for g in grids}
            if len(sets) > 1:
                problem(("stages", name), f"reads grid stages {sorted(grids)} whose combinations differ; "
                                          "a stage can fan out with one grid at a time")
                del stages[name]
                continue
            (order,) = sets
            del stages[name]
            for suffix in order:
                inst = dict(stage)
                for target, where, written in _references(stage):
                    if target not in grids:
                        continue
                    if where[0] == "needs":
                        inst["needs"] = [n + suffix if n == target else n for n in inst["needs"]]
                    else:
                        inst[where[0]] = "stage:" + target + suffix + written[len("stage:") + len(target):]
                stages[name + suffix] = inst
                _copy_positions(positions, ("stages", name), ("stages", name + suffix))
            suffixes[name] = list(order)
            changed = True
