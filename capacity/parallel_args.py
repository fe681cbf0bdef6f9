"""The devices on the command line, shared by `estimate`, `fit` and `validate`.

    --devices N                          data-parallel devices of one kind (default 1)
    --sharding {none,ddp,zero1,zero2,fsdp}
                                         how the model is spread over them (capacity/sharding.py);
                                         none for one device
    --offload-optimizer                  zero2/fsdp: sharded parameters, gradients, optimizer
                                         states and step on the host (FSDP2's CPUOffloadPolicy)
"""

from __future__ import annotations

import argparse

from .scenario import SHARDINGS, Parallel

SHARDING_HELP = ("ddp (DistributedDataParallel, replicated), zero1 (optimizer states sharded: torch's "
                 "ZeroRedundancyOptimizer), zero2 (and gradients: FSDP2 SHARD_GRAD_OP), fsdp (and "
                 "parameters: FSDP2 FULL_SHARD as accelerate wraps it); none: one device")


def add_parallel_arguments(p: argparse.ArgumentParser, what: str = "per device") -> None:
    g = p.add_argument_group("devices (docs/sharding.md)")
    g.add_argument("--devices", type=int, default=1, metavar="N",
                   help=f"data-parallel devices of one kind; figures are {what} (default 1)")
    g.add_argument("--sharding", default="none", choices=SHARDINGS, help=SHARDING_HELP + "; default none")
    g.add_argument("--offload-optimizer", action="store_true",
                   help="zero2/fsdp: sharded parameters, gradients and optimizer states on the host "
                        "(host memory reported separately)")


def parallel_from_args(args) -> Parallel:
    """The Parallel the parsed arguments name. ValueError on a bad combination."""
    if args.offload_optimizer and args.sharding not in ("zero2", "fsdp"):
        raise ValueError("--offload-optimizer: needs --sharding zero2 or fsdp (FSDP2's CPUOffloadPolicy)")
    if args.sharding == "none" and args.devices != 1:
        raise ValueError(f"--devices: {args.devices} devices need --sharding (ddp, zero1, zero2 or fsdp)")
    return Parallel(devices=args.devices, sharding=args.sharding, offload_optimizer=args.offload_optimizer)
