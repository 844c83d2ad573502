"""The one YAML reader for job specs.

It keeps the position of every key and value, interpolates ``${VAR}`` / ``${VAR:-default}``
from the environment, validates with the typed models, checks the stage graph, and turns
every problem into ``FILE:LINE:COL: field.path: what is wrong, what is expected``. A bad spec
raises SpecError listing all problems; it never escapes as another exception.
"""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from cleftgan_hpc.errors import SECRET_NAME, FieldError, SpecError, SpecProblem, looks_secret, shown
from cleftgan_hpc.jobspec.dataset_size import check_max_images
from cleftgan_hpc.jobspec.grid import INSTANCE_RE, base_name, expand_grids
from cleftgan_hpc.jobspec.job import JobSpec
from cleftgan_hpc.jobspec.models import NAME_RE, stage_ref
from cleftgan_hpc.jobspec.stages import KINDS

Loc = tuple[str | int, ...]
MAX_SPEC_BYTES = 1 << 20
"""A job spec is a page of YAML; anything near this size is a mistake (or an attack on the reader)."""
_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{[^}]*\}?")


@dataclass
class Positions:
    """1-based (line, column) of each value and each mapping key, by path from the root."""

    values: dict[Loc, tuple[int, int]] = field(default_factory=dict)
    keys: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def of(self, loc: Loc, *, key: bool = False) -> tuple[int, int]:
        """Position of ``loc``, or of its nearest ancestor that exists in the file."""
        loc = tuple(loc)
        while loc:
            if key and loc in self.keys:
                return self.keys[loc]
            if loc in self.values:
                return self.values[loc]
            loc = loc[:-1]
        return self.values.get((), (1, 1))


@dataclass
class LoadedSpec:
    """A validated spec with where it came from, and what is worth a warning."""

    spec: JobSpec
    path: Path
    positions: Positions
    warnings: list[SpecProblem] = field(default_factory=list)


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Reader:
    """Turns a composed YAML node tree into plain data, recording positions and problems."""

    def __init__(self, file: str, env: typing.Mapping[str, str], interpolate: bool = True) -> None:
        self.file, self.env, self.expand_vars = file, env, interpolate
        self.pos = Positions()
        self.problems: list[SpecProblem] = []
        self.warnings: list[SpecProblem] = []
        self.from_env: set[Loc] = set()  # values with an environment variable in them: never echoed
        self.budget = 100_000  # values read, aliases expanded
        self._open: set[int] = set()  # collections being read (to catch alias loops)
        self._constructor = yaml.constructor.SafeConstructor()
        self._resolver = yaml.resolver.Resolver()

    def problem(self, where: tuple[int, int], loc: Loc, message: str) -> None:
        self.problems.append(SpecProblem(self.file, where[0], where[1], dotted(loc), message))

    def read(self, node: yaml.Node, loc: Loc) -> Any:
        self.budget -= 1
        if self.budget < 0:  # YAML aliases can expand exponentially ("billion laughs")
            raise SpecError([SpecProblem(self.file, *_mark(node), dotted(loc), "the spec expands to too many values")])
        self.pos.values[loc] = _mark(node)
        if id(node) in self._open:  # an alias to a mapping or list that contains it
            self.problem(_mark(node), loc, "a YAML alias refers to a value that contains it (a loop)")
            return None
        if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)):
            self._open.add(id(node))
            try:
                return self._collection(node, loc)
            finally:
                self._open.discard(id(node))
        return self.scalar(node, loc)

    def _collection(self, node: yaml.Node, loc: Loc) -> Any:
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):
                    self.problem(_mark(key_node), loc, "a key must be a plain name, not a list or mapping")
                    continue
                key = key_node.value
                if key == "<<":
                    self.problem(_mark(key_node), loc, "YAML merge keys ('<<') are not supported; write the fields out")
                    continue
                if key in out:
                    first = self.pos.keys[loc + (key,)]
                    self.problem(
                        _mark(key_node), loc + (key,), f"duplicate key {key!r} (first defined at line {first[0]})"
                    )
                    continue
                self.pos.keys[loc + (key,)] = _mark(key_node)
                out[key] = self.read(value_node, loc + (key,))
            return out
        return [self.read(item, loc + (i,)) for i, item in enumerate(node.value)]

    def scalar(self, node: yaml.ScalarNode, loc: Loc) -> Any:
        text = node.value
        if "$" in text and self.expand_vars:
            text = self.interpolate(text, node, loc)
            self.from_env.add(loc)
            if node.style is None:  # plain scalar: re-type what the variable gave ("64" -> 64)
                tag = self._resolver.resolve(yaml.ScalarNode, text, (True, False))
                node = yaml.ScalarNode(tag, text, node.start_mark, node.end_mark, node.style)
            else:
                return text
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as exc:
            value = "a value from the environment" if loc in self.from_env else f"value {shown(text)}"
            self.problem(_mark(node), loc, f"cannot read {value}: {str(exc)[:200]}")
            return None

    def interpolate(self, text: str, node: yaml.Node, loc: Loc) -> str:
        def sub(m: re.Match[str]) -> str:
            if m.group(0) == "$$":
                return "$"
            name, default = m.group(1), m.group(2)
            if name is None:
                self.problem(
                    _mark(node), loc, f"bad interpolation {shown(m.group(0))}: expected ${{VAR}} or ${{VAR:-default}}"
                )
                return m.group(0)
            if name in self.env and self.env[name] != "":
                if _is_job_env(loc) and SECRET_NAME.search(name):
                    # a credential for the jobs: read from their environment when they start,
                    # so it is never written into the run's spec.yaml or a job script
                    self.warnings.append(SpecProblem(
                        self.file, *_mark(node), dotted(loc),
                        f"${{{name}}} is a credential: it is left for the job to read from its environment at "
                        f"start (sbatch passes the submitting environment by default), not written into the "
                        f"stored spec or the job script; make sure {name} is set where the jobs are submitted",
                    ))
                    return "${" + name + "}"
                return self.env[name]
            if default is not None:
                return default
            self.problem(
                _mark(node), loc, f"environment variable {name} is not set; set it or write ${{{name}:-default}}"
            )
            return ""

        return _VAR.sub(sub, text)


