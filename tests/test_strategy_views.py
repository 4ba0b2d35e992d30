"""Strategy files with strided and 2-D machine views: they load from JSON, validate, and training
under them equals the serial run (1e-5); a view that cannot run is refused with the reason."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from launch import REPO, run_with_env
from test_strategy import BATCH, serial, split_mlp
from unity_legion.strategy import Strategy, StrategyError
from unity_legion.types import MachineView, OpConfig


def _doc(model, devices: int, operators: dict) -> dict:
    """A hand-written strategy file for `model`: the serial one's header, these operators."""
    doc = json.loads(serial(model).to_json())
    doc["machine"]["devices"] = devices
    doc["source"] = "manual"
    doc["operators"] = operators
    return doc


# Views over 4 CPUs that no contiguous range gives (the names are split_mlp's, prefix "sv").
STRIDED = {   # every other device
    "sv_fc1": {"degrees": {"out": 2}, "view": {"dims": [2], "strides": [2]}},            # 0, 2
    "sv_relu": {"degrees": {"sample": 2}, "view": {"start": 1, "dims": [2], "strides": [2]}},
    "sv_fc2": {"degrees": {"in": 2}, "view": {"start": 1, "dims": [2], "strides": [2]}},  # 1, 3
    "sv_out": {"degrees": {"sample": 2}, "view": {"dims": [2], "strides": [3]}},          # 0, 3
}
TWO_D = {     # 2 "nodes" of 2 devices: grids across them, points not in device order
    "sv_fc1": {"degrees": {"out": 2, "sample": 2}, "view": {"dims": [2, 2], "strides": [1, 2]}},
    "sv_relu": {"degrees": {"sample": 2}, "view": {"start": 1, "dims": [2, 1], "strides": [2, 1]}},
    "sv_fc2": {"degrees": {"in": 2, "sample": 2}, "view": {"dims": [2, 2], "strides": [1, 2]}},
    "sv_out": {"degrees": {"sample": 4}, "view": {"dims": [2, 2], "strides": [2, 1]}},
}


def test_strided_and_2d_views_load_and_validate(tmp_path) -> None:
    model = split_mlp("sv")
    for name, ops, shown in (("strided", STRIDED, "cpu{0,2}"), ("2d", TWO_D, "cpu{0,2,1,3}")):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(_doc(model, 4, ops)))
        s = Strategy.load(path)
        s.validate(model, BATCH, 4)
        assert Strategy.from_json(s.to_json()) == s
        assert shown in s.explain(model, BATCH)      # the table shows the devices, not a span
    s = Strategy.load(tmp_path / "2d.json")
    assert s.configs["sv_fc1"].view.devices() == [0, 2, 1, 3]
    assert s.configs["sv_relu"].view.devices() == [1, 3]


def test_a_2d_view_without_strides_is_row_major() -> None:
    model = split_mlp("sv")
    s = Strategy.from_json(json.dumps(_doc(model, 4, {
        "sv_fc1": {"degrees": {"out": 2, "sample": 2}, "view": {"dims": [2, 2]}}})))
    assert s.configs["sv_fc1"].view == MachineView("cpu", 0, (2, 2), (2, 1))
    s.validate(model, BATCH, 4)


def test_views_that_cannot_run_are_refused_with_the_reason() -> None:
    model = split_mlp("sv")
    cases = [
        # two points of the launch on device 2: a view gives each point its own device
        ({"sv_fc1": {"degrees": {"out": 2, "sample": 2},
                     "view": {"dims": [2, 2], "strides": [2, 2]}}}, 8,
         "operator 'sv_fc1' \\(linear\\): its view \\(start 0, dims \\[2, 2\\], strides \\[2, "
         "2\\]\\) puts points 1 and 2 both on cpu device 2; a view must give each launch point "
         "its own device \\(devices \\[0, 2, 2, 4\\]\\)"),
        # a strided view reaching past the machine's last device
        ({"sv_fc1": {"degrees": {"out": 2}, "view": {"start": 1, "dims": [2], "strides": [3]}}},
         4, "operator 'sv_fc1'.*view uses cpu devices \\[1, 5\\) but the machine has 4"),
        # a 2-D grid of 4 devices for 2 points
        ({"sv_fc1": {"degrees": {"out": 2}, "view": {"dims": [2, 2], "strides": [2, 1]}}}, 4,
         "operator 'sv_fc1'.*launches 2 point\\(s\\) but its view has 4 devices, 2 too many"),
    ]
    for ops, devices, message in cases:
        s = Strategy.from_json(json.dumps(_doc(model, devices, ops)))
        with pytest.raises(StrategyError, match=message):
            s.validate(model, BATCH, {"cpu": devices})
    with pytest.raises(StrategyError, match="operator 'sv_fc1': machine view: dims \\(2, 2\\) "
                                            "and strides \\(1,\\) differ in length"):
        Strategy.from_json(json.dumps(_doc(model, 4, {
            "sv_fc1": {"degrees": {"out": 4}, "view": {"dims": [2, 2], "strides": [1]}}})))
    # the Python API refuses the same as the file
    bad = Strategy.for_graph(model, {"sv_fc1": OpConfig.of(
        {"out": 4}, MachineView("cpu", 0, (2, 2), (1, 1)))}, devices=4)
    with pytest.raises(StrategyError, match="puts points 1 and 2 both on cpu device 1"):
        bad.validate(model, BATCH, 4)


_TRAIN_SCRIPT = """
import json, sys
sys.path.insert(0, {tests!r})
import numpy as np
from test_strategy import _data, serial, split_mlp, train_losses
from unity_legion import keras
from unity_legion.runtime import machine_info
from unity_legion.strategy import Strategy

assert machine_info().processors == 4, machine_info()
build = lambda: split_mlp("sv")
keras.utils.set_random_seed(1)
ref = build()
weights = ref.get_weights()
xs, ys = _data(ref, "sparse_categorical_crossentropy")
want = train_losses(build, "sparse_categorical_crossentropy", serial, weights, xs, ys, 0.05)
assert np.all(np.isfinite(want)) and want[0] != want[-1], want
for path in {paths!r}:
    loaded = Strategy.load(path)
    got = train_losses(build, "sparse_categorical_crossentropy", lambda m: loaded, weights, xs,
                       ys, 0.05)
    np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=path)
    print("VIEWS-OK", path.rsplit("/", 1)[-1], flush=True)
"""


def test_training_under_strided_and_2d_views_equals_serial(tmp_path) -> None:
    """4 CPU processors (a fresh process: this one's runtime may have fewer): 5 SGD steps under
    each file's views give the serial run's losses (1e-5). Which processor each point of a
    strided or 2-D view runs on is checked in test_placement.py."""
    model = split_mlp("sv")
    paths = []
    for name, ops in (("strided", STRIDED), ("2d", TWO_D)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(_doc(model, 4, ops)))
        paths.append(str(path))
    script = tmp_path / "views.py"
    script.write_text(textwrap.dedent(_TRAIN_SCRIPT).format(tests=str(Path(__file__).parent),
                                                            paths=paths))
    proc = run_with_env([sys.executable, str(script)], REPO, "--cpus 4 --sysmem 2000", 600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert [ln for ln in proc.stdout.splitlines() if ln.startswith("VIEWS-OK")] == [
        "VIEWS-OK strided.json", "VIEWS-OK 2d.json"], out[-4000:]
