"""Train a model with unity_legion on Legate.

    legate --cpus 2 scripts/train.py                 # the default: an MLP on scikit-learn's digits
    legate scripts/train.py --cpus 2                 # the same (the flag is applied before start-up)
    legate --launcher mpirun --nodes 1 --ranks-per-node 2 --cpus 1 scripts/train.py
    legate --cpus 2 scripts/train.py --model bert_large                 # scaled down, synthetic data
    legate --cpus 2 scripts/train.py --model resnext50 --dataset digits # digits resized to 32x32
    legate --cpus 2 scripts/train.py --model dlrm --model-arg tables=8 --model-arg embedding_dim=16
    legate --cpus 2 scripts/train.py --model bert_large --strategy megatron --explain
    legate --cpus 2 scripts/train.py --strategy my_strategy.json --draw pcg.svg
    legate --cpus 2 scripts/train.py --budget 16 --export-strategy found.json   # search's options
    legate --cpus 2 scripts/train.py --strategy data_parallel                   # no search

By default the Unity search (substitutions + machine mapping) plans the strategy for the job's
processors before training and prints what it found against data parallelism; --strategy names a
builtin or a strategy file instead.

Every model of unity_legion.models.ZOO trains at its small size unless --full-size is given;
--model-arg KEY=VALUE (a Python literal) overrides one argument of the model's builder. Prints a
progress bar per epoch, the test figures, and on its last line one JSON object with the
per-epoch losses and the test figures.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
import time
from typing import Any

MODELS = ("mlp", "mlp_unify", "bert_large", "dlrm", "xdl", "candle_uno", "resnext50",
          "inception_v3")  # = unity_legion.models.ZOO, listed here so --help needs no import


def _model_arg(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a bare word: a string argument


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mlp", choices=MODELS, help="model from unity_legion.models")
    p.add_argument("--dataset", default=None, choices=["digits", "synthetic"],
                   help="bundled digits (mlp, mlp_unify, resnext50, inception_v3) or random data "
                        "shaped for the model (default: digits where the model takes it)")
    p.add_argument("--full-size", action="store_true", help="build the model at paper size")
    p.add_argument("--model-arg", type=_model_arg, action="append", default=[],
                   metavar="KEY=VALUE", help="an argument of the model builder (repeatable)")
    p.add_argument("--hidden", default=None, help="mlp only: hidden widths, comma-separated "
                                                  "(default 256,128)")
    p.add_argument("--dropout", type=float, default=0.0, help="mlp only: dropout after each layer")
    p.add_argument("--samples", type=int, default=512, help="synthetic data: training samples")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd", "rmsprop"])
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, data, shuffling, dropout")
    p.add_argument("--validation-split", type=float, default=0.0)
    p.add_argument("--verbose", default="auto", help="0, 1 (progress bar), 2 (a line per epoch)")
    p.add_argument("--steps-per-execution", type=int, default=8, metavar="N",
                   help="training steps issued before their losses are read back (Keras' "
                        "compile steps_per_execution; default 8: the host waits once per 8 "
                        "steps, and a progress bar moves by 8)")
    p.add_argument("--save-weights", default=None, help="write the trained weights (.weights.npz)")
    s = p.add_argument_group("parallelisation")
    s.add_argument("--strategy", default="search", metavar="NAME_OR_PATH",
                   help="search (default: Unity's search for this job's processors), "
                        "data_parallel, megatron, table_parallel, expert, or a strategy JSON file")
    s.add_argument("--export-strategy", default=None, metavar="PATH",
                   help="write the strategy used as JSON (edit it and pass it to --strategy)")
    s.add_argument("--profile", action="store_true",
                   help="after training, profile one real training step: per operator its "
                        "kernel, host and waiting time next to the simulator's prediction, "
                        "and each processor's timeline (measured above simulated) drawn to "
                        "--profile-out")
    s.add_argument("--calibrate", action="store_true",
                   help="measure this machine's runtime figures for the search and the "
                        "profile's simulator before planning, unless measured before (a "
                        "minute or so; cached per machine and rank count, then used by every "
                        "later job on CPUs). --profile implies it on CPUs")
    s.add_argument("--profile-out", default="profile.png", metavar="PATH",
                   help="where --profile draws the timelines (default profile.png)")
    s.add_argument("--explain", action="store_true",
                   help="print the strategy's table: degrees, devices, bytes per operator")
    s.add_argument("--draw", default=None, metavar="PATH",
                   help="draw the parallel computation graph (.png or .svg)")
    from unity_legion.search.plan import add_search_flags

    add_search_flags(p, planning=False)
    g = p.add_argument_group("Legate (when not given to the `legate` launcher)")
    g.add_argument("--cpus", type=int, default=None, help="CPU processors per rank")
    g.add_argument("--gpus", type=int, default=None, help="GPUs per rank")
    g.add_argument("--sysmem", type=int, default=None, help="system memory per rank, MiB")
    args = p.parse_args(argv)
    args.model_args = dict(args.model_arg)
    if args.hidden is not None:
        if args.model != "mlp":
            p.error("--hidden applies to --model mlp only (use --model-arg)")
        try:
            args.model_args["hidden"] = tuple(int(v) for v in args.hidden.split(",") if v)
        except ValueError:
            p.error(f"--hidden must be comma-separated integers, got {args.hidden!r}")
    if args.model == "mlp":
        args.model_args.setdefault("hidden", (256, 128))
        if args.dropout:
            args.model_args["dropout"] = args.dropout
    elif args.dropout:
        p.error("--dropout applies to --model mlp only")
    if args.dataset is None:
        args.dataset = "digits" if args.model in ("mlp", "mlp_unify", "resnext50",
                                                  "inception_v3") else "synthetic"
    if args.dataset == "digits" and args.model not in ("mlp", "mlp_unify", "resnext50",
                                                       "inception_v3"):
        p.error(f"--dataset digits does not fit --model {args.model}; use --dataset synthetic")
    if args.verbose != "auto":
        args.verbose = int(args.verbose)
    if args.draw and not args.draw.lower().endswith((".png", ".svg")):
        p.error(f"--draw needs a .png or .svg path, got {args.draw!r}")
    if args.epochs <= 0 or args.batch_size <= 0 or args.samples <= 0:
        p.error("--epochs, --batch-size and --samples must be positive")
    return args


def build_model(args: argparse.Namespace) -> tuple[Any, Any]:
    """The zoo entry and the model that the flags ask for (digits fixes the input and classes)."""
    from unity_legion.models import ZOO

    entry = ZOO[args.model]
    kwargs = dict(args.model_args)
    if args.dataset == "digits":
        fixed = {"mlp": {"input_dim": 64, "classes": 10}, "mlp_unify": {"input_dim": 64},
                 "resnext50": {"classes": 10, "channels": 3},
                 "inception_v3": {"classes": 10, "channels": 3}}[args.model]
        for k, v in fixed.items():
            if k in kwargs and kwargs[k] != v:
                raise SystemExit(f"train.py: --model-arg {k}={kwargs[k]} does not fit the digits "
                                 f"data set ({k}={v})")
        kwargs |= fixed
    try:
        model = entry.build(**kwargs) if args.full_size else entry.build_small(**kwargs)
    except TypeError as exc:
        raise SystemExit(f"train.py: --model-arg does not fit {args.model}: {exc}") from None
    return entry, model


def load_data(args: argparse.Namespace, entry: Any, model: Any
              ) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
    """(x_train, y_train, x_test, y_test), each a list with one array per model input / output."""
    import numpy as np

    from unity_legion import datasets

    if args.dataset == "synthetic":
        rng = np.random.default_rng(args.seed)
        x, y = entry.synthetic(model, args.samples + max(args.samples // 4, 1), rng)
        n = args.samples
        return [a[:n] for a in x], [a[:n] for a in y], [a[n:] for a in x], [a[n:] for a in y]
    data = datasets.digits(seed=args.seed)
    if args.model == "mlp_unify":
        width = model.outputs[0].shape[-1]
        if width < data.num_classes:
            raise SystemExit(f"train.py: mlp_unify's width ({width}) is smaller than the digits' "
                             f"{data.num_classes} classes")
        return ([data.x_train, data.x_train], [data.y_train],
                [data.x_test, data.x_test], [data.y_test])
    if entry.images:
        size = model.inputs[0].shape[1]
        return ([datasets.as_images(data.x_train, size)], [data.y_train],
                [datasets.as_images(data.x_test, size)], [data.y_test])
    return [data.x_train], [data.y_train], [data.x_test], [data.y_test]


def search_request(args: argparse.Namespace, rank0: bool) -> dict[str, Any]:
    """compile()'s `search=` argument from the flags: Unity's search for this job at this batch
    size (every rank runs it; with several ranks the budget alone bounds it, so that all ranks
    find the same plan)."""
    import dataclasses

    from unity_legion.search.plan import options_from_args
    from unity_legion.search.unity import SearchError
    from unity_legion.substitutions import TasoFormatError

    try:
        opts = options_from_args(args)
    except (SearchError, TasoFormatError, OSError) as exc:
        raise SystemExit(f"train.py: {exc}") from None
    fields = {f.name: getattr(opts, f.name) for f in dataclasses.fields(opts)}
    return fields | {"progress": rank0 and args.verbose != 0, "batch_size": args.batch_size}


def predicted_forward(model: Any, strategy: Any, args: argparse.Namespace) -> Any:
    """explain()'s time column: each operator's forward on this machine's model (the "local"
    preset, analytic roofline; scripts/bench_simulator.py calibrates and checks it)."""
    from unity_legion.cost import AnalyticCost, preset

    device, cost = preset("local").device, AnalyticCost()
    graph, _ = strategy.graph_for(model)
    shapes = graph.bind_batch(args.batch_size)

    def forward(node: Any, pcg: Any) -> float:
        op_node = graph.nodes[node.source]
        return cost.op_cost(op_node.op, [shapes[t] for t in op_node.inputs], node.config,
                            device).forward
    return forward


def calibrate_machine(rank0: bool) -> None:
    """Measure this job's CPU figures (`profiling.calibrate`) unless they are cached; every rank
    takes part."""
    from unity_legion.profiling import local_calibration
    from unity_legion.profiling.calibrate import calibration_path

    if local_calibration(measure=False) is not None:
        return
    if rank0:
        print("unity_legion: measuring this machine's runtime figures (once; cached in "
              f"{calibration_path()})", flush=True)
    local_calibration(refresh=True)   # (none is cached: measure without reading again)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from unity_legion import runtime

    if args.cpus is not None or args.gpus is not None or args.sysmem is not None:
        runtime.configure(cpus=args.cpus, gpus=args.gpus, sysmem=args.sysmem)
    machine = runtime.machine_info()

    from unity_legion import keras

    keras.utils.set_random_seed(args.seed)
    entry, model = build_model(args)
    x_train, y_train, x_test, y_test = load_data(args, entry, model)
    optimizer = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
                 "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}[args.optimizer](
        learning_rate=args.lr)
    classify = entry.loss == "sparse_categorical_crossentropy"
    from unity_legion.strategy import StrategyError

    from unity_legion.keras.trainer import job_model
    from unity_legion.search.unity import SearchError

    rank0 = machine.rank == 0
    if (args.calibrate or args.profile) and machine.preferred_kind != "gpu":
        calibrate_machine(rank0)
    target, _ = job_model(machine)
    try:
        model.compile(optimizer=optimizer, loss=entry.loss,
                      metrics=["accuracy" if classify else "mae"], strategy=args.strategy,
                      search=search_request(args, rank0),
                      steps_per_execution=args.steps_per_execution)
    except (StrategyError, SearchError, ValueError) as exc:
        raise SystemExit(f"train.py: {exc}") from None
    if rank0 and model.search_result is not None:
        print(f"search over {target.nodes} x {target.devices_per_node} {target.device.kind} "
              f"device(s) ({target.name}: {target.source}):")
        print(model.search_result.report())
    strategy = model.strategy
    if rank0:
        print(f"unity_legion: {args.model} on {args.dataset} ({len(x_train[0])} train / "
              f"{len(x_test[0])} test samples), {machine}, strategy {strategy.source} over "
              f"{strategy.machine.devices} {strategy.machine.device_type} processor(s)")
        model.summary()
        if args.export_strategy:
            strategy.save(args.export_strategy)
        if args.explain:
            print(strategy.explain(model, args.batch_size,
                                   predicted_forward(model, strategy, args), machine=target))
        if args.draw:
            strategy.draw(model, args.batch_size, args.draw)
    unpack = (lambda v: v if len(v) > 1 else v[0])
    t0 = time.perf_counter()
    history = model.fit(unpack(x_train), unpack(y_train), batch_size=args.batch_size,
                        epochs=args.epochs, validation_split=args.validation_split,
                        verbose=args.verbose if rank0 else 0)
    train_s = time.perf_counter() - t0
    if args.profile:
        model.profile_step(unpack(x_train), unpack(y_train), batch_size=args.batch_size,
                           path=args.profile_out)
        if rank0:
            print(f"profile: timelines written to {args.profile_out}")
    test_loss, test_metric = model.evaluate(unpack(x_test), unpack(y_test), batch_size=256,
                                            verbose=0)
    if args.save_weights:
        model.save_weights(args.save_weights)
    if rank0:
        metric = "accuracy" if classify else "mae"
        print(f"test {metric}: {test_metric:.4f}  test loss: {test_loss:.4f}  "
              f"training time: {train_s:.1f} s")
        print(json.dumps({"model": args.model, "dataset": args.dataset, "ranks": machine.ranks,
                          "processors": machine.processors, "epochs": args.epochs,
                          "params": model.count_params(), "losses": history.history["loss"],
                          f"test_{metric}": test_metric, "test_loss": test_loss,
                          "train_s": round(train_s, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
