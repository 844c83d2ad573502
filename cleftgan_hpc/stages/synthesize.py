"""The synthesize stage: a seeded synthetic dataset in WebDataset shards under ``datasets/<name>/``.

With ``ctx.task`` set (one Slurm array task) it makes only that task's block of shards; without
(the whole stage locally, or the commit job after the array) it makes whatever is missing,
verifies every shard and writes the manifest. Killed at any moment, it resumes on the next call.
"""

from __future__ import annotations

from cleftgan_hpc.context import StageContext
from cleftgan_hpc.jobspec.kinds.synthesize import SynthesizeStage


def run(cfg: SynthesizeStage, ctx: StageContext) -> dict[str, str]:
    from cleftgan_hpc.synthesis.build import synthesize

    network = ctx.fetch(cfg.network)
    total = None if ctx.task is not None else cfg.image_count
    progress = ctx.progress(total, f"synthesize {cfg.dataset}", "images")
    manifest = synthesize(
        cfg, ctx.store, network, scratch=ctx.scratch / "shards", task=ctx.task, device=ctx.device, cpus=ctx.cpus,
        log=ctx.log, should_stop=ctx.should_stop, on_images=progress.update,
    )
    progress.close()
    if manifest is None:  # an array task: the commit job records the outputs
        return {}
    # a copy beside the stage's other records, so stage:NAME resolves to a real file
    ctx.store.put_json(ctx.key(SynthesizeStage.outputs["manifest"]), manifest)
    return {"manifest": ctx.key(SynthesizeStage.outputs["manifest"])}
