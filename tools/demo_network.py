"""Make a normal-face network for the demo faces, models/demo-normal-64.safetensors (`make demo-network`).

The paper's normal-face network is a StyleGAN trained on 70,000 normal faces (FFHQ) for days on
GPUs. The demo's is a small StyleGAN2 (64x64) of toy faces drawn *without* a notch, made on CPU
cores in three steps (work in progress: see docs/evaluation.md, "The demo's normal-face network",
for what the current recipe reaches and what it does not yet):

1. **Faces.** ``--count`` toy faces without a notch (seed 1000; the demo draws seed 0, so its
   faces are new to this network), aligned at 64 px as jobs/demo.yaml's preprocess does (FFHQ
   alignment, blurred background).
2. **Warm start.** A GAN learns these faces from scratch only after ~100 kimg, days on two CPU
   cores. So the synthesis network first learns to *draw* them, as the decoder of a variational
   autoencoder (a small convolutional encoder, pixel losses and a KL term, w ~ N(0, I)): this
   converges in a few thousand steps. The latent of that autoencoder is z, through the mapping
   network (trained with it), so sampling z ~ N(0, I), the autoencoder's prior, draws (blurry)
   faces, not colour blobs.
3. **GAN.** The finetune stage (cfg: stylegan2, the project's own training) trains it on the same
   faces against a discriminator, as any fine-tune does: jobs/demo-normal.yaml (``--gan-kimg``).
   Its network is copied to ``--out``.

The encoder is thrown away: the file holds G, D and G_ema like any network the fine-tune starts
from. Every step is seeded; the same command on the same machine makes the same file (another
CPU may round differently).
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
from torch import nn

from cleftgan_hpc.data.align import align_face, standardise_background
from cleftgan_hpc.data.dataset import write_dataset
from cleftgan_hpc.data.demo_faces import draw_face, face_rng
from cleftgan_hpc.model import Discriminator, StyleGAN2Generator
from cleftgan_hpc.model.checkpoint import Network, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RESOLUTION = 64
DRAW_SIZE = 128  # drawn at 128 px, aligned down to 64 (as jobs/demo.yaml)
BLUR_RADIUS = 2  # jobs/demo.yaml's preprocess: background blur, radius 2
SEED = 1000
ARCH = {"z_dim": 64, "w_dim": 64, "channel_base": 2048, "channel_max": 64, "mapping_layers": 2}  # 2 as StyleGAN3
MAPPING_LR = 0.2  # Adam's lr of the mapping's stored weights: their 0.01 lr multiplier makes it 0.002 in effect


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


def reconstruction_loss(img: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 + L2 per pixel, plus L1 of 4x4 block means (the layout before the details)."""
    d = img - target
    return d.abs().mean() + (d * d).mean() + (F.avg_pool2d(img, 4) - F.avg_pool2d(target, 4)).abs().mean()


def warm_start(faces: np.ndarray, steps: int, batch: int, kl_weight: float, seed: int) -> StyleGAN2Generator:
    """G that decodes z ~ N(0, I) into the faces: the decoder of a VAE (mapping and synthesis)."""
    torch.manual_seed(seed)
    x_all = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 127.5 - 1
    G = StyleGAN2Generator(ARCH["z_dim"], 0, ARCH["w_dim"], RESOLUTION, 3,
                           mapping_kwargs={"num_layers": ARCH["mapping_layers"]},
                           channel_base=ARCH["channel_base"], channel_max=ARCH["channel_max"])
    S, E = G.synthesis, Encoder(ARCH["z_dim"])
    opt = torch.optim.Adam([{"params": S.parameters(), "lr": 0.002}, {"params": E.parameters(), "lr": 0.001},
                            {"params": G.mapping.parameters(), "lr": MAPPING_LR}], betas=(0.5, 0.99))
    pick = torch.Generator().manual_seed(seed)
    t0 = time.monotonic()
    for step in range(steps):
        x = x_all[torch.randint(0, len(x_all), (batch,), generator=pick)]
        mean, log_var = E(x)
        z = mean + torch.randn(mean.shape, generator=pick) * (0.5 * log_var).exp()
        img = S(G.mapping(z, None), noise_mode="const")
        kl = (-0.5 * (1 + log_var - mean * mean - log_var.exp()).sum(dim=1)).mean()
        rec = reconstruction_loss(img, x)
        opt.zero_grad(set_to_none=True)
        (rec + kl_weight * kl).backward()
        opt.step()
        if step % 100 == 0 or step + 1 == steps:
            rate = (step + 1) / (time.monotonic() - t0)
            print(f"warm start: step {step + 1}/{steps} reconstruction {rec.item():.4f} KL {kl.item():.1f} "
                  f"({rate * batch:.0f} img/s, ETA {(steps - step - 1) / rate / 60:.1f} min)", flush=True)
    with torch.no_grad():  # the mean w: where truncation pulls to and where the severity index starts
        G.mapping.w_avg.copy_(G.mapping(torch.randn([10_000, G.z_dim], generator=pick), None)[:, 0].mean(dim=0))
    return G.eval().requires_grad_(False)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "models" / "demo-normal-64.safetensors")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "demo-normal")
    p.add_argument("--count", type=int, default=5000, help="normal faces drawn")
    p.add_argument("--warm-steps", type=int, default=2500, help="autoencoder steps")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--kl-weight", type=float, default=0.0005)
    p.add_argument("--gan-kimg", type=float, default=4, help="kimg of GAN training after the warm start")
    a = p.parse_args(argv)

    a.work.mkdir(parents=True, exist_ok=True)
    faces = draw_normal_faces(a.count, SEED)
    dataset = write_dataset(a.work / "normal-faces-64.zip", list(faces))
    G = warm_start(faces, a.warm_steps, a.batch, a.kl_weight, SEED)
    torch.manual_seed(SEED)
    D = Discriminator(0, RESOLUTION, 3, channel_base=ARCH["channel_base"], channel_max=ARCH["channel_max"])
    warm = a.work / "warm-start.safetensors"
    save_checkpoint(Network(G=G, D=D, G_ema=copy.deepcopy(G), extra={"demo_normal_network": {
        "faces": a.count, "seed": SEED, "warm_steps": a.warm_steps, "kl_weight": a.kl_weight, **ARCH}}), warm)
    print(f"warm start -> {warm}", flush=True)

    store = a.work / "store"
    shutil.rmtree(store, ignore_errors=True)
    env = {**os.environ, "CLEFTGAN_STORE": str(store), "DEMO_NORMAL_DATASET": str(dataset),
           "DEMO_NORMAL_WARM_START": str(warm), "DEMO_NORMAL_KIMG": str(a.gan_kimg)}
    cli = Path(sys.executable).with_name("cleftgan-hpc")
    subprocess.run([str(cli), "run", str(ROOT / "jobs" / "demo-normal.yaml")], env=env, check=True)
    trained = next(store.glob("runs/*/stages/normal_network/network.safetensors"))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(trained, a.out)
    print(f"normal-face network -> {a.out} ({a.out.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
