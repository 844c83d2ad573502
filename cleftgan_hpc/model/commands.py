"""CLI commands of the model package: `convert`, `export` and `generate` (torch is imported only when they run)."""

from __future__ import annotations

import argparse
from typing import Any


def _seeds(text: str) -> list[int]:
    from .generate import parse_seeds

    try:
        return parse_seeds(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def _pair(text: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected X,Y (two numbers), got {text!r}") from e
    return x, y


def add_commands(subparsers: Any) -> None:
    """Register `convert`, `export` and `generate` on the main CLI's subparsers."""
    p = subparsers.add_parser(
        "convert",
        help="convert an official StyleGAN2/3 pickle to our safetensors network file",
        description="Read IN (official pickle, loaded safely without running code from it) and write OUT "
        "(safetensors weights + JSON hyperparameters).",
    )
    p.add_argument("input", metavar="IN.pkl", help="official network pickle (or one of our network files)")
    p.add_argument("output", metavar="OUT", help="output network file, e.g. network.safetensors")
    p.set_defaults(func=convert_command)

    p = subparsers.add_parser(
        "export",
        help="write a network as a pickle for the reference StyleGAN3 code and its tools",
        description="Read NETWORK (our file or an official pickle) and write OUT.pkl, which the reference's "
        "legacy.load_network_pkl loads into its own classes (the pickle names them, carries no code).",
    )
    p.add_argument("input", metavar="NETWORK", help="our network file or an official pickle")
    p.add_argument("output", metavar="OUT.pkl", help="output pickle for the reference implementation")
    p.set_defaults(func=export_command)

    p = subparsers.add_parser(
        "generate",
        help="generate images from a network file",
        description="Sample images, one per seed (z = RandomState(seed).randn(1, z_dim), as the reference does).",
    )
    p.add_argument("--network", required=True, metavar="FILE", help="official pickle or our network file")
    p.add_argument("--seeds", required=True, type=_seeds, metavar="LIST", help="seeds, e.g. 0-15 or 1,5,9")
    p.add_argument("--trunc", type=float, default=1.0, metavar="PSI", help="truncation psi (default 1)")
    p.add_argument("--trunc-cutoff", type=int, default=None, metavar="N", help="truncate only the first N ws")
    p.add_argument("--class", dest="class_idx", type=int, default=None, metavar="K", help="class (conditional nets)")
    p.add_argument("--translate", type=_pair, default=(0.0, 0.0), metavar="X,Y", help="translate the input")
    p.add_argument("--rotate", type=float, default=0.0, metavar="DEG", help="rotate the input (degrees)")
    p.add_argument("--batch", type=int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--out", required=True, metavar="DIR_OR_GRID.png", help="a .png grid, or a directory")
    p.set_defaults(func=generate_command)


def convert_command(args: argparse.Namespace) -> int:
    """`convert IN OUT`: official pickle -> our network file."""
    from ..errors import CleftGanError
    from . import load_network, save_checkpoint

    net = load_network(args.input)  # every problem with IN is a CleftGanError naming it
    try:
        save_checkpoint(net, args.output)
    except OSError as e:
        raise CleftGanError(f"cannot write {args.output}: {e.strerror or e}") from e
    present = [k for k in ("G", "D", "G_ema") if getattr(net, k) is not None]
    print(f"wrote {args.output} ({', '.join(present)}; augment_p={net.augment_p})")
    return 0


def export_command(args: argparse.Namespace) -> int:
    """`export NETWORK OUT.pkl`: any network file -> a pickle the reference loads."""
    from ..errors import CleftGanError
    from . import load_network
    from .export import export_file

    net = load_network(args.input)
    try:
        export_file(net, args.output)
    except OSError as e:
        raise CleftGanError(f"cannot write {args.output}: {e.strerror or e}") from e
    print(f"wrote {args.output} (G, D, G_ema for the reference's legacy.load_network_pkl)")
    return 0


def generate_command(args: argparse.Namespace) -> int:
    """`generate`: images for seeds, into a grid PNG or a directory."""
    from . import load_network
    from .generate import generate_images, save_images, set_transform

    g = load_network(args.network).generator()
    set_transform(g, args.translate, args.rotate)
    images = generate_images(
        g,
        args.seeds,
        truncation_psi=args.trunc,
        class_idx=args.class_idx,
        truncation_cutoff=args.trunc_cutoff,
        batch_size=max(1, args.batch),
        device=args.device,
    )
    paths = save_images(images, args.seeds, args.out)
    print(f"wrote {len(args.seeds)} image(s) to {paths[0] if len(paths) == 1 else args.out}")
    return 0
