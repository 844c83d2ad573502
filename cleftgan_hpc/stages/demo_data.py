"""The demo_data stage: synthetic toy faces with known cleft severity (see data/demo_faces.py).

Outputs: ``images/`` (one object per photo), ``landmarks.csv`` and ``labels.csv``. Drawing is
deterministic per seed, so a re-run after an interruption redraws the same bytes; objects
already in the store with the same sha256 are not uploaded again. The CSVs go up last, so a
consumer that finds them finds every photo they name.
"""

from __future__ import annotations

import shutil

from cleftgan_hpc.context import StageContext, StopRequested
from cleftgan_hpc.data.demo_faces import make_demo_data
from cleftgan_hpc.jobspec.stages import DemoDataStage
from cleftgan_hpc.storage.base import join_key, sha256_file


def run(cfg: DemoDataStage, ctx: StageContext) -> dict[str, str]:
    work = ctx.scratch / "demo_data"
    shutil.rmtree(work, ignore_errors=True)
    summary = make_demo_data(work, cfg.count, cfg.seed, cfg.size, cfg.clefts)
    ctx.log.info(f"drew {summary.count} faces at {cfg.size}px (none/incomplete/complete: {summary.groups})")

    outputs = {name: ctx.key(file) for name, file in DemoDataStage.outputs.items()}
    files = sorted(p for p in summary.images.iterdir() if not p.name.startswith("."))
    progress = ctx.progress(len(files), "upload demo images", "files")
    for path in files:
        if ctx.should_stop():
            raise StopRequested("demo_data stopped while uploading; it redraws the same faces on resume")
        key = join_key(outputs["images"], path.name)
        info = ctx.store.head(key)
        if info is None or info.sha256 != sha256_file(path):
            ctx.store.put_file(key, path)
        progress.update()
    progress.close()
    for name, path in (("landmarks", summary.landmarks), ("labels", summary.labels)):
        ctx.store.put_file(outputs[name], path)
    return outputs
