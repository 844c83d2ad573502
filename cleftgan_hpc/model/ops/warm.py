"""Fill Triton's cache with the filtered leaky ReLU's kernels at image build time, so that no
job compiles them at start.

    python -m cleftgan_hpc.model.ops.warm [--cache DIR] [--archs "80;90"] [--strict]

1. Without a GPU: compiles every kernel variant StyleGAN3-T/R use (each dtype; forward with and
   without codes; backward) for each GPU architecture in ``--archs`` (default
   $CLEFTGAN_TRITON_ARCHS, else "80;90": A100, H100/H200), with Triton's own compiler and
   its bundled ptxas (compiled.prebuild). About 2-3 minutes per architecture on 2 CPU cores.
2. With a GPU visible (a Docker daemon whose default runtime is nvidia, `apptainer build
   --nv`): also compiles for that GPU and runs every configuration's self-check now.

The kernels are written to ``--cache`` (default $CLEFTGAN_TRITON_PREBUILT), the image's
prebuilt cache read by triton_cache.PrebuiltFirstCache at run time. Another architecture
compiles at first use on a node into TRITON_CACHE_DIR; the self-check against the PyTorch
ops runs at first use in every job either way. Exit status 0 (the image works without the
kernels: what fails is reported and left to the PyTorch ops); with ``--strict``, 1 when a
kernel fails to compile or its self-check.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def parse_archs(text: str) -> list[int]:
    """ "80;90" or "8.0 9.0" or "sm_80,sm_90" -> [80, 90]; "" or "none" -> []."""
    out = []
    if text.strip().lower() == "none":
        return out
    for part in text.replace(",", ";").replace(" ", ";").split(";"):
        part = part.strip().lower().removeprefix("sm_").replace("+ptx", "")
        if part:
            out.append(int(float(part) * 10) if "." in part else int(part))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=os.environ.get("CLEFTGAN_TRITON_PREBUILT"),
                    help="the cache directory to fill (default: $CLEFTGAN_TRITON_PREBUILT)")
    ap.add_argument("--archs", default=os.environ.get("CLEFTGAN_TRITON_ARCHS", "80;90"),
                    help='GPU architectures to compile for without a GPU, e.g. "80;90" ("" or none: none)')
    ap.add_argument("--strict", action="store_true", help="exit 1 when a kernel fails to compile or its self-check")
    a = ap.parse_args(argv)
    archs = parse_archs(a.archs)
    if a.cache:  # before triton compiles anything: it reads these then
        os.makedirs(a.cache, exist_ok=True)
        os.environ["TRITON_CACHE_DIR"] = a.cache
        os.environ.pop("TRITON_CACHE_MANAGER", None)  # write straight into it
    import torch

    from . import compiled

    where = a.cache or "TRITON_CACHE_DIR"
    if compiled.kernels() is None:
        print(f"warm: the Triton kernels do not load ({compiled.load_error()}): nothing prebuilt; "
              "the networks run on PyTorch ops")
        return 1 if a.strict else 0
    failed = False
    for arch in archs:
        t0 = time.perf_counter()
        errors = compiled.prebuild([arch])[arch]
        failed |= bool(errors)
        print(f"warm: sm_{arch}: compiled without a GPU into {where} in {time.perf_counter() - t0:.0f} s"
              + (f"; {len(errors)} failed: " + "; ".join(errors) if errors else ""))
    if torch.cuda.is_available():
        dev = torch.device("cuda", 0)
        name, cap = torch.cuda.get_device_name(dev), torch.cuda.get_device_capability(dev)
        result = compiled.check_device(dev)
        failed |= "self-check failed" in result or not result.startswith("triton kernels")
        print(f"warm: {name} (sm_{cap[0]}{cap[1]}): {result}; cache {where}")
    else:
        print("warm: no GPU visible: the self-checks run at first use on each GPU node"
              + ("" if archs else "; no --archs: nothing compiled now"))
    if archs:
        print(f"warm: prebuilt for sm_{', sm_'.join(map(str, archs))}; other GPU architectures compile at "
              "first use (into TRITON_CACHE_DIR)")
    if failed:
        print("warm: WARNING: not every kernel compiled or passed its self-check; those run as PyTorch ops",
              file=sys.stderr)
    return 1 if failed and a.strict else 0


if __name__ == "__main__":
    sys.exit(main())
