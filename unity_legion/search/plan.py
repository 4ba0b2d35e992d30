"""Planning entry points shared by `model.compile`, scripts/train.py and scripts/search.py: the
machine model of the job in hand, search options from flags, and the search itself. Pure Python.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from typing import Any, Mapping

from unity_legion.cost.machine import (A100, H100, H200, PRESETS, V100, DeviceSpec,
                                       MachineModel, machine_from)
from unity_legion.search.unity import SearchError, SearchOptions, SearchResult, search
from unity_legion.substitutions import builtin_rules, load_rules


# the GPU spec a device's name (CUDA's, e.g. "NVIDIA H200") reads as; others price as H100s
_GPU_BY_NAME: tuple[tuple[str, DeviceSpec], ...] = (("H200", H200), ("H100", H100),
                                                    ("A100", A100), ("V100", V100))


def gpu_spec(name: str | None) -> DeviceSpec:
    """The device spec of a GPU named `name` (None or unknown: an H100)."""
    for key, spec in _GPU_BY_NAME:
        if name and key in name.upper():
            return spec
    return H100


def running_machine(ranks: int, processors: int, kind: str, memory: float | None = None,
                    gpu_name: str | None = None, calibrated: MachineModel | None = None
                    ) -> MachineModel:
    """The machine model of a running job: `ranks` nodes of processors/ranks devices of `kind`,
    with the local preset's (CPU) or the job's GPU's figures (`gpu_name`, as CUDA names it; an
    H100's if unknown). `memory`: the bytes one GPU of the job may hold (its framebuffer,
    --fbmem) where the job says, in place of the GPU's; the search refuses plans that do not fit
    it. `calibrated`: this job's CPU figures as `profiling.calibrate` measured them (cached per
    machine and rank count), used for a CPU job of its shape: the preset's defaults were
    measured on one rank of the development machine, and over several ranks the runtime's
    round trips cost thousands of times theirs (a loss read: 128 ms on 2 ranks there, 12 us on
    one)."""
    per_rank = max(processors // max(ranks, 1), 1)
    if (kind != "gpu" and calibrated is not None and calibrated.device.kind == "cpu"
            and (calibrated.nodes, calibrated.devices_per_node) == (max(ranks, 1), per_rank)):
        return calibrated
    if kind == "gpu":
        base = PRESETS["dgx-h100"]
        device = gpu_spec(gpu_name)
        if memory is not None:
            device = dataclasses.replace(device, memory=float(memory))
        return dataclasses.replace(base, name=f"job-{ranks}x{per_rank}gpu", nodes=max(ranks, 1),
                                   devices_per_node=per_rank, device=device,
                                   source=f"this job's GPUs, priced as {device.name}" + (
                                       "" if memory is None else ", with its framebuffer"))
    return PRESETS["local"].with_nodes(max(ranks, 1), per_rank)


def options(value: SearchOptions | Mapping[str, Any] | None, ranks: int = 1) -> SearchOptions:
    """SearchOptions from an instance, a mapping of its fields, or None (the defaults). With
    several ranks every rank searches on its own, so the search must not depend on timing: the
    time limit is lifted and the budget alone bounds it (the DP is deterministic)."""
    if value is None:
        opts = SearchOptions()
    elif isinstance(value, SearchOptions):
        opts = value
    elif isinstance(value, Mapping):
        fields = {f.name for f in dataclasses.fields(SearchOptions)}
        unknown = sorted(set(value) - fields)
        if unknown:
            raise SearchError(f"unknown search option(s) {', '.join(map(repr, unknown))}; "
                              f"options: {', '.join(sorted(fields))}")
        opts = SearchOptions(**value)
    else:
        raise SearchError(f"search options must be a SearchOptions or a dict, got "
                          f"{type(value).__name__}")
    if ranks > 1:
        opts = dataclasses.replace(opts, time_limit=math.inf)
    return opts


# ---------------------------------------------------------------------------------------------
# Flags (train.py and search.py)

def add_search_flags(p: argparse.ArgumentParser, planning: bool) -> None:
    g = p.add_argument_group("search (Unity: substitutions + machine mapping)")
    d = SearchOptions()
    g.add_argument("--budget", type=int, default=d.budget,
                   help=f"graphs the search prices at most (default {d.budget})")
    g.add_argument("--alpha", type=float, default=d.alpha,
                   help=f"explore graphs up to alpha x the best cost (default {d.alpha})")
    g.add_argument("--search-time-limit", type=float, default=d.time_limit, metavar="SECONDS",
                   help=f"the search returns its best after this long (default {d.time_limit:g})")
    g.add_argument("--min-gain", type=float, default=d.min_gain, metavar="FRACTION",
                   help="keep data parallelism or the one-device plan unless another plan is "
                        f"predicted this fraction faster (default {d.min_gain:g})")
    g.add_argument("--only-data-parallel", action="store_true",
                   help="search data parallelism only (no substitutions, no other splits)")
    g.add_argument("--rules", default=None, metavar="JSON",
                   help="add the rules of a TASO/FlexFlow JSON rule file to the built-in ones")
    g.add_argument("--no-builtin-rules", action="store_true",
                   help="use only the --rules file's substitutions")
    if planning:
        g.add_argument("--machine", default="dgx-h100",
                       help=f"machine preset ({', '.join(sorted(PRESETS))}) or machine JSON file")
        g.add_argument("--search-num-nodes", type=int, default=None, metavar="N",
                       help="nodes of the machine to plan for (default: the preset's)")
        g.add_argument("--search-num-workers", type=int, default=None, metavar="N",
                       help="devices per node to plan for (default: the preset's)")
        g.add_argument("--pipeline", action="store_true",
                       help="also place pipeline stages (a plan that pipelines trains with "
                            "compile(strategy=PATH))")


def options_from_args(args: argparse.Namespace, trainable_only: bool = False) -> SearchOptions:
    rules = None
    if args.rules or args.no_builtin_rules:
        extra = list(load_rules(args.rules).rules) if args.rules else []
        rules = tuple(([] if args.no_builtin_rules else builtin_rules()) + extra)
    return SearchOptions(budget=args.budget, alpha=args.alpha, time_limit=args.search_time_limit,
                         min_gain=args.min_gain,
                         only_data_parallel=args.only_data_parallel, rules=rules,
                         trainable_only=trainable_only, progress=True,
                         pipeline=bool(getattr(args, "pipeline", False)))


def machine_from_args(args: argparse.Namespace) -> MachineModel:
    return machine_from(args.machine, args.search_num_nodes, args.search_num_workers)


__all__ = ["SearchResult", "add_search_flags", "machine_from_args", "options",
           "options_from_args", "running_machine", "search"]
