"""Make a normal-face network for the demo faces, models/demo-normal-64.safetensors (`make demo-network`).

The paper's normal-face network is a StyleGAN trained on 70,000 normal faces (FFHQ) for days on
GPUs. The demo's is a small StyleGAN2 (64x64) of toy faces drawn *without* a notch, made on two
CPU cores in about an hour (docs/evaluation.md, "The demo's normal-face network"):

1. **Faces.** ``--count`` toy faces without a notch (seed 1000; the demo draws seed 0, so its
   faces are new to this network), aligned at 64 px as jobs/demo.yaml's preprocess does (FFHQ
   alignment, blurred background).
2. **Autoencoder.** A GAN learns these faces from scratch only after ~100 kimg (days here), and
   a variational autoencoder's KL term keeps its decoder blurry (the eyes, which the severity
   index must redraw, were the first thing lost). So the synthesis network learns to *draw* the
   faces as the decoder of a plain autoencoder with a little noise on its w (``--plain-steps``),
   then a second phase weights the loss towards edges (``--detail-steps``, ``--edge-weight``):
   eyes, brows and lips. The mapping network is then fitted so that z ~ N(0, I) maps to the
   encoder's distribution of w (maximum mean discrepancy), so sampling z draws faces.
3. **GAN (optional, ``--gan-kimg``, 0 by default).** The finetune stage (cfg: stylegan2, the
   project's own training) can go on training it against a discriminator (jobs/demo-normal.yaml).
   The shipped file has none: on two cores the first tens of kimg made the faces worse.

The encoder is thrown away: the file holds G, G_ema and an untrained D (the demo's fine-tune
trains it), like any network a fine-tune starts from. Every step is seeded; the same command on
the same machine makes the same file (another CPU may round differently).
"""

from __future__ import annotations

import argparse
import copy
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from cleftgan_hpc.data.align import align_face, standardise_background
from cleftgan_hpc.data.dataset import write_dataset
from cleftgan_hpc.data.demo_faces import draw_face, face_rng
from cleftgan_hpc.model import Discriminator, StyleGAN2Generator, load_network
from cleftgan_hpc.model.checkpoint import Network, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RESOLUTION = 64
DRAW_SIZE = 128  # drawn at 128 px, aligned down to 64 (as jobs/demo.yaml)
BLUR_RADIUS = 2  # jobs/demo.yaml's preprocess: background blur, radius 2
SEED = 1000
ARCH = {"z_dim": 64, "w_dim": 64, "channel_base": 2048, "channel_max": 64, "mapping_layers": 2}  # 2 as StyleGAN3
MAPPING_LR = 0.2  # Adam's lr of the mapping's stored weights: their 0.01 lr multiplier makes it 0.002 in effect
W_NOISE = 0.1  # noise added to the encoder's w (unit variance) while the decoder learns


def draw_normal_faces(count: int, seed: int) -> np.ndarray:
    """uint8 [count, 64, 64, 3]: aligned toy faces without a notch."""
    out = np.empty((count, RESOLUTION, RESOLUTION, 3), np.uint8)
    t0 = time.monotonic()
    for i in range(count):
        face = draw_face(face_rng(seed, i), DRAW_SIZE, 0.0)
        img, lm = align_face(face.image, face.landmarks, RESOLUTION)
        out[i] = np.asarray(standardise_background(img, lm, "blur", blur_radius=BLUR_RADIUS))
        if (i + 1) % 1000 == 0 or i + 1 == count:
            rate = (i + 1) / (time.monotonic() - t0)
            print(f"faces: {i + 1}/{count} ({rate:.0f}/s, ETA {(count - i - 1) / rate:.0f} s)", flush=True)
    return out


