"""Unity's joint search (unity_legion.search.unity), its options, its strategies with graph
substitutions, and scripts/search.py. Pure Python: simulated machines, no Legate."""

from __future__ import annotations


import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from unity_legion import keras
from unity_legion.cost import Simulator, preset
from unity_legion.models import ZOO
from unity_legion.search.plan import options, running_machine
from unity_legion.search.unity import SearchError, SearchOptions, search
from unity_legion.strategy import Strategy, StrategyError
from unity_legion.strategy.builtin import data_parallel, expert
from unity_legion.substitutions import AppliedRule

ROOT = Path(__file__).resolve().parent.parent
P3 = preset("p3.8xlarge")        # 4 V100
TWO_NODES = preset("dgx-h100", nodes=2)


def wide_mlp() -> keras.Model:
    """Column- then row-parallel pays here, but the second Dense fuses its relu: the search has
    to unfuse it (relu cannot run on partial sums) to reach Megatron's plan."""
    inp = keras.Input(shape=(2048,), name="x")
    h = keras.layers.Dense(8192, activation="relu", name="up")(inp)
    h = keras.layers.Dense(2048, activation="relu", name="down")(h)
    out = keras.layers.Dense(10, name="out")(h)
    return keras.Model(inp, out, name="wide")


def test_search_applies_a_substitution_that_enables_row_parallelism() -> None:
    model = wide_mlp()
    r = search(model, 64, P3, options=SearchOptions(budget=40))
    assert r.chosen == "search"
    names = [a.rule_name for a in r.strategy.substitutions]
    assert names == ["unfuse_linear_activation"]
    assert r.strategy.configs["up"].degree("out") == 4
    # row-parallel (partial sums over input features): all 4 ways, or 2 x 2 with the output
    # features, whose smaller reduce-scatters price about the same over NVLink
    assert r.strategy.configs["down"].degree("in") >= 2
    assert r.strategy.configs["down"].num_points == 4
    assert "down.act" in r.strategy.configs
    assert r.savings and r.savings[0].saved > 0
    assert "unfuse_linear_activation" in r.report()
    # the strategy replays on the model, and simulates to the reported time
    r.strategy.validate(model, 64, {"gpu": 4})
    graph, outs = r.strategy.graph_for(model)
    sim = Simulator(P3).simulate(graph, 64, r.strategy.plan(model), outs)
    assert sim.step_time == pytest.approx(r.step_time)
    assert r.step_time < r.baselines["data_parallel"] / 3


@pytest.mark.parametrize("name", ["mlp", "bert_large", "dlrm", "candle_uno"])
@pytest.mark.parametrize("machine", [P3, TWO_NODES], ids=["p3.8xlarge", "2xdgx-h100"])
def test_never_worse_than_data_parallel_or_the_expert(name, machine) -> None:
    model = ZOO[name].build_small()
    batch = 8 * machine.num_devices
    r = search(model, batch, machine, options=SearchOptions(budget=8))
    sim = Simulator(machine)
    graph = model.graph
    outs = model._output_ids
    dp = sim.simulate(graph, batch, data_parallel(model, machine.num_devices, "gpu",
                                                  batch).plan(graph), outs).step_time
    ex = sim.simulate(graph, batch, expert(model, machine.num_devices, "gpu", batch,
                                           machine.devices_per_node).plan(graph), outs).step_time
    assert r.baselines["data_parallel"] == pytest.approx(dp)
    assert r.baselines["expert"] == pytest.approx(ex)
    assert r.step_time <= min(dp, ex) * (1 + 1e-9)
    assert r.evaluated <= 8


def test_the_search_is_deterministic_under_a_budget() -> None:
    model = ZOO["bert_large"].build_small()
    opts = SearchOptions(budget=6, time_limit=1e9)
    a = search(model, 32, TWO_NODES, options=opts).strategy.to_json()
    b = search(model, 32, TWO_NODES, options=opts).strategy.to_json()
    assert a == b


def test_only_data_parallel_splits_samples_only_and_rewrites_nothing() -> None:
    model = wide_mlp()
    r = search(model, 64, P3, options=SearchOptions(only_data_parallel=True))
    assert not r.strategy.substitutions
    for cfg in r.strategy.configs.values():
        assert set(dict(cfg.degrees)) <= {"sample"}


def test_nothing_fits_is_reported_with_the_excess() -> None:
    import dataclasses

    tiny = dataclasses.replace(P3, device=dataclasses.replace(P3.device, memory=1e6))
    r = search(wide_mlp(), 64, tiny, options=SearchOptions(budget=4))
    assert not r.fits and r.excess > 0
    assert "no plan fits" in r.report()


def test_bad_options_are_refused() -> None:
    with pytest.raises(SearchError, match="budget"):
        SearchOptions(budget=0)
    with pytest.raises(SearchError, match="alpha"):
        SearchOptions(alpha=0.5)
    with pytest.raises(SearchError, match="unknown search option.*'budjet'"):
        options({"budjet": 3})
    with pytest.raises(SearchError, match="batch"):
        search(wide_mlp(), 0, P3)
    for bad in (-0.1, math.inf, math.nan, True, "5%"):
        with pytest.raises(SearchError, match="min_gain"):
            SearchOptions(min_gain=bad)
    # several ranks: the budget alone bounds the search (every rank must find the same plan)
    assert options({"budget": 3}, ranks=2).time_limit == float("inf")


