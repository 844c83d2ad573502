"""The spec reference (every field, its type, default and meaning), generated from the models."""

from __future__ import annotations

import inspect
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from cleftgan_hpc.jobspec.grid import GRID_REFERENCE
from cleftgan_hpc.jobspec.job import JobSpec
from cleftgan_hpc.jobspec.models import (
    ContainerConfig,
    Resources,
    SlurmConfig,
    StageBase,
    StoreConfig,
    input_fields,
)
from cleftgan_hpc.jobspec.stages import KINDS


def _type_name(tp: object) -> str:
    if typing.get_origin(tp) is typing.Annotated:
        return _type_name(typing.get_args(tp)[0])
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        args = [_type_name(a) for a in typing.get_args(tp) if a is not type(None)]
        name = getattr(origin, "__name__", str(origin))
        if name in ("Union", "UnionType"):
            return " | ".join(args) + (" | null" if type(None) in typing.get_args(tp) else "")
        return f"{name}[{', '.join(args)}]"
    return getattr(tp, "__name__", str(tp))


def model_table(model: type[BaseModel], skip: tuple[str, ...] = ()) -> str:
    inputs = set(input_fields(model))
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for name, info in model.model_fields.items():
        if name in skip:
            continue
        if info.default is PydanticUndefined and info.default_factory is None:
            default = "**required**"
        elif info.default_factory is not None:
            value = info.default_factory()  # type: ignore[call-arg]
            default = "(see its table)" if isinstance(value, BaseModel) else f"`{value!r}`"
        else:
            default = f"`{info.default!r}`" if info.default is not None else "`null`"
        tname = "input" if name in inputs else _type_name(info.annotation)
        tname = tname.replace("|", "or")
        desc = (info.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | {tname} | {default} | {desc} |")
    return "\n".join(rows)


def nested_models(model: type[BaseModel]) -> list[tuple[str, type[BaseModel]]]:
    """(field, model) for the fields of ``model`` that hold a model of their own (e.g. ``ppl:``)."""
    found = []
    for name, info in model.model_fields.items():
        candidates = [info.annotation, *typing.get_args(info.annotation)]
        for tp in candidates:
            if isinstance(tp, type) and issubclass(tp, BaseModel):
                found.append((name, tp))
                break
    return found


def nested_parts(kind: str, path: str, model: type[BaseModel]) -> list[str]:
    """The table of a nested model, then those of the models nested in it (``index.projection``)."""
    parts = [f"#### `{kind}` → `{path}`", inspect.cleandoc(model.__doc__ or ""), model_table(model)]
    for field, sub in nested_models(model):
        parts += nested_parts(kind, f"{path}.{field}", sub)
    return parts


def spec_reference() -> str:
    parts = [
        "### Job",
        model_table(JobSpec),
        "### `store`",
        inspect.cleandoc(StoreConfig.__doc__ or ""),
        model_table(StoreConfig),
        "### `resources` (job default and per stage)",
        model_table(Resources),
        "### `slurm` (with `backend: slurm`)",
        inspect.cleandoc(SlurmConfig.__doc__ or ""),
        model_table(SlurmConfig),
        "### `slurm.container`",
        inspect.cleandoc(ContainerConfig.__doc__ or ""),
        model_table(ContainerConfig),
        "### Every stage",
        model_table(StageBase)
        + f"\n| `kind` | {' or '.join(repr(k) for k in KINDS)} | **required** | What the stage does (tables below). |",
        "### `grid` (on any stage)",
        GRID_REFERENCE,
    ]
    for kind, model in KINDS.items():
        outs = ", ".join(f"`{k}` ({v})" for k, v in model.outputs.items())
        parts += [
            f"### `kind: {kind}`",
            inspect.cleandoc(model.__doc__ or ""),
            model_table(model, skip=("needs", "resources", "kind")),
            f"Outputs: {outs}; `stage:NAME` alone means `{model.default_output}`.",
        ]
        for field, sub in nested_models(model):
            if field != "resources":
                parts += nested_parts(kind, field, sub)
    parts.append(
        "An **input** is a local path (relative to the spec's directory), `store:KEY` (a key or prefix in the "
        "job's store) or `stage:NAME[.OUTPUT]` (what an earlier stage of the same run produced; "
        "it also orders the stages)."
    )
    return "\n\n".join(p.strip() for p in parts) + "\n"


REFERENCE_PAGE = "docs/reference.md"

PAGE_HEADER = """# Spec reference

For people writing job specs: every field of a spec, its type, default and meaning.

Generated from the models by `make reference` (`cleftgan-hpc schema` prints the same text); a test
fails when this page is out of date. Do not edit it by hand: edit the field descriptions in
`cleftgan_hpc/jobspec/` and regenerate. How the stages behave is in [stages.md](stages.md), the
Slurm fields in context in [slurm.md](slurm.md).

"""


def write_reference(path: str = REFERENCE_PAGE) -> None:
    """Write the spec reference page (a header, then ``spec_reference()``) to ``path``."""
    from pathlib import Path

    page = Path(path)
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(PAGE_HEADER + spec_reference())


if __name__ == "__main__":
    import sys

    write_reference(sys.argv[1] if len(sys.argv) > 1 else REFERENCE_PAGE)
