"""Compile and self-check the Triton kernels for every StyleGAN3-T/R configuration and dtype
now, into Triton's cache: the image build runs it, so no job compiles at start.

    python -m cleftgan_hpc.model.ops.warm [--cache DIR]

With ``--cache`` (default: $CLEFTGAN_TRITON_PREBUILT), the kernels are written there (the
image's prebuilt cache, read by triton_cache.PrebuiltFirstCache at run time). Triton compiles
for the GPU it runs on: a build that sees no GPU (``docker build`` on most hosts) prebuilds
nothing and says so; kernels then compile at first use on each node into TRITON_CACHE_DIR.
Exit status 0 either way (the image works without them: a kernel that fails its self-check is
reported and left out); with ``--strict``, 1 when a kernel fails its self-check.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=os.environ.get("CLEFTGAN_TRITON_PREBUILT"),
                    help="the cache directory to fill (default: $CLEFTGAN_TRITON_PREBUILT)")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a kernel fails its self-check")
    a = ap.parse_args(argv)
    if a.cache:  # before triton is imported: it reads these when it compiles
        os.makedirs(a.cache, exist_ok=True)
        os.environ["TRITON_CACHE_DIR"] = a.cache
        os.environ.pop("TRITON_CACHE_MANAGER", None)  # write straight into it
    import torch

    from . import compiled

    if not torch.cuda.is_available():
        why = compiled.load_error() or "triton imports"
        print(f"warm: no GPU visible ({why}): no Triton kernel prebuilt; they compile at first use on each "
              "GPU node (into TRITON_CACHE_DIR), after their self-check")
        return 0
    dev = torch.device("cuda", 0)
    name, cap = torch.cuda.get_device_name(dev), torch.cuda.get_device_capability(dev)
    result = compiled.check_device(dev)
    print(f"warm: {name} (sm_{cap[0]}{cap[1]}): {result}; cache {a.cache or 'TRITON_CACHE_DIR'}")
    print(f"warm: prebuilt for sm_{cap[0]}{cap[1]} only; other GPU architectures compile at first use")
    failed = "self-check failed" in result or not result.startswith("triton kernels")
    if failed:
        print("warm: WARNING: not every kernel passed its self-check; those run as PyTorch ops", file=sys.stderr)
    return 1 if failed and a.strict else 0


if __name__ == "__main__":
    sys.exit(main())