def test_a_plan_must_beat_the_baselines_by_the_margin() -> None:
    """The found plan is kept only when predicted min_gain faster than the best baseline; a
    margin above its predicted gain keeps the baseline, whatever the search found."""
    r = search(wide_mlp(), 64, P3, options=SearchOptions(budget=40))
    assert r.chosen == "search"
    best_base = min(r.baselines["data_parallel"], r.baselines["serial"]
                    if "serial" in r.baselines else math.inf)
    gain = best_base / r.baselines["search"] - 1.0
    assert gain > 0.05
    above = SearchOptions(budget=40, min_gain=gain * 1.5 + 0.01)
    kept = search(wide_mlp(), 64, P3, options=above)
    assert kept.chosen in ("data_parallel", "serial")
    assert kept.step_time == pytest.approx(best_base)
    assert kept.baselines["search"] == pytest.approx(r.baselines["search"])


def test_running_machine_models_the_job() -> None:
    cpu = running_machine(2, 4, "cpu")
    assert (cpu.nodes, cpu.devices_per_node, cpu.device.kind) == (2, 2, "cpu")
    gpu = running_machine(1, 8, "gpu")
    assert (gpu.nodes, gpu.devices_per_node, gpu.device.kind) == (1, 8, "gpu")


# --- strategies with substitutions ------------------------------------------------------------

def test_a_strategy_with_substitutions_round_trips_and_checks_its_model(tmp_path) -> None:
    model = wide_mlp()
    r = search(model, 64, P3, options=SearchOptions(budget=40))
    path = tmp_path / "s.json"
    r.strategy.save(path)
    doc = json.loads(path.read_text())
    assert doc["substitutions"] == [{"rule": "unfuse_linear_activation", "nodes": ["down"]}]
    back = Strategy.load(path)
    assert back == r.strategy
    back.validate(model, 64, {"gpu": 4})
    # a step that does not match the model is named
    doc["substitutions"] = [{"rule": "unfuse_linear_activation", "nodes": ["out"]}]
    path.write_text(json.dumps(doc))
    with pytest.raises(StrategyError, match="substitutions do not fit"):
        Strategy.load(path).validate(model, 64, {"gpu": 4})
    doc["substitutions"] = [{"rule": "no_such_rule", "nodes": ["down"]}]
    path.write_text(json.dumps(doc))
    with pytest.raises(StrategyError, match="no_such_rule"):
        Strategy.load(path).validate(model, 64, {"gpu": 4})
    doc["substitutions"] = {"rule": "x"}
    path.write_text(json.dumps(doc))
    with pytest.raises(StrategyError, match="'substitutions' must be a list"):
        Strategy.load(path)


def test_replayed_graph_keeps_untouched_names() -> None:
    model = wide_mlp()
    s = Strategy.for_graph(model, {}, source="manual", device_type="gpu", devices=4,
                           substitutions=(AppliedRule("unfuse_linear_activation", ("down",)),))
    graph, outs = s.graph_for(model)
    assert [n.name for n in graph.nodes] == ["up", "down", "down.act", "out"]
    assert graph.tensors[outs[0]].shape == model.graph.tensors[model._output_ids[0]].shape


# --- scripts/search.py --------------------------------------------------------------------------

def test_search_script_plans_for_a_simulated_cluster(tmp_path) -> None:
    out = tmp_path / "plan.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "search.py"), "--model", "mlp", "--machine",
         "dgx-h100", "--search-num-nodes", "2", "--search-num-workers", "4", "--budget", "6",
         "--out", str(out), "--explain"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["devices"] == 8 and figures["found_step_s"] <= figures["dp_step_s"]
    s = Strategy.load(out)
    s.validate(ZOO["mlp"].build_small(), figures["batch"], {"gpu": 8})
    assert "data_parallel" in proc.stdout and "operator" in proc.stdout.lower()


def test_search_script_reports_bad_flags_clearly(tmp_path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "search.py"), "--machine",
                           "no-such-machine"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "no-such-machine" in proc.stderr
    bad = tmp_path / "rules.json"
    bad.write_text("{not json")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "search.py"), "--rules",
                           str(bad)], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "rules.json" in proc.stderr


def test_search_with_an_external_taso_rule_file() -> None:
    from importlib import resources

    from unity_legion.substitutions import builtin_rules, load_rules

    path = resources.files("unity_legion.substitutions").joinpath("data", "example_rules.json")
    loaded = load_rules(str(path))
    assert loaded.rules
    r = search(wide_mlp(), 64, P3, options=SearchOptions(
        budget=10, rules=tuple(builtin_rules() + list(loaded.rules))))
    assert r.step_time <= r.baselines["data_parallel"]
