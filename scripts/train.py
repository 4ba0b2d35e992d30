"""Train a model with unity_legion on Legate.

    legate --cpus 2 scripts/train.py                 # the default: an MLP on scikit-learn's digits
    legate scripts/train.py --cpus 2                 # the same (the flag is applied before start-up)
    legate --launcher mpirun --nodes 1 --ranks-per-node 2 --cpus 1 scripts/train.py

Prints a progress bar per epoch, the test accuracy, and on its last line one JSON object with the
per-epoch losses and the test figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="mlp", choices=["mlp"], help="model from unity_legion.models")
    p.add_argument("--dataset", default="digits", choices=["digits"], help="data set (bundled)")
    p.add_argument("--hidden", default="256,128", help="MLP hidden widths, comma-separated")
    p.add_argument("--dropout", type=float, default=0.0, help="dropout after each hidden layer")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--optimizer", default="adam", choices=["adam", "adamw", "sgd", "rmsprop"])
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, shuffling and dropout")
    p.add_argument("--validation-split", type=float, default=0.0)
    p.add_argument("--verbose", default="auto", help="0, 1 (progress bar), 2 (a line per epoch)")
    p.add_argument("--save-weights", default=None, help="write the trained weights (.weights.npz)")
    g = p.add_argument_group("Legate (when not given to the `legate` launcher)")
    g.add_argument("--cpus", type=int, default=None, help="CPU processors per rank")
    g.add_argument("--gpus", type=int, default=None, help="GPUs per rank")
    g.add_argument("--sysmem", type=int, default=None, help="system memory per rank, MiB")
    args = p.parse_args(argv)
    try:
        args.hidden = tuple(int(v) for v in args.hidden.split(",") if v)
    except ValueError:
        p.error(f"--hidden must be comma-separated integers, got {args.hidden!r}")
    if args.verbose != "auto":
        args.verbose = int(args.verbose)
    if args.epochs <= 0 or args.batch_size <= 0:
        p.error("--epochs and --batch-size must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from unity_legion import runtime

    if args.cpus is not None or args.gpus is not None or args.sysmem is not None:
        runtime.configure(cpus=args.cpus, gpus=args.gpus, sysmem=args.sysmem)
    machine = runtime.machine_info()

    from unity_legion import datasets, keras
    from unity_legion.models import mlp

    keras.utils.set_random_seed(args.seed)
    data = datasets.digits(seed=args.seed)
    model = mlp(input_dim=data.x_train.shape[1], hidden=args.hidden, classes=data.num_classes,
                dropout=args.dropout)
    optimizer = {"adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW,
                 "sgd": keras.optimizers.SGD, "rmsprop": keras.optimizers.RMSprop}[args.optimizer](
        learning_rate=args.lr)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rank0 = machine.rank == 0
    if rank0:
        print(f"unity_legion: {args.model} on {args.dataset} ({len(data.x_train)} train / "
              f"{len(data.x_test)} test samples), {machine}, data parallel over "
              f"{machine.processors} processor(s)")
        model.summary()
    t0 = time.perf_counter()
    history = model.fit(data.x_train, data.y_train, batch_size=args.batch_size, epochs=args.epochs,
                        validation_split=args.validation_split, verbose=args.verbose if rank0 else 0)
    train_s = time.perf_counter() - t0
    test_loss, test_acc = model.evaluate(data.x_test, data.y_test, batch_size=256, verbose=0)
    if args.save_weights:
        model.save_weights(args.save_weights)
    if rank0:
        print(f"test accuracy: {test_acc:.4f}  test loss: {test_loss:.4f}  "
              f"training time: {train_s:.1f} s")
        print(json.dumps({"model": args.model, "dataset": args.dataset, "ranks": machine.ranks,
                          "processors": machine.processors, "epochs": args.epochs,
                          "losses": history.history["loss"], "test_accuracy": test_acc,
                          "test_loss": test_loss, "train_s": round(train_s, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
