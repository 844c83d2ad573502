"""CLI commands of the data package (wired into ``cleftgan-hpc`` by cli.py)."""

from __future__ import annotations

import argparse
from typing import Any


def add_commands(subparsers: Any) -> None:
    """Add ``make-demo-data`` to the CLI's subparsers (each sets ``func=handler``)."""
    p = subparsers.add_parser(
        "make-demo-data",
        help="draw synthetic toy faces with a cleft-like lip notch of known severity",
        description="Draw synthetic faces into DIR/images/ with DIR/landmarks.csv and DIR/labels.csv "
        "(file,severity,group; group 0 none, 1 incomplete, 2 complete). The same seed draws the same faces.",
    )
    p.add_argument("dir", metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--count", type=_positive, default=64, help="how many faces (default 64)")
    p.add_argument("--seed", type=_seed, default=0, help="random seed (default 0)")
    p.add_argument("--size", type=_size, default=256, help="photo width and height in pixels, 64..2048 (default 256)")
    p.set_defaults(func=make_demo_data_command)


def make_demo_data_command(args: argparse.Namespace) -> int:
    from cleftgan_hpc.data.demo_faces import make_demo_data

    s = make_demo_data(args.dir, args.count, args.seed, args.size)
    print(f"wrote {s.count} faces to {s.images} (none {s.groups[0]}, incomplete {s.groups[1]}, "
          f"complete {s.groups[2]}), {s.landmarks}, {s.labels}")
    return 0


def _int_in(lo: int, hi: int, what: str):  # noqa: ANN202 - an argparse type factory
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{what} must be in {lo}..{hi}, got {value}")
        return value

    return parse


_positive = _int_in(1, 1_000_000, "count")
_seed = _int_in(0, 2**32 - 1, "seed")
_size = _int_in(64, 2048, "size")