def dotted(loc: Loc) -> str:
    return ".".join(str(p) for p in loc)


def _is_job_env(loc: Loc) -> bool:
    return len(loc) == 3 and loc[:2] == ("slurm", "env")


def _literal_secret_warnings(data: dict[str, Any], pos: Positions, file: str, from_env: set[Loc]) -> list[SpecProblem]:
    """Credentials written into slurm.env as text end up in the run's spec.yaml and the job scripts."""
    slurm = data.get("slurm")
    env = slurm.get("env") if isinstance(slurm, dict) else None
    out = []
    for name, value in (env or {}).items() if isinstance(env, dict) else ():
        loc = ("slurm", "env", name)
        if isinstance(value, str) and loc not in from_env and (SECRET_NAME.search(str(name)) or looks_secret(value)):
            out.append(SpecProblem(
                file, *pos.of(loc), dotted(loc),
                f"looks like a credential written as text: it will be stored in the run's spec.yaml and the job "
                f"scripts; write ${{{name}}} instead to have each job read it from its environment",
            ))
    return out


def load_spec(path: str | Path, env: typing.Mapping[str, str] | None = None) -> LoadedSpec:
    """Read, interpolate, validate and graph-check a job spec. Raises SpecError."""
    path = Path(path)
    file = str(path)
    try:
        if path.stat().st_size > MAX_SPEC_BYTES:  # refuse before reading it into memory
            raise SpecError([SpecProblem(file, 1, 1, "", _too_big(path.stat().st_size))])
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([SpecProblem(file, 1, 1, "", "no such file")]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([SpecProblem(file, 1, 1, "", f"cannot read the spec: {exc}")]) from None
    return parse_spec(text, file=file, base_dir=path.resolve().parent, env=env)


def parse_spec(
    text: str,
    *,
    file: str = "<spec>",
    base_dir: Path | None = None,
    env: typing.Mapping[str, str] | None = None,
    interpolate: bool = True,
) -> LoadedSpec:
    """Like load_spec, from text. ``interpolate=False`` reads a resolved spec (as a run stores
    it) where a ``${...}`` left in a value is literal text, not a variable."""
    if len(text) > MAX_SPEC_BYTES:
        raise SpecError([SpecProblem(file, 1, 1, "", _too_big(len(text)))])
    reader = _Reader(file, os.environ if env is None else env, interpolate)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise SpecError([SpecProblem(file, 1, 1, "", "the spec is nested too deeply")]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = " ".join(p for p in (exc.context, exc.problem) if p)
        raise SpecError([SpecProblem(file, line, col, "", f"YAML syntax error: {what}")]) from None
    except yaml.YAMLError as exc:
        raise SpecError([SpecProblem(file, 1, 1, "", f"YAML syntax error: {exc}")]) from None
    if node is None:
        raise SpecError([SpecProblem(file, 1, 1, "", "the spec is empty; expected a mapping with name and stages")])
    try:
        data = reader.read(node, ())
    except RecursionError:
        raise SpecError([SpecProblem(file, 1, 1, "", "the spec is nested too deeply")]) from None
    if not isinstance(data, dict):
        reader.problem(reader.pos.of(()), (), "the spec must be a mapping with name, store, backend and stages")
        raise SpecError(reader.problems)
    if reader.problems:
        raise SpecError(reader.problems)

    problems = expand_grids(data, reader.pos, file)
    # a grid instance's value from the environment is still one: never echoed in a message
    from_env_at = {reader.pos.values[loc] for loc in reader.from_env if loc in reader.pos.values}
    reader.from_env |= {loc for loc, where in reader.pos.values.items() if where in from_env_at}
    base = base_dir or Path.cwd()
    problems += check_graph(data, reader.pos, file)
    problems += _located(lambda report: check_max_images(data, report, base), reader.pos, file)
    try:
        spec = JobSpec.model_validate(data, context={"base_dir": base})
    except ValidationError as exc:
        problems += [_problem_from_pydantic(err, data, reader.pos, file, reader.from_env) for err in exc.errors()]
    if problems:
        raise SpecError(_unique(problems))
    warnings = reader.warnings + _literal_secret_warnings(data, reader.pos, file, reader.from_env)
    return LoadedSpec(spec, Path(file), reader.pos, warnings)


def _located(check: typing.Callable[[typing.Callable[[Loc, str], None]], None], pos: Positions,
             file: str) -> list[SpecProblem]:
    """The problems a check reports by location, at their lines in the file."""
    problems: list[SpecProblem] = []

    def report(loc: Loc, message: str) -> None:
        problems.append(SpecProblem(file, *pos.of(loc), dotted(loc), message))

    check(report)
    return problems


def _too_big(size: int) -> str:
    return f"the spec is {size:,} bytes; a job spec is at most {MAX_SPEC_BYTES:,} (is this the right file?)"


# -- the stage graph -------------------------------------------------------------------------
# Checked on the raw data, so graph problems are reported together with field problems.


def _raw_stages(data: Any) -> dict[str, dict[str, Any]]:
    stages = data.get("stages") if isinstance(data, dict) else None
    if not isinstance(stages, dict):
        return {}
    return {str(k): (v if isinstance(v, dict) else {}) for k, v in stages.items()}


def raw_dependencies(stage: dict[str, Any]) -> list[tuple[str, Loc]]:
    """(dependency, where it is named) for a raw stage mapping: its needs and its stage: inputs."""
    deps: list[tuple[str, Loc]] = []
    needs = stage.get("needs")
    if isinstance(needs, list):
        deps += [(n, ("needs", i)) for i, n in enumerate(needs) if isinstance(n, str)]
    for key, value in stage.items():
        ref = stage_ref(value) if isinstance(value, str) else None
        if ref:
            deps.append((ref[0], (key,)))
    return deps


def dependencies(spec: JobSpec, name: str) -> list[str]:
    """A validated stage's dependencies: its ``needs`` plus every stage its inputs reference."""
    deps = list(spec.stages[name].needs)
    for value in spec.stages[name].model_dump().values():
        ref = stage_ref(value) if isinstance(value, str) else None
        if ref and ref[0] not in deps:
            deps.append(ref[0])
    return deps


def check_graph(data: Any, pos: Positions, file: str) -> list[SpecProblem]:
    """Stage names, unknown dependencies, unknown outputs and cycles."""
    problems: list[SpecProblem] = []
    stages = _raw_stages(data)

    def add(loc: Loc, message: str, *, key: bool = False) -> None:
        line, col = pos.of(loc, key=key)
        problems.append(SpecProblem(file, line, col, dotted(loc), message))

    names = list(stages)
    for name, stage in stages.items():
        if not NAME_RE.match(name) and not INSTANCE_RE.match(name):
            add(("stages", name), f"bad stage name {name!r}: start with a letter; letters, digits, '-', '_'", key=True)
        for dep, where in raw_dependencies(stage):
            loc = ("stages", name, *where)
            if dep == name:
                add(loc, f"stage {name!r} cannot depend on itself")
            elif dep not in stages:
                add(loc, f"unknown stage {dep!r}{_suggest(dep, names)}; stages are: {', '.join(names)}")
        for key, value in stage.items():
            ref = stage_ref(value) if isinstance(value, str) else None
            if not ref or not ref[1] or ref[0] not in stages:
                continue
            target_kind = KINDS.get(str(stages[ref[0]].get("kind")))
            if target_kind is not None and ref[1] not in target_kind.outputs:
                outs = ", ".join(target_kind.outputs)
                add(("stages", name, key), f"stage {ref[0]!r} has no output {ref[1]!r}; expected one of: {outs}")
        _check_gathered(name, stage, stages, add)
        _check_trained_cfg(name, stage, stages, add)
    cycle = find_cycle({n: [d for d, _ in raw_dependencies(s) if d in stages and d != n] for n, s in stages.items()})
    if cycle:
        add(("stages", cycle[0]), "dependency cycle: " + " -> ".join(cycle + [cycle[0]]), key=True)
    return problems


def _check_gathered(name: str, stage: dict[str, Any], stages: dict[str, dict[str, Any]], add) -> None:  # noqa: ANN001
    """A gathering stage (compare) names the stages it gathers in a field: an unknown stage, or one
    of another kind, is reported at that field's line (its generated needs are not the user's)."""
    kind = KINDS.get(str(stage.get("kind")))
    field_name = getattr(kind, "gathers", None)
    value = stage.get(field_name) if field_name else None
    targets: list[tuple[Any, Loc]] = (
        [(value, ("stages", name, field_name))] if isinstance(value, str)
        else [(v, ("stages", name, field_name, i)) for i, v in enumerate(value)] if isinstance(value, list) else []
    )
    wanted = getattr(kind, "gathers_kinds", ())
    candidates = [n for n, s in stages.items() if str(s.get("kind")) in wanted]
    bases = list(dict.fromkeys(base_name(n) for n in candidates))
    expected = f"{' or '.join(wanted)} stages are: {', '.join(bases)}" if candidates \
        else f"the job has no {' or '.join(wanted)} stage"
    for target, loc in targets:
        if not isinstance(target, str) or not NAME_RE.match(target):
            continue  # malformed: the model reports it
        instances = [n for n in stages if n == target or base_name(n) == target]
        if not instances:
            add(loc, f"unknown stage {target!r}{_suggest(target, bases)}; {expected}")
            continue
        kinds = {str(stages[n].get("kind")) for n in instances}
        if wanted and not kinds <= set(wanted):
            add(loc, f"stage {target!r} is a {'/'.join(sorted(kinds))} stage; {stage.get('kind')} gathers "
                     f"{' or '.join(wanted)} stages ({expected})")


def _cfg_of(stage: dict[str, Any]) -> tuple[Any, Loc | None]:
    """The cfg a finetune or sweep stage trains with (written or default) and where it is written."""
    from cleftgan_hpc.jobspec.kinds.finetune import FinetuneSettings

    default = FinetuneSettings.model_fields["cfg"].default
    if stage.get("kind") == "finetune":
        return stage.get("cfg", default), ("cfg",) if "cfg" in stage else None
    base = stage.get("base") if isinstance(stage.get("base"), dict) else {}
    return base.get("cfg", default), ("base", "cfg") if "cfg" in base else None


def _check_trained_cfg(name: str, stage: dict[str, Any], stages: dict[str, dict[str, Any]], add) -> None:  # noqa: ANN001
    """A fine-tune (or sweep) of a network an earlier stage trains uses that stage's cfg: its
    network has that architecture (the stage checks the network itself again before it trains)."""
    if stage.get("kind") not in ("finetune", "sweep") or not isinstance(stage.get("network"), str):
        return
    ref = stage_ref(stage["network"])
    source = stages.get(ref[0]) if ref else None
    if source is None or source.get("kind") not in ("finetune", "sweep") or ref[1] not in (None, "network"):
        return
    cfg, where = _cfg_of(stage)
    trained, _ = _cfg_of(source)
    if isinstance(cfg, str) and isinstance(trained, str) and cfg != trained:
        add(("stages", name, *(where or ("network",))),
            f"cfg {cfg} does not fit network {stage['network']}: stage {ref[0]!r} trains it with cfg {trained}, and "
            f"a network keeps its architecture; set cfg: {trained}")


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One cycle of a dependency graph (stage -> its dependencies) as a list of names, or None."""
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in graph.get(n, []):
            if state.get(d) == 1:
                return stack[stack.index(d) :]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


# -- pydantic errors -> positioned problems ----------------------------------------------------


def _problem_from_pydantic(
    err: dict[str, Any],
    data: dict[str, Any],
    pos: Positions,
    file: str,
    from_env: typing.AbstractSet[Loc] = frozenset(),
) -> SpecProblem:
    raised = (err.get("ctx") or {}).get("error")
    loc = _data_loc(tuple(err["loc"]) + (raised.loc if isinstance(raised, FieldError) else ()), data)
    kind = err["type"]
    model = _model_at(loc[:-1], data) if loc else JobSpec
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = sorted(model.model_fields) if model else []
        hint = _suggest(key, allowed)
        msg = f"unknown field {key!r}{hint}" + (f"; allowed: {', '.join(allowed)}" if allowed and not hint else "")
        line, col = pos.of(loc, key=True)
    elif kind == "missing":
        msg = f"missing required field {loc[-1]!r}"
        desc = _description(model, str(loc[-1])) if model else None
        msg += f" ({desc})" if desc else ""
        line, col = pos.of(loc[:-1], key=True)
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        kinds = ", ".join(KINDS)
        got = err.get("input", {}).get("kind") if isinstance(err.get("input"), dict) else None
        msg = (
            f"unknown stage kind {got!r}; expected one of: {kinds}"
            if got
            else f"missing 'kind'; expected one of: {kinds}"
        )
        loc = loc + ("kind",) if got else loc
        line, col = pos.of(loc)
    else:
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        hidden = _hidden(loc, from_env)
        if "input" in err and kind not in ("value_error",) and not isinstance(err["input"], (dict, list)):
            msg += " (got a value that is not shown)" if hidden else f" (got {shown(err['input'])})"
        msg = _scrub(msg, err.get("input"), hidden)
        line, col = pos.of(loc)
    return SpecProblem(file, line, col, dotted(loc), msg)


def _hidden(loc: Loc, from_env: typing.AbstractSet[Loc]) -> bool:
    """Whether the values at ``loc`` must not be echoed: credentials by their field's name, the
    jobs' environment, and anything that came from the environment (at or under ``loc``)."""
    if loc[:2] == ("slurm", "env") or any(SECRET_NAME.search(str(p)) for p in loc):
        return True
    return any(e[: len(loc)] == loc for e in from_env)


def _strings(value: Any, depth: int = 0) -> list[str]:
    if isinstance(value, str):
        return [value]
    if depth > 3:
        return []
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    return [s for item in items for s in _strings(item, depth + 1)]


def _scrub(msg: str, value: Any, hidden: bool) -> str:
    """A validator's message with the value it quotes cut short, or removed when it must not show."""
    for text in sorted(_strings(value), key=len, reverse=True):
        if not text:
            continue
        secret = hidden or looks_secret(text)
        if not secret and len(text) <= 40:
            continue
        replacement = "<value not shown>" if secret else shown(text)
        msg = msg.replace(repr(text), replacement).replace(text, replacement)
    return msg


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "tuple", "none", "json-or-python"}


def _data_loc(loc: Loc, data: Any) -> Loc:
    """Drop the parts pydantic adds that are not in the file (union tags, validator names)."""
    out: list[str | int] = []
    node = data
    for part in loc:
        if (
            isinstance(node, dict)
            and part in node
            or isinstance(node, list)
            and isinstance(part, int)
            and 0 <= part < len(node)
        ):
            out.append(part)
            node = node[part]
        elif isinstance(part, str) and (part in KINDS or "[" in part or part in _TYPE_TAGS):
            continue  # a union member's tag ('literal[...]', 'str', a stage kind) or a validator's name
        else:
            out.append(part)
            node = None
    return tuple(out)


def _model_at(loc: Loc, data: Any) -> type[BaseModel] | None:
    """The model class that validates the mapping at ``loc`` (for field-name suggestions)."""
    model: Any = JobSpec
    node = data
    i = 0
    while i < len(loc):
        part = loc[i]
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        info = model.model_fields.get(str(part))
        if info is None:
            return None
        tp = _unwrap(info.annotation)
        node = node.get(part) if isinstance(node, dict) else None
        i += 1
        if typing.get_origin(tp) is dict:
            if i >= len(loc):
                return None
            node = node.get(loc[i]) if isinstance(node, dict) else None
            i += 1
            tp = _unwrap(typing.get_args(tp)[1])
            if tp is object or typing.get_origin(tp) in (typing.Union, types.UnionType):
                kind = node.get("kind") if isinstance(node, dict) else None
                tp = KINDS.get(kind) if isinstance(kind, str) else None
        model = tp
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return _unwrap(args[0])
        if all(typing.get_origin(_unwrap(a)) is None and isinstance(_unwrap(a), type) for a in args):
            models = [_unwrap(a) for a in args]
            if all(issubclass(m, BaseModel) for m in models):
                return typing.Union[tuple(models)]  # noqa: UP007
    return tp


def _description(model: type[BaseModel], name: str) -> str | None:
    info = model.model_fields.get(name)
    return info.description if info else None


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unique(problems: list[SpecProblem]) -> list[SpecProblem]:
    """Sorted by position, duplicates dropped, and the alternatives of a union at one place
    ("Input should be A" and "Input should be B") merged into one line."""
    out: list[SpecProblem] = []
    for p in sorted(problems, key=lambda p: (p.line, p.col)):
        prev = out[-1] if out else None
        if prev is not None and (prev.line, prev.col, prev.field) == (p.line, p.col, p.field):
            if p.message == prev.message:
                continue
            a, b = _alternative(prev.message), _alternative(p.message)
            if a and b and a[1] == b[1]:
                prev.message = f"Input should be {a[0]}, or {b[0]}{b[1]}"
                continue
        out.append(p)
    return _one_per_grid(out)


def _one_per_grid(problems: list[SpecProblem]) -> list[SpecProblem]:
    """One line for a problem every combination of a grid shares (same place, same message)."""
    out: list[SpecProblem] = []
    seen: dict[tuple[int, int, str, str], list] = {}
    for p in problems:
        general = re.sub(r"\[[^\]]*\]", "[*]", p.field)
        key = (p.line, p.col, general, p.message)
        if general != p.field and key in seen:
            seen[key][1].append(p.field)
            continue
        seen[key] = [p, [p.field]]
        out.append(p)
    for p, fields in seen.values():
        if len(fields) > 1:
            p.field = re.sub(r"\[[^\]]*\]", "[*]", p.field)
            names = [m.group(0) for f in fields for m in [re.search(r"\[[^\]]*\]", f)] if m]
            listed = f": {', '.join(names)}" if len(names) <= 4 else ""
            p.message += f" (in {len(fields)} combinations of the grid{listed})"
    return out


def _alternative(message: str) -> tuple[str, str] | None:
    """('A', ' (got x)') from 'Input should be A (got x)'."""
    m = re.fullmatch(r"Input should be (.*?)( \(got .*\))?", message)
    return (m.group(1), m.group(2) or "") if m else None
