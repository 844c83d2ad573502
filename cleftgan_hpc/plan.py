"""From a validated spec to a Plan: stages in dependency order with resolved inputs, outputs
and resources. Pure: no store access, no torch, so `validate` and `plan` are instant."""

from __future__ import annotations

from dataclasses import dataclass, field

from cleftgan_hpc.jobspec.job import JobSpec
from cleftgan_hpc.jobspec.load import dependencies
from cleftgan_hpc.jobspec.models import Resources, config_digest, input_fields, stage_ref
from cleftgan_hpc.jobspec.stages import AnyStage
from cleftgan_hpc.layout import stage_prefix
from cleftgan_hpc.storage.base import join_key


@dataclass
class PlannedStage:
    """One stage as it will run: its config, what it waits for, reads and writes."""

    name: str
    config: AnyStage
    needs: list[str]
    inputs: dict[str, str]  # field -> a local path or store:KEY (upstream outputs resolved to keys)
    outputs: dict[str, str]  # output name -> store key
    resources: Resources
    fingerprint: str = ""  # changes when this stage's config or any upstream config changes
    work_fingerprint: str = ""  # the same without the fields its saved work survives (reusable_changes)

    @property
    def kind(self) -> str:
        return self.config.kind


@dataclass
class Plan:
    spec: JobSpec
    run_id: str
    stages: list[PlannedStage] = field(default_factory=list)

    def stage(self, name: str) -> PlannedStage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def downstream(self, name: str) -> list[str]:
        """Every stage that depends on ``name``, directly or not, in plan order."""
        hit = {name}
        for s in self.stages:
            if hit.intersection(s.needs):
                hit.add(s.name)
        return [s.name for s in self.stages if s.name in hit and s.name != name]


def topological_order(spec: JobSpec) -> list[str]:
    """Stages ordered so each comes after its dependencies; ties keep the spec's order."""
    order: list[str] = []
    done: set[str] = set()
    remaining = list(spec.stages)
    while remaining:
        ready = [n for n in remaining if all(d in done for d in dependencies(spec, n))]
        if not ready:  # the loader rejects cycles; this guards direct callers
            raise ValueError(f"dependency cycle among {remaining}")
        order.append(ready[0])
        done.add(ready[0])
        remaining.remove(ready[0])
    return order


def output_keys(run_id: str, stage: str, config: AnyStage) -> dict[str, str]:
    prefix = stage_prefix(run_id, stage)
    return {name: join_key(prefix, filename) for name, filename in type(config).outputs.items()}


def _digest(config: dict, upstream: list[str]) -> str:
    return config_digest({"config": config, "upstream": upstream})


def make_plan(spec: JobSpec, run_id: str) -> Plan:
    plan = Plan(spec, run_id)
    fingerprints: dict[str, str] = {}
    outputs_of: dict[str, dict[str, str]] = {}
    for name in topological_order(spec):
        cfg = spec.stages[name]
        inputs: dict[str, str] = {}
        for f in input_fields(type(cfg)):
            value = getattr(cfg, f)
            if value is None:
                continue
            ref = stage_ref(value)
            if ref is not None:
                outs = outputs_of[ref[0]]
                value = "store:" + outs[ref[1] or type(spec.stages[ref[0]]).default_output]
            inputs[f] = value
        deps = dependencies(spec, name)
        upstream = [fingerprints[d] for d in deps]
        fingerprints[name] = _digest(cfg.model_dump(mode="json", exclude={"resources"}), upstream)
        work = _digest(cfg.model_dump(mode="json", exclude={"resources", *type(cfg).reusable_changes}), upstream)
        outputs_of[name] = output_keys(run_id, name, cfg)
        plan.stages.append(
            PlannedStage(
                name, cfg, deps, inputs, outputs_of[name], spec.resources_of(name), fingerprints[name], work
            )
        )
    return plan


def format_plan(plan: Plan) -> str:
    """The plan as text: one block per stage, in order."""
    lines = [
        f"job {plan.spec.name}: {len(plan.stages)} stages, backend {plan.spec.backend}, store {plan.spec.store.url}"
    ]
    lines.append(f"run {plan.run_id}")
    for i, s in enumerate(plan.stages, 1):
        r = s.resources
        lines.append("")
        lines.append(f"{i}. {s.name} ({s.kind})" + (f"  after {', '.join(s.needs)}" if s.needs else ""))
        lines.append(f"   resources: {r.gpus} GPU, {r.cpus_per_task} CPU, {r.mem_gb:g} GiB, {r.time}")
        for k, v in s.inputs.items():
            lines.append(f"   in  {k:<14} {v}")
        for k, v in s.outputs.items():
            lines.append(f"   out {k:<14} {v}")
    return "\n".join(lines)