class Encoder(nn.Module):
    """64x64 image -> (mean, log variance) of w: four stride-2 stages, then two dense layers."""

    def __init__(self, w_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for cin, cout in ((3, 32), (32, 64), (64, 64), (64, 64)):
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.2),
                       nn.Conv2d(cout, cout, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.convs = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Sequential(nn.Linear(64 * 4 * 4, 256), nn.LeakyReLU(0.2), nn.Linear(256, 2 * w_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.head(self.convs(x)).chunk(2, dim=1)
        return mean, log_var.clamp(-8, 4)


def image_gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Differences between vertical and between horizontal neighbours."""
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def reconstruction_loss(img: torch.Tensor, target: torch.Tensor, edge_weight: float) -> torch.Tensor:
    """L1 + L2 per pixel plus L1 of the image gradients (edges where the target has them).

    With ``edge_weight`` each pixel's error is weighted by 1 + edge_weight * the target's local
    edge strength: the eyes, brows and lips are a few percent of the pixels, and an unweighted
    loss learns them last; they are what the severity index must redraw sharply."""
    d = img - target
    target_grads = image_gradients(target)
    if edge_weight:
        gy, gx = target_grads
        edges = F.pad(gy.abs().sum(1, keepdim=True), (0, 0, 0, 1)) + F.pad(gx.abs().sum(1, keepdim=True), (0, 1))
        d = d * (1 + edge_weight * F.max_pool2d(edges, 3, 1, 1))
    grad_l1 = sum((a - b).abs().mean() for a, b in zip(image_gradients(img), target_grads, strict=True))
    return d.abs().mean() + (d * d).mean() + grad_l1


def fit_mapping(G: StyleGAN2Generator, w_real: torch.Tensor, pick: torch.Generator, steps: int = 600) -> float:
    """Train G's mapping so that mapping(z), z ~ N(0, I), is distributed as the encoder's w.

    The loss is the maximum mean discrepancy under a sum of Gaussian kernels of five widths: a
    distance between two sets of samples that needs no discriminator and cannot collapse to
    the mean (fitting by regression made every sample the mean face). Returns the last MMD."""
    M = copy.deepcopy(G.mapping).train()
    opt = torch.optim.Adam(M.parameters(), lr=MAPPING_LR, betas=(0.5, 0.99))
    mmd = torch.zeros(())
    for _ in range(steps):
        fake = M(torch.randn([512, G.z_dim], generator=pick), None)[:, 0]
        real = w_real[torch.randint(0, len(w_real), (512,), generator=pick)]
        both = torch.cat([fake, real])
        dist2 = torch.cdist(both, both).pow(2)
        k = sum(torch.exp(-dist2 / (2 * s * s * w_real.shape[1])) for s in (0.05, 0.1, 0.2, 0.5, 1.0))
        n = len(fake)
        mmd = k[:n, :n].mean() + k[n:, n:].mean() - 2 * k[:n, n:].mean()
        opt.zero_grad(set_to_none=True)
        mmd.backward()
        opt.step()
    G.mapping.load_state_dict(M.state_dict())
    with torch.no_grad():  # the mean w: where truncation pulls to and where the severity index starts
        G.mapping.w_avg.copy_(G.mapping(torch.randn([10_000, G.z_dim], generator=pick), None)[:, 0].mean(dim=0))
    return float(mmd)


def autoencoder_phase(faces: np.ndarray, steps: int, batch: int, seed: int, init: StyleGAN2Generator | None = None,
                      edge_weight: float = 0.0, hold_decoder: int = 0, label: str = "") -> StyleGAN2Generator:
    """One phase of the warm start: G's synthesis network as the decoder of an autoencoder.

    A convolutional encoder gives each face one w (kept near zero mean and unit variance by a
    small moment penalty); Gaussian noise of W_NOISE is added to it, so that the decoder also
    draws faces between the training faces; the synthesis network draws the face from that w in
    every layer. The learning rates fall linearly to 0 over the last 20% of the steps. Every
    2,000 steps and at the end the mapping is fitted to the encoder's w (``fit_mapping``).
    ``init``: continue from this G with a new encoder, the decoder held for ``hold_decoder``
    steps while the encoder catches up."""
    torch.manual_seed(seed)
    x_all = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 127.5 - 1
    G = StyleGAN2Generator(ARCH["z_dim"], 0, ARCH["w_dim"], RESOLUTION, 3,
                           mapping_kwargs={"num_layers": ARCH["mapping_layers"]},
                           channel_base=ARCH["channel_base"], channel_max=ARCH["channel_max"])
    if init is not None:
        G.load_state_dict(init.state_dict())
    G.train().requires_grad_(True)
    S, E = G.synthesis, Encoder(ARCH["w_dim"])
    base_lrs = (0.002, 0.001)
    groups = [{"params": S.parameters(), "lr": base_lrs[0]}, {"params": E.parameters(), "lr": base_lrs[1]}]
    opt = torch.optim.Adam(groups, betas=(0.5, 0.99))
    pick = torch.Generator().manual_seed(seed)
    t0 = time.monotonic()
    for step in range(steps):
        for group, lr in zip(opt.param_groups, base_lrs, strict=True):
            group["lr"] = lr * min(1.0, (steps - step) / (0.2 * steps))
        x = x_all[torch.randint(0, len(x_all), (batch,), generator=pick)]
        w = E(x)[0]
        moments = w.mean(0).pow(2).mean() + (w.var(0) - 1).pow(2).mean()
        w = w + W_NOISE * torch.randn(w.shape, generator=pick)
        img = S(w.unsqueeze(1).repeat(1, S.num_ws, 1), noise_mode="const")
        rec = reconstruction_loss(img, x, edge_weight)
        opt.zero_grad(set_to_none=True)
        (rec + 0.01 * moments).backward()
        if step < hold_decoder:
            for p in S.parameters():
                p.grad = None
        opt.step()
        if step % 100 == 0 or step + 1 == steps:
            rate = (step + 1) / (time.monotonic() - t0)
            print(f"warm start{label}: step {step + 1}/{steps} reconstruction {rec.item():.4f} "
                  f"({rate * batch:.0f} img/s, ETA {(steps - step - 1) / rate / 60:.1f} min)", flush=True)
        if (step + 1) % 2000 == 0 or step + 1 == steps:
            with torch.no_grad():
                w_real = torch.cat([E(chunk)[0] for chunk in x_all.split(256)])
            print(f"warm start{label}: mapping fitted, MMD {fit_mapping(G, w_real, pick):.4f}", flush=True)
    return G.eval().requires_grad_(False)


def sample_grid(G: StyleGAN2Generator, path: Path, seed: int = 7) -> None:
    """A 4x8 grid of the network's faces (z ~ N(0, I), no truncation), to look at."""
    with torch.no_grad():
        img = G(torch.randn([32, G.z_dim], generator=torch.Generator().manual_seed(seed)), None, noise_mode="const")
    u8 = ((img.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    rows = u8.reshape(4, 8, RESOLUTION, RESOLUTION, 3).transpose(0, 2, 1, 3, 4)
    grid = rows.reshape(4 * RESOLUTION, 8 * RESOLUTION, 3)
    Image.fromarray(grid).save(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "models" / "demo-normal-64.safetensors")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "demo-normal")
    p.add_argument("--count", type=int, default=5000, help="normal faces drawn")
    p.add_argument("--plain-steps", type=int, default=8000, help="autoencoder steps, unweighted loss")
    p.add_argument("--detail-steps", type=int, default=12000, help="autoencoder steps, edges weighted")
    p.add_argument("--edge-weight", type=float, default=3.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--gan-kimg", type=float, default=0, help="kimg of GAN training afterwards (0: none)")
    a = p.parse_args(argv)

    a.work.mkdir(parents=True, exist_ok=True)
    faces = draw_normal_faces(a.count, SEED)
    dataset = write_dataset(a.work / "normal-faces-64.zip", list(faces))
    G = autoencoder_phase(faces, a.plain_steps, a.batch, SEED, label=" (plain)")
    if a.detail_steps:
        G = autoencoder_phase(faces, a.detail_steps, a.batch, SEED, init=G, edge_weight=a.edge_weight,
                              hold_decoder=min(400, a.detail_steps // 10), label=" (detail)")
    torch.manual_seed(SEED)
    D = Discriminator(0, RESOLUTION, 3, channel_base=ARCH["channel_base"], channel_max=ARCH["channel_max"])
    recipe = {"faces": a.count, "seed": SEED, "plain_steps": a.plain_steps, "detail_steps": a.detail_steps,
              "edge_weight": a.edge_weight, "batch": a.batch, "w_noise": W_NOISE, "gan_kimg": a.gan_kimg, **ARCH}
    warm = a.work / "warm-start.safetensors"
    save_checkpoint(Network(G=G, D=D, G_ema=copy.deepcopy(G), extra={"demo_normal_network": recipe}), warm)
    print(f"warm start -> {warm}", flush=True)

    trained = warm
    if a.gan_kimg > 0:
        store = a.work / "store"
        shutil.rmtree(store, ignore_errors=True)
        env = {**os.environ, "CLEFTGAN_STORE": str(store), "DEMO_NORMAL_DATASET": str(dataset),
               "DEMO_NORMAL_WARM_START": str(warm), "DEMO_NORMAL_KIMG": str(a.gan_kimg)}
        cli = Path(sys.executable).with_name("cleftgan-hpc")
        subprocess.run([str(cli), "run", str(ROOT / "jobs" / "demo-normal.yaml")], env=env, check=True)
        trained = next(store.glob("runs/*/stages/normal_network/network.safetensors"))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(trained, a.out)
    sample_grid(load_network(a.out).generator(), a.work / "samples.png")
    print(f"normal-face network -> {a.out} ({a.out.stat().st_size / 2**20:.1f} MiB); its faces: "
          f"{a.work / 'samples.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
