"""Ray Tune for sweep stages: each trial is the finetune stage itself.

A trial trains under ``<sweep stage>/trials/<trial>/`` in the run's store and reports its
metric and the store key of its checkpoint at every snapshot. Tune's own experiment state
lives in the store too (``<sweep stage>/tune/``), so a sweep started again after its job died
continues from it (``Tuner.restore``) instead of starting over. ``import ray`` happens here only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cleftgan_hpc.context import StageContext
from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.jobspec.kinds.finetune import FinetuneSettings
from cleftgan_hpc.jobspec.kinds.sweep import Domain, SweepStage
from cleftgan_hpc.jobspec.models import StoreConfig
from cleftgan_hpc.jobspec.stages import FinetuneStage


@dataclass(frozen=True)
class TrialSetup:
    """What every trial needs, passed to Ray once (picklable: no open store, no modules)."""

    store: StoreConfig
    run_id: str
    sweep_stage: str
    sweep: SweepStage
    scratch: str
    device: str


def trial_config(sweep: SweepStage, sampled: dict[str, Any], seed_offset: int) -> FinetuneStage:
    """The finetune config of one trial: the base settings, the sampled values, the sweep's inputs."""
    fields = sweep.base.model_dump()
    fields.update(sampled)
    fields.update(
        kind="finetune",
        network=sweep.network,
        dataset=sweep.dataset,
        feature_extractor=sweep.feature_extractor,
        kimg=sweep.kimg_per_trial,
        metrics=[sweep.metric] + [m for m in fields.get("metrics", []) if m != sweep.metric],
        seed=(sweep.seed + seed_offset) % 2**31,
    )
    if "snapshot_kimg" not in sweep.base.model_fields_set:  # four reports per trial unless told
        fields["snapshot_kimg"] = sweep.kimg_per_trial / 4
    return FinetuneStage.model_validate(fields)


def trial_index(trial_id: str) -> int:
    """Tune's trial ids end in the trial's number ("466a5_00003" -> 3)."""
    tail = trial_id.rsplit("_", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def run_trial(config: dict[str, Any], setup: TrialSetup) -> None:
    """The Tune trainable: the finetune stage with a reporting hook."""
    import torch
    from ray import tune

    from cleftgan_hpc.stages import finetune
    from cleftgan_hpc.storage import open_store

    torch.set_num_threads(max(1, int(setup.sweep.trial_resources.cpus)))  # trials share the node's cores
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"):
        os.environ.pop(var, None)  # a trial is one process, whatever the job around Ray looks like
    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(setup.sweep, config, trial_index(trial_id))
    name = f"{setup.sweep_stage}/trials/{trial_id}"
    scratch = Path(setup.scratch) / "trials" / trial_id
    scratch.mkdir(parents=True, exist_ok=True)
    log = logging.getLogger(f"cleftgan_hpc.trial.{trial_id}")
    log.setLevel(logging.INFO)
    log.propagate = False
    log.handlers.clear()
    handler = logging.FileHandler(scratch / "log.txt")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    ctx = StageContext(
        store=open_store(setup.store),
        run_id=setup.run_id,
        stage=name,
        scratch=scratch,
        log=log,
        device=setup.device,
    )
    start_from = None
    restored = tune.get_checkpoint()
    if restored is not None:  # a restored trial, or a PBT clone of another trial
        with restored.as_directory() as d:
            start_from = json.loads((Path(d) / "pointer.json").read_text())["key"]

    def report(snapshot: dict[str, Any]) -> None:
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "pointer.json").write_text(json.dumps({"key": snapshot["checkpoint"]}))
            metrics = {k: v for k, v in snapshot.items() if k != "checkpoint"}
            metrics["checkpoint_key"] = snapshot["checkpoint"]
            metrics["trial_id"] = trial_id  # names the trial's prefix in the store: trials/<trial_id>/
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))

    try:
        finetune.run(cfg, ctx, on_snapshot=report, start_from=start_from)
    except Exception:
        log.exception("trial failed")
        raise
    finally:
        handler.flush()
        ctx.store.put_file(ctx.key("log.txt"), scratch / "log.txt")


def _gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([g for g in visible.split(",") if g])
    import torch

    return torch.cuda.device_count()


def _domain(tune: Any, d: Domain) -> Any:
    if d.grid is not None:
        return tune.grid_search(d.grid)
    if d.choice is not None:
        return tune.choice(d.choice)
    if d.uniform is not None:
        return tune.uniform(*d.uniform)
    assert d.loguniform is not None
    return tune.loguniform(*d.loguniform)


def _storage(store: StoreConfig, key: str) -> tuple[str, Any]:
    """Tune's storage path (and pyarrow filesystem) for a key of the run's store."""
    if store.scheme == "file":
        return str(store.local_root / key), None
    from cleftgan_hpc.stages.sweep_storage import store_filesystem

    return key, store_filesystem(store)


