"""Helpers of the report tests: the small job they run, the command line, and loading a page in the
browser with the checks every load must pass."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import pytest
from browser import CHROMIUM, Browser, PageLoad

JOB = """
name: rep
store: file://./store
resources:
  cpus_per_task: 2
stages:
  faces:
    kind: demo_data
    count: 16
    seed: 0
    size: 128
  dataset:
    kind: preprocess
    images: stage:faces.images
    landmarks: stage:faces.landmarks
    labels: stage:faces.labels
    label_column: group
    resolution: 32
    workers: 1
  train:
    kind: finetune
    network: random
    random_network: {channel_base: 256, channel_max: 16, z_dim: 16, w_dim: 16}
    dataset: stage:dataset
    kimg: 0.048
    batch: 8
    snapshot_kimg: 0.016
    augment: bgc
    ada_kimg: 0.5
    ada_interval: 1
    metrics: [kid]
    feature_extractor: demo
    metric_samples: 16
    grid_seeds: 9
  samples:
    kind: synthesize
    network: stage:train
    count: 40
    shard_size: 20
    dataset: rep-faces
  evaluate:
    kind: evaluate
    network: stage:train
    dataset: stage:dataset
    metrics: [fid, kid, ppl, dish]
    num_images: 32
    feature_extractor: demo
    lpips: demo
    severity_model: demo
    ppl: {samples: 16}
    kid_subset_size: 16
  severity:
    kind: severity
    normal_network: stage:train
    dataset: stage:dataset
    ratings: stage:faces.labels
    photo_names: stage:dataset.report
    index: {batch: 4, projection: {steps: 2, w_avg_samples: 50}, adaptation: {steps: 1}}
    overlays: 2
    extremes: 2
"""


def cli(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cleftgan_hpc.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def install_chromium() -> str:
    """The Chromium binary; installed from Debian's packages when missing (root only)."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.geteuid() != 0:
        pytest.skip(f"the browser tests need Chromium at {CHROMIUM}: install it (apt-get install chromium), "
                    "or run the tests as root, which installs it")
    if shutil.which("apt-get") is None:
        pytest.skip("the browser tests need Chromium from Debian's packages, and this machine has no apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                                                "chromium"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1200, check=False)
        if proc.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return CHROMIUM


@dataclass
class DemoRun:
    root: Path  # the job's directory: job.yaml, store/
    midway: Path  # the report of the run while train was running (report --out)
    stopped: str  # the report the interrupted launcher wrote (HTML text)
    stopped_output: str  # what the interrupted `run` printed
    output: str  # what the resumed `run` printed

    @property
    def report(self) -> Path:
        return self.root / "store" / "runs" / "rep-1" / "report.html"


def load(browser: Browser, page: Path) -> PageLoad:
    _, result = browser.open(page.resolve().as_uri())
    assert result.errors == [], result.errors
    assert all(url.startswith("data:") for url in result.requests), result.requests  # nothing from a network
    assert result.images, "the page shows images"
    broken = [i["alt"] for i in result.images if not (i["complete"] and i["naturalWidth"] > 0)]
    assert broken == [], f"images that did not load: {broken}"
    return result


def stage_states(text: str) -> dict[str, str]:
    """stage -> state, from the rows of the stage table in the page's text (cells are tab-separated)."""
    lines = text.splitlines()
    first = lines.index("stage\tkind\tstate\ttry\tstarted\ttook\thost\tlog\tdetail") + 1
    states = {}
    for line in lines[first:]:
        cells = line.split("\t")
        if len(cells) < 3:
            break
        states[cells[0]] = cells[2]
    return states


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href and not href.startswith("#"):
            self.hrefs.append(href)
