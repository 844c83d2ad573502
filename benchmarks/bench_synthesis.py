"""Synthesis throughput and memory, in one run:

1. generator-only images/s (the device's ceiling: batched forward passes, nothing else);
2. end-to-end images/s of the synthesis pipeline into a file:// store and into a real S3 server
   (SeaweedFS started here), as a fraction of 1;
3. shard upload MB/s of our concurrent create-only uploads (the pipeline's upload pool, at
   the spec's default upload_concurrency) against a plain single-threaded boto3 put_object
   loop over the same files, once per link model in --links:
   - ``direct``: straight to the S3 server on this machine;
   - ``RTTms`` or ``RTTms@RATEMB/s``: through latency_proxy.py, a TCP forwarder that adds the
     round-trip time and, with a rate, caps every connection at it (an emulated remote store).
     The default ``50ms@85MB/s`` takes its numbers from AWS's "Performance design patterns for
     Amazon S3": small requests take roughly 100-200 ms (a PUT pays 2 RTTs here, with
     botocore's ``Expect: 100-continue``, so 50 ms RTT is 100 ms a PUT), and one connection
     carries about 85-90 MB/s ("make one concurrent request for each 85-90 MB/s");
4. peak RSS of the pipeline process for 2,000 and 20,000 images (memory must stay flat).

    python benchmarks/bench_synthesis.py                  # a random 64x64 StyleGAN3 network
    python benchmarks/bench_synthesis.py --network FILE --device cuda --images 5000
    python benchmarks/bench_synthesis.py --only upload --links direct,20ms,50ms@85MB/s

Item 4 runs the pipeline in child processes with a stand-in generator (a fixed random linear map
from z to a noise image, 64x64) so that 20,000 images take seconds, not an hour of CPU
generation: it measures the pipeline's memory (queues, encoders, tar files, uploads), which is
what must not grow with the count.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # latency_proxy

# torch and the package are imported inside functions: the encoding workers are spawned and
# re-import this file, and should not pay for torch

LOG = logging.getLogger("bench")


def random_network(path: Path, resolution: int = 64) -> Path:
    import torch

    from cleftgan_hpc.model import Generator, Network, save_checkpoint

    torch.manual_seed(0)
    g = Generator(32, 0, 32, resolution, 3, channel_base=1024, channel_max=32, num_fp16_res=0)
    save_checkpoint(Network(G=g, G_ema=g), path)
    return path


def bench_generator(net: Path, images: int, batch: int, device: str) -> float:
    import torch

    from cleftgan_hpc.synthesis.generate import generate_batch, load_generator

    g = load_generator(net, device)
    generate_batch(g, list(range(batch)), [None] * batch, 1.0, None, device)  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for start in range(0, images, batch):
        seeds = list(range(start, min(start + batch, images)))
        generate_batch(g, seeds, [None] * len(seeds), 1.0, None, device)  # returns host uint8: synchronises
    return images / (time.perf_counter() - t0)


def bench_end_to_end(
    store: object, net: Path, images: int, batch: int, device: str, cpus: int, name: str, scratch: Path
) -> float:
    from cleftgan_hpc.jobspec.kinds.synthesize import SynthesizeStage
    from cleftgan_hpc.synthesis.build import synthesize

    cfg = SynthesizeStage.model_validate(
        {
            "kind": "synthesize",
            "network": str(net),
            "count": images,
            "shard_size": max(1, images // 8),
            "batch": batch,
            "dataset": name,
            "workers": max(1, cpus - 1),
            "upload_concurrency": 4,
        }
    )
    t0 = time.perf_counter()
    synthesize(cfg, store, net, scratch=scratch / name, device=device, cpus=cpus, log=LOG)  # type: ignore[arg-type]
    return images / (time.perf_counter() - t0)


def bench_upload(endpoint: str, bucket: str, files: list[Path], tag: str, concurrency: int) -> tuple[float, float]:
    """(our concurrent create-only uploads MB/s, plain single-threaded boto3 put loop MB/s)."""
    import boto3
    from botocore.config import Config

    from cleftgan_hpc.storage.s3 import S3Store

    total = sum(f.stat().st_size for f in files) / 1e6
    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        config=Config(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            s3={"addressing_style": "path"},
        ),
    )
    t0 = time.perf_counter()
    for i, f in enumerate(files):
        client.put_object(Bucket=bucket, Key=f"plain-{tag}/{i}.tar", Body=f.read_bytes())
    plain = total / (time.perf_counter() - t0)

    store = S3Store(bucket, f"ours-{tag}", endpoint_url=endpoint)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:  # what the pipeline's upload pool does
        list(pool.map(lambda a: store.put_file(f"shard-{a[0]:06d}.tar", a[1], if_absent=True), enumerate(files)))
    ours = total / (time.perf_counter() - t0)
    return ours, plain


def request_latency_ms(endpoint: str, bucket: str, n: int = 7) -> float:
    """Median time of a small request (HEAD bucket) on a kept-alive connection, in ms."""
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=endpoint, config=Config(s3={"addressing_style": "path"}))
    client.head_bucket(Bucket=bucket)  # connect
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.head_bucket(Bucket=bucket)
        times.append(time.perf_counter() - t0)
    return sorted(times)[n // 2] * 1e3


def stand_in_generator(z_dim: int = 32, res: int = 64) -> object:
    """A generator-shaped stand-in: z -> a 64x64 noise-like image through a fixed random matrix."""
    import torch

    class StandIn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.z_dim, self.c_dim, self.w_dim, self.img_resolution, self.img_channels = z_dim, 0, z_dim, res, 3
            self.init_kwargs = {"stand_in": True}
            torch.manual_seed(0)
            self.proj = torch.nn.Linear(z_dim, 3 * res * res)

        def forward(self, z: torch.Tensor, c: object = None, **_: object) -> torch.Tensor:
            return torch.tanh(self.proj(z)).view(len(z), 3, res, res)  # [N, 3, H, W]

    return StandIn().eval()


def peak_rss_mib() -> float:
    """This process's peak RSS (VmHWM). Not ru_maxrss: Linux carries that over exec from the parent that
    spawned us, so a big parent would hide the child's own peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_child(images: int, workdir: Path) -> None:
    """Run the pipeline with the stand-in generator; print this process's peak RSS (MiB) as JSON."""
    import torch

    from cleftgan_hpc.jobspec.kinds.synthesize import SynthesizeStage
    from cleftgan_hpc.storage.local import LocalStore
    from cleftgan_hpc.synthesis.layout import all_shards, options_digest
    from cleftgan_hpc.synthesis.pipeline import Pipeline, Recipe

    torch.set_num_threads(1)
    store = LocalStore(workdir / "store")
    recipe = Recipe(
        prefix=f"datasets/rss{images}",
        options_sha256=options_digest({"n": images}),
        network_sha256="0",
        truncation_psi=1.0,
        truncation_cutoff=None,
        labels=None,
        fmt="png",
        quality=None,
        resize=None,
        batch=32,
    )
    g = stand_in_generator()
    before = peak_rss_mib()
    t0 = time.perf_counter()
    concurrency = SynthesizeStage.model_fields["upload_concurrency"].default  # what ships
    Pipeline(g, recipe, store, workdir / f"scratch{images}", workers=1, upload_concurrency=concurrency).run(
        all_shards(0, images, 500)
    )
    peak = peak_rss_mib()
    print(
        json.dumps(
            {
                "images": images,
                "peak_rss_mib": round(peak, 1),
                "peak_before_mib": round(before, 1),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


def bench_rss(images: int, workdir: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--rss-child", str(images), "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=3600,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Link:
    """How the uploads reach the S3 server: directly, or through the latency proxy."""

    rtt_ms: float = 0.0
    conn_mb_s: float | None = None  # per connection; None: no cap

    @property
    def direct(self) -> bool:
        return self.rtt_ms == 0 and self.conn_mb_s is None

    def __str__(self) -> str:
        if self.direct:
            return "direct"
        return f"{self.rtt_ms:g}ms" + (f"@{self.conn_mb_s:g}MB/s" if self.conn_mb_s else "")


def parse_links(text: str) -> list[Link]:
    """``direct,20ms,50ms@85MB/s`` -> links."""
    links = []
    for item in filter(None, (x.strip() for x in text.split(","))):
        if item == "direct":
            links.append(Link())
            continue
        m = re.fullmatch(r"(\d+(?:\.\d+)?)ms(?:@(\d+(?:\.\d+)?)MB/s)?", item)
        if m is None:
            raise SystemExit(f"--links: {item!r} is not 'direct', 'RTTms' or 'RTTms@RATEMB/s' (e.g. 50ms@85MB/s)")
        links.append(Link(float(m[1]), float(m[2]) if m[2] else None))
    if not links:
        raise SystemExit("--links: no link given")
    return links


def run_uploads(a: argparse.Namespace, endpoint: str, files: list[Path], results: dict[str, object]) -> None:
    """Item 3 once per link, rounds alternating between the links (a shared machine drifts), best of
    --repeat rounds for each side."""
    from latency_proxy import LatencyProxy

    target = urlsplit(endpoint)
    assert target.hostname is not None and target.port is not None
    links = parse_links(a.links)
    with contextlib.ExitStack() as stack:
        urls = {}
        for link in links:
            if link.direct:
                urls[link] = endpoint
                continue
            rate = link.conn_mb_s * 1e6 if link.conn_mb_s else None
            proxy = stack.enter_context(
                LatencyProxy(target.hostname, target.port, link.rtt_ms / 1e3, conn_bytes_per_s=rate)
            )
            urls[link] = proxy.url
            print(f"link {link}: a small request takes {request_latency_ms(proxy.url, 'bench'):.1f} ms", flush=True)
        print(f"link direct: a small request takes {request_latency_ms(endpoint, 'bench'):.1f} ms", flush=True)
        rounds: dict[Link, list[tuple[float, float]]] = {link: [] for link in links}
        for r in range(a.repeat):
            for n, link in enumerate(links):
                rounds[link].append(bench_upload(urls[link], "bench", files, f"r{r}l{n}", a.upload_concurrency))
                ours, plain = rounds[link][-1]
                print(f"upload round {r}, {link}: ours {ours:.1f} / plain {plain:.1f} MB/s", flush=True)
    table = []
    for link in links:
        ours, plain = max(x[0] for x in rounds[link]), max(x[1] for x in rounds[link])
        table.append(
            {
                "link": str(link),
                "ours_mb_s": round(ours, 1),
                "plain_boto3_mb_s": round(plain, 1),
                "ratio": round(ours / plain, 2),
            }
        )
        print(
            f"upload, {str(link):>14}: ours {ours:6.1f} MB/s, plain boto3 loop {plain:6.1f} MB/s ({ours / plain:.2f}x)",
            flush=True,
        )
    results["upload"] = table
    results["upload_concurrency"] = a.upload_concurrency


ITEMS = ("pipeline", "upload", "rss")  # items 1-2, 3, 4


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--network", default=None, help="network file (default: a random 64x64 StyleGAN3-T)")
    p.add_argument("--images", type=int, default=400, help="images for items 1-2 (default 400)")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeat", type=int, default=2, help="rounds of items 1-3; the best of each is kept")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cpus", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--only", default=",".join(ITEMS), help=f"comma-separated items to run, of {', '.join(ITEMS)}")
    p.add_argument("--upload-files", type=int, default=24, help="files for item 3 (default 24 x 8 MiB)")
    p.add_argument("--upload-mib", type=int, default=8)
    p.add_argument("--upload-concurrency", type=int, default=None, help="default: the synthesize spec's default")
    p.add_argument(
        "--links",
        default="direct,20ms,50ms@85MB/s",
        help="link models for item 3: direct, RTTms, RTTms@RATEMB/s (default: direct,20ms,50ms@85MB/s)",
    )
    p.add_argument("--rss-counts", default="2000,20000")
    p.add_argument("--rss-child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.rss_child is not None:
        rss_child(a.rss_child, Path(a.workdir))
        return
    items = {x.strip() for x in a.only.split(",") if x.strip()}
    if not items or items - set(ITEMS):
        p.error(f"--only: choose from {', '.join(ITEMS)}")
    parse_links(a.links)  # fail before any work

    import torch
    from services.s3_server import start_s3_server

    from cleftgan_hpc.jobspec.kinds.synthesize import SynthesizeStage
    from cleftgan_hpc.storage.s3 import S3Store

    if a.upload_concurrency is None:
        a.upload_concurrency = SynthesizeStage.model_fields["upload_concurrency"].default
    results: dict[str, object] = {"cpus": a.cpus, "device": a.device, "torch": torch.__version__}
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp_name:
        tmp = Path(tmp_name)
        if items & {"pipeline", "upload"}:
            server = start_s3_server(tmp / "s3")
            for k, v in server.env().items():
                os.environ[k] = v
            try:
                s3 = S3Store("bench", "", endpoint_url=server.endpoint_url)
                s3.ensure_bucket()
                results["s3_server"] = server.kind
                if "pipeline" in items:
                    run_pipeline(a, s3, server.kind, tmp, results)
                if "upload" in items:
                    files = []
                    for i in range(a.upload_files):
                        f = tmp / f"up{i}.tar"
                        f.write_bytes(os.urandom(a.upload_mib << 20))
                        files.append(f)
                    upload_mb = sum(f.stat().st_size for f in files) / 1e6
                    print(
                        f"upload: {len(files)} files, {upload_mb:.0f} MB; "
                        f"ours = {a.upload_concurrency} concurrent create-only puts",
                        flush=True,
                    )
                    run_uploads(a, server.endpoint_url, files, results)
            finally:
                server.stop()

        if "rss" in items:
            for n in (int(x) for x in a.rss_counts.split(",")):
                r = bench_rss(n, tmp)
                results[f"peak_rss_mib_{n}"] = r["peak_rss_mib"]
                print(
                    f"peak RSS, {n} images (stand-in generator): {r['peak_rss_mib']:.1f} MiB "
                    f"({r['peak_before_mib']:.1f} MiB before the pipeline started) in {r['seconds']} s",
                    flush=True,
                )
    print(json.dumps(results, indent=2))


def run_pipeline(a: argparse.Namespace, s3: object, server_kind: str, tmp: Path, results: dict[str, object]) -> None:
    """Items 1-2: generator only, then the pipeline into a file store and into S3, alternating."""
    import torch

    from cleftgan_hpc.storage.local import LocalStore

    net = Path(a.network) if a.network else random_network(tmp / "net.safetensors")
    results.update(
        network=a.network or "random StyleGAN3-T 64x64 (channel_base 1024, channel_max 32)",
        images=a.images,
        batch=a.batch,
    )
    if a.device == "cpu":  # one core generates, the others encode: the same split the pipeline uses
        torch.set_num_threads(max(1, a.cpus - max(1, a.cpus - 1)))  # = what synthesize() sets
    # shared machines are noisy: the three measurements alternate, best of --repeat rounds each
    gens, locals_, remotes = [], [], []
    for r in range(a.repeat):
        gens.append(bench_generator(net, a.images, a.batch, a.device))
        locals_.append(
            bench_end_to_end(
                LocalStore(tmp / "store"), net, a.images, a.batch, a.device, a.cpus, f"local{r}", tmp / "scratch"
            )
        )
        remotes.append(bench_end_to_end(s3, net, a.images, a.batch, a.device, a.cpus, f"s3-{r}", tmp / "scratch"))
        print(
            f"round {r}: generator {gens[-1]:.1f}, file store {locals_[-1]:.1f}, S3 {remotes[-1]:.1f} img/s",
            flush=True,
        )
    gen, local, remote = max(gens), max(locals_), max(remotes)
    results.update(
        generator_only_img_s=round(gen, 1),
        end_to_end_local_img_s=round(local, 1),
        end_to_end_s3_img_s=round(remote, 1),
    )
    print(f"generator only:         {gen:8.1f} img/s", flush=True)
    print(f"end to end, file store: {local:8.1f} img/s ({local / gen:.2f}x generator-only)", flush=True)
    print(f"end to end, S3 ({server_kind}): {remote:8.1f} img/s ({remote / gen:.2f}x generator-only)", flush=True)


if __name__ == "__main__":
    main()