def run_sweep(cfg: SweepStage, ctx: StageContext) -> dict[str, Any]:
    """Run (or resume) the sweep; returns every trial's config, history and last result."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    if ctx.store_config is None:
        raise CleftGanError("a sweep needs the store's config to hand to its trials")
    trial_device = ctx.device if cfg.trial_resources.gpus > 0 else "cpu"
    setup = TrialSetup(ctx.store_config, ctx.run_id, ctx.stage, cfg, str(ctx.scratch), trial_device)
    # Ray's sockets must fit in a unix path (~107 bytes): a short directory under our scratch root.
    tmp = Path(os.environ.get("CLEFTGAN_SCRATCH") or tempfile.gettempdir()) / (
        "ray-" + hashlib.sha256(f"{ctx.run_id}/{ctx.stage}".encode()).hexdigest()[:8]
    )
    tmp.mkdir(parents=True, exist_ok=True)
    storage_path, filesystem = _storage(setup.store, ctx.key("tune"))
    name = "sweep"
    space: dict[str, Any] = {k: _domain(tune, d) for k, d in cfg.space.items()}
    metric, mode = cfg.metric, "min"
    if cfg.scheduler == "asha":
        scheduler: Any = ASHAScheduler(
            time_attr="kimg",
            max_t=cfg.kimg_per_trial,
            grace_period=cfg.grace_period_kimg,
            reduction_factor=cfg.reduction_factor,
        )
    elif cfg.scheduler == "pbt":
        scheduler = PopulationBasedTraining(
            time_attr="kimg", perturbation_interval=cfg.perturbation_kimg, hyperparam_mutations=space
        )
    else:
        scheduler = FIFOScheduler()
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # Seeded sampling: the same sweep spec draws the same trial settings.
    search_alg: Any = BasicVariantGenerator(random_state=cfg.seed, max_concurrent=cfg.max_concurrent)
    if cfg.search == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError as exc:
            raise CleftGanError("search: optuna needs the optuna package (pip install optuna)") from exc
        search_alg = OptunaSearch(seed=cfg.seed)

    ctx.log.info(
        f"sweep: {cfg.num_samples} sample(s) over {', '.join(cfg.space)}, {cfg.scheduler} on {metric}, "
        f"{cfg.kimg_per_trial:g} kimg per trial; Tune state in {storage_path}"
    )
    if os.environ.get("RAY_ADDRESS"):  # a Ray cluster started for this job (the Slurm backend)
        ctx.log.info(f"joining the Ray cluster at {os.environ['RAY_ADDRESS']}")
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=True, configure_logging=False)
    else:  # a private instance sized to this stage, its files under our scratch, gone afterwards
        cpus = max(int(cfg.trial_resources.cpus), ctx.cpus)
        gpus = _gpu_count() if ctx.device == "cuda" else 0
        ray.init(num_cpus=cpus, num_gpus=gpus if ctx.device == "cuda" else 0, include_dashboard=False,
                 _temp_dir=str(tmp), log_to_driver=True, configure_logging=False)
    try:
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, setup=setup),
            {"cpu": cfg.trial_resources.cpus, "gpu": cfg.trial_resources.gpus},
        )
        experiment = f"{storage_path}/{name}"
        can_restore = (
            tune.Tuner.can_restore(experiment, storage_filesystem=filesystem)
            if filesystem
            else tune.Tuner.can_restore(experiment)
        )
        if can_restore:
            ctx.log.info(f"resuming the sweep from {experiment}")
            kwargs = {"storage_filesystem": filesystem} if filesystem else {}
            tuner = tune.Tuner.restore(experiment, trainable=trainable, resume_errored=True, **kwargs)
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=space,
                tune_config=tune.TuneConfig(
                    metric=metric,
                    mode=mode,
                    scheduler=scheduler,
                    num_samples=cfg.num_samples,
                    max_concurrent_trials=cfg.max_concurrent or None,
                    search_alg=search_alg,
                ),
                run_config=tune.RunConfig(
                    name=name, storage_path=storage_path, storage_filesystem=filesystem, verbose=1
                ),
            )
        grid = tuner.fit()
        trials = []
        for result in grid:
            history = result.metrics_dataframe.to_dict("records") if result.metrics_dataframe is not None else []
            trials.append(
                {
                    "trial": (result.metrics or {}).get("trial_id")  # its store prefix: trials/<trial>/
                    or (result.path.rsplit("/", 1)[-1] if result.path else None),
                    "config": {k: v for k, v in (result.config or {}).items() if k in FinetuneSettings.model_fields},
                    "status": "error"
                    if result.error
                    else "finished"
                    if (result.metrics or {}).get("kimg", 0) >= cfg.kimg_per_trial - 1e-9
                    else "stopped early",
                    "error": str(result.error) if result.error else None,
                    "last": {k: v for k, v in (result.metrics or {}).items() if isinstance(v, (int, float, str))},
                    "history": [{k: h[k] for k in ("kimg", metric, "checkpoint_key") if k in h} for h in history],
                }
            )
        return {"metric": metric, "trials": trials}
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
