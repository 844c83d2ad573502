"""CLI commands: `synthesize`, `pull` and `regenerate` (torch and boto3 are imported only when they run)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from cleftgan_hpc.errors import CleftGanError


def _spec_default(field: str) -> object:
    """A synthesize spec field's default: the CLI and the YAML spec share one source."""
    from cleftgan_hpc.jobspec.kinds.synthesize import SynthesizeStage

    return SynthesizeStage.model_fields[field].default


def add_commands(subparsers: Any) -> None:
    """Register `synthesize`, `pull` and `regenerate` on the main CLI's subparsers."""
    p = subparsers.add_parser(
        "synthesize",
        help="write a seeded synthetic dataset as WebDataset shards into a store",
        description="Sample a network for a range of seeds into datasets/NAME/ in the store: tar shards, then "
        "manifest.json (written last). With --task-index/--tasks (or SLURM_ARRAY_TASK_ID) only that task's "
        "shards are made; a run without a task index makes what is missing, verifies and commits.",
    )
    p.add_argument("--network", required=True, metavar="FILE", help="official pickle or our network file")
    p.add_argument("--store", required=True, metavar="URL", help="file://DIR or s3://BUCKET[/PREFIX]")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint (SeaweedFS, MinIO...); AWS if unset")
    p.add_argument("--dataset", required=True, metavar="NAME",
                   help="dataset name (datasets/NAME/) or a prefix TEAM/NAME (not under runs/ or cache/)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--count", type=int, help="number of images (seeds --first-seed ...)")
    what.add_argument("--seeds", metavar="A-B", help="inclusive seed range instead of --count")
    p.add_argument("--first-seed", type=int, default=None, help="first seed with --count (default 0)")
    p.add_argument("--psi", type=float, default=1.0, help="truncation psi (default 1)")
    p.add_argument("--cutoff", type=int, default=None, help="truncation cutoff (first N ws)")
    p.add_argument("--labels", default=None, metavar="K|uniform|W0,W1,...",
                   help="conditional networks: a class, 'uniform', or weights per class")
    p.add_argument("--format", default="png", choices=["png", "jpeg", "webp"])
    p.add_argument("--quality", type=int, default=None, help="JPEG/WebP quality")
    p.add_argument("--resize", type=int, default=None, metavar="PX", help="resize to PX x PX")
    p.add_argument(
        "--shard-size", type=int, default=None, help=f"images per shard (default {_spec_default('shard_size')})"
    )
    p.add_argument(
        "--batch", type=int, default=None, help=f"images per forward pass (default {_spec_default('batch')})"
    )
    p.add_argument("--tasks", type=int, default=None, help="number of tasks (default SLURM_ARRAY_TASK_COUNT or 1)")
    p.add_argument("--task-index", type=int, default=None, help="this task (default SLURM_ARRAY_TASK_ID)")
    p.add_argument("--commit", action="store_true", help="run as the commit step even inside a Slurm array task")
    p.add_argument("--workers", type=int, default=None, help="encoding processes (default: CPUs - 1)")
    p.add_argument(
        "--upload-concurrency", type=int, default=None,
        help=f"shards uploaded at once (default {_spec_default('upload_concurrency')})",
    )
    p.add_argument("--overwrite", action="store_true", help="replace a dataset made with other options")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--scratch", default=None, help="local scratch directory (default: $TMPDIR/cleftgan-hpc)")
    p.set_defaults(func=synthesize_command)

    p = subparsers.add_parser(
        "pull",
        help="download a committed dataset (parallel, resumable, sha256-checked)",
        description="Copy a dataset's shards and its network file into DEST, checking each against the "
        "manifest's sha256. Refuses a dataset without manifest.json (not committed). Shards already in DEST are "
        "kept, and so are those an earlier pull committed there. With --shards, DEST's manifest lists only the "
        "shards copied (subset_of names the original); once DEST holds every shard it is the original manifest.",
    )
    p.add_argument("url", metavar="DATASET_URL", help="s3://BUCKET/.../datasets/NAME, file://DIR/datasets/NAME")
    p.add_argument("dest", metavar="DEST", help="local directory")
    p.add_argument("--shards", default=None, metavar="RANGE", help="only these shards, e.g. 0-9,12")
    p.add_argument("--verify", action="store_true", help="also re-hash shards already in DEST (re-fetch if bad)")
    p.add_argument("--jobs", type=int, default=8, help="parallel downloads (default 8)")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint; AWS if unset")
    p.set_defaults(func=pull_command)

    p = subparsers.add_parser(
        "regenerate",
        help="rebuild one image of a dataset from its manifest and compare with the stored one",
        description="Recompute the image of SEED from the manifest's network and options; exit 0 when it is "
        "byte-identical to the stored image, 1 when not, 2 when no comparison was made (an error, e.g. no "
        "network: the dataset or copy has none and --network is not given).",
    )
    p.add_argument("url", metavar="DATASET_URL")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--network", default=None, metavar="FILE", help="the network (default: the dataset's copy)")
    p.add_argument("--out", default=None, metavar="FILE", help="also write the rebuilt image here")
    p.add_argument("--device", default="cpu")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint; AWS if unset")
    p.set_defaults(func=regenerate_command)


def _env_int(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(raw)  # type: ignore[arg-type]
    except ValueError:
        raise CleftGanError(f"{name}={raw!r} is not an integer") from None


def _labels(text: str | None) -> int | str | list[float] | None:
    if text is None or text == "uniform":
        return text
    try:
        return int(text) if "," not in text and "." not in text else [float(w) for w in text.split(",")]
    except ValueError:
        raise CleftGanError(f"--labels {text!r}: expected a class index, 'uniform' or weights like 0.5,0.5") from None


def _task(args: argparse.Namespace) -> tuple[int | None, int]:
    """(task index or None for the commit, number of tasks), from the flags or Slurm's environment."""
    tasks = args.tasks or _env_int("SLURM_ARRAY_TASK_COUNT") or 1
    index = args.task_index
    if index is None and not args.commit:
        index = _env_int("SLURM_ARRAY_TASK_ID")
        if index is not None:
            index -= _env_int("SLURM_ARRAY_TASK_MIN") or 0
    if args.commit:
        index = None
    if index is not None and not 0 <= index < tasks:
        raise CleftGanError(f"task index {index} is out of range 0..{tasks - 1} (--tasks {tasks})")
    return index, tasks


def synthesize_command(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from cleftgan_hpc.jobspec.kinds.synthesize import SynthesizeStage
    from cleftgan_hpc.jobspec.models import StoreConfig
    from cleftgan_hpc.layout import check_dataset

    try:  # first, and by its flag's name: the name decides what overwrite may delete
        check_dataset(args.dataset)
    except ValueError as e:
        raise CleftGanError(f"--dataset: {e}") from None
    task, tasks = _task(args)
    fields: dict[str, Any] = {
        "kind": "synthesize", "network": str(Path(args.network).absolute()), "count": args.count,
        "seeds": args.seeds, "truncation_psi": args.psi, "truncation_cutoff": args.cutoff,
        "labels": _labels(args.labels), "format": args.format, "quality": args.quality, "resize": args.resize,
        "dataset": args.dataset, "tasks": tasks, "workers": args.workers, "overwrite": args.overwrite,
    }
    for name in ("shard_size", "batch", "upload_concurrency"):  # unset: the spec's default
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.first_seed is not None:
        fields["first_seed"] = args.first_seed
    try:
        cfg = SynthesizeStage.model_validate(fields)
        store_cfg = StoreConfig(url=args.store, endpoint_url=args.endpoint_url)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or 'options'}: {err['msg']}" for err in e.errors())
        raise CleftGanError(f"bad synthesize options: {problems}") from None
    network = Path(args.network)
    if not network.is_file():
        raise CleftGanError(f"--network {network}: no such file")
    return _run_synthesis(cfg, store_cfg, network, task, args)


def _run_synthesis(cfg: Any, store_cfg: Any, network: Path, task: int | None, args: argparse.Namespace) -> int:
    import signal
    import threading

    import torch

    from cleftgan_hpc.context import EXIT_REQUEUE, StopRequested
    from cleftgan_hpc.execute import scratch_root
    from cleftgan_hpc.progress import Progress
    from cleftgan_hpc.storage import open_store
    from cleftgan_hpc.synthesis.build import synthesize

    log = logging.getLogger("cleftgan_hpc.synthesize")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGUSR2):  # Slurm's warning before a time-out or preemption
        signal.signal(sig, lambda *_: stop.set())
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    name = "commit" if task is None else f"task{task}"
    scratch = Path(args.scratch) if args.scratch else scratch_root() / "synthesize" / cfg.dataset.replace("/", "_")
    progress = Progress(cfg.image_count if task is None else None, f"synthesize {cfg.dataset}", "images", logger=log)
    try:
        manifest = synthesize(cfg, open_store(store_cfg), network, scratch=scratch / name, task=task, device=device,
                              cpus=cpus, log=log, should_stop=stop.is_set, on_images=progress.update)
    except StopRequested as e:
        log.warning(str(e))
        return EXIT_REQUEUE
    progress.close()
    where = f"{store_cfg.url.rstrip('/')}/{cfg.prefix}"
    if manifest is not None:
        print(f"committed {where}: {manifest['count']} images in {len(manifest['shards'])} shards")
    else:
        print(f"task {task}/{cfg.tasks} done ({where}); commit with the same command without a task index")
    return 0


def pull_command(args: argparse.Namespace) -> int:
    from cleftgan_hpc.synthesis.manifest import open_source
    from cleftgan_hpc.synthesis.pull import pull

    report = pull(open_source(args.url, args.endpoint_url), Path(args.dest), shards=args.shards, verify=args.verify,
                  jobs=args.jobs)
    print(f"pulled {args.url} into {args.dest}: {len(report.downloaded)} downloaded, {len(report.present)} already "
          f"there" + (f", {len(report.repaired)} re-fetched (local copy was damaged)" if report.repaired else "")
          + ("" if report.complete else f"; a partial copy of {report.shards} shards"))
    if report.network == "missing":
        print("note: the dataset has no network file; regenerate on this copy needs --network FILE", file=sys.stderr)
    return 0


def regenerate_command(args: argparse.Namespace) -> int:
    from cleftgan_hpc.synthesis.manifest import open_source
    from cleftgan_hpc.synthesis.regenerate import EXIT_ERROR, regenerate

    try:
        r = regenerate(open_source(args.url, args.endpoint_url), args.seed,
                       network=Path(args.network) if args.network else None, device=args.device)
    except CleftGanError as exc:  # 2, not 1: 1 means "rebuilt and differs"
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.out:
        Path(args.out).write_bytes(r.image)
    verdict = "matches" if r.matches else "DIFFERS from"
    print(f"seed {r.seed}: rebuilt image {verdict} the stored one in {r.shard} (sha256 {r.sha256[:16]}...)")
    return r.exit_code


def main(argv: list[str] | None = None) -> int:
    """``python -m cleftgan_hpc.synthesis.commands COMMAND ...``: these commands without the main CLI."""
    parser = argparse.ArgumentParser(prog="python -m cleftgan_hpc.synthesis.commands")
    add_commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CleftGanError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
