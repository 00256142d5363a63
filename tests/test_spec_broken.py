# ruff: noqa: E501  (one broken case per line reads best as a table)
"""Broken sweep files: each problem is found, named by its key path, and reported together."""

from __future__ import annotations

import datetime
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeper.spec import (
    Distribution,
    Problem,
    SpecError,
    grid_values,
    load_sweep_file,
    parse_new_sweep,
    parse_sweep,
    sample,
)

BASE: dict[str, Any] = {"method": "random", "program": "train.py", "parameters": {"a": {"values": [1, 2]}}}


def top(**changes: Any) -> dict[str, Any]:
    """BASE with top-level keys replaced (None removes one)."""
    data = {**BASE, **changes}
    return {k: v for k, v in data.items() if v is not None}


def param(**body: Any) -> dict[str, Any]:
    """BASE with a single parameter ``p`` of the given body."""
    return top(parameters={"p": body})


CASES = [
    # top level
    (top(paramters={}), "paramters", "unknown key; did you mean 'parameters'?"),
    (top(methd="grid"), "methd", "unknown key; did you mean 'method'?"),
    (top(metrics=[{"name": "a"}, {"name": "b"}]), "metrics", "multi-objective 'metrics' is a W&B key this version does not run yet"),
    (top(scheduler={"job": "x"}), "scheduler", "'scheduler' is a W&B key this version does not run"),
    (top(method=None), "method", "required; one of"),
    (top(method="gird"), "method", "unknown method 'gird'; did you mean 'grid'?"),
    (top(method="custom"), "method", "'custom' is a W&B method this version does not run yet; available: "),
    (top(method="bayes"), "metric", "required for method bayes"),
    (top(method="annealing"), "method", "unknown method 'annealing'; available: "),
    (top(parameters=None), "parameters", "required: at least one parameter"),
    (top(parameters={}), "parameters", "expected at least one parameter"),
    (top(parameters=[1]), "parameters", "expected a mapping of parameter names to settings, got [1]"),
    (top(run_cap=-3), "run_cap", "expected an integer > 0, got -3"),
    (top(run_cap=0), "run_cap", "expected an integer > 0, got 0"),
    (top(run_cap="many"), "run_cap", "expected an integer > 0, got 'many'"),
    (top(program=3), "program", "expected a string, got 3"),
    (top(name=["x"]), "name", "expected a string, got ['x']"),
    (top(kind="job"), "kind", "expected one of sweep, got 'job'"),
    (top(controller={"type": "remote"}), "controller.type", "expected one of local, cloud, got 'remote'"),
    (top(integrations="mlflow"), "integrations", "expected a mapping such as {mlflow: true}, got 'mlflow'"),
    # command
    (top(command="python train.py"), "command", "expected a non-empty list"),
    (top(command=[]), "command", "expected a non-empty list"),
    (top(command=["${env}", "${prog}"]), "command[1]", "unknown macro ${prog}; did you mean ${program}? (allowed: ${env}, "),
    (top(command=["${foo}"]), "command[0]", "unknown macro ${foo} (allowed: ${env}, ${interpreter}, "),
    (top(command=["--x=${args}"]), "command[0]", "${args} must be a whole item of the list, got '--x=${args}'"),
    (top(command=["${program}", "--out=${progam}"]), "command[1]", "unknown macro ${progam}; did you mean ${program}?"),
    (top(command=["${envvar:}"]), "command[0]", "${envvar:NAME} needs a variable name, got '${envvar:}'"),
    (top(command=["python", {"a": 1}]), "command[1]", "expected a string, got {'a': 1}"),
    # metric
    (top(metric="loss"), "metric", "expected a mapping such as {name: val_loss, goal: minimize}, got 'loss'"),
    (top(metric={"goal": "minimize"}), "metric.name", "required"),
    (top(metric={"name": "m", "goal": "minimise"}), "metric.goal", "expected one of minimize, maximize, got 'minimise'; did you mean 'minimize'?"),
    (top(metric={"name": "m", "goal": "max"}), "metric.goal", "expected one of minimize, maximize, got 'max'; did you mean 'maximize'?"),
    (top(metric={"name": "m", "targt": 1}), "metric.targt", "unknown key; did you mean 'target'?"),
    (top(metric={"name": "m", "target": "high"}), "metric.target", "expected a number, got 'high'"),
    (top(metric={"name": "m", "impute": "mean"}), "metric.impute", "expected one of latest, best, worst, got 'mean'"),
    # early_terminate
    (top(early_terminate={"type": "hyperbnd", "min_iter": 3}), "early_terminate.type", "got 'hyperbnd'; did you mean 'hyperband'?"),
    (top(early_terminate={"min_iter": 3}), "early_terminate.type", "required; expected hyperband"),
    (top(early_terminate={"type": "hyperband"}), "early_terminate", "hyperband needs min_iter, or max_iter and s"),
    (top(early_terminate={"type": "hyperband", "max_iter": 27}), "early_terminate.s", "required with max_iter"),
    (top(early_terminate={"type": "hyperband", "s": 2}), "early_terminate.max_iter", "required with s"),
    (top(early_terminate={"type": "hyperband", "min_iter": 0}), "early_terminate.min_iter", "expected an integer >= 1, got 0"),
    (top(early_terminate={"type": "hyperband", "min_iter": 3, "eta": 1}), "early_terminate.eta", "expected a number > 1, got 1"),
    (top(early_terminate={"type": "hyperband", "min_iter": 3, "strict": "yes"}), "early_terminate.strict", "expected true or false, got 'yes'"),
    (top(early_terminate={"type": "hyperband", "min_iter": 3, "min_iters": 2}), "early_terminate.min_iters", "unknown key; did you mean 'min_iter'?"),
    (top(early_terminate={"type": "hyperband", "max_iter": 27, "s": 1.5}), "early_terminate.s", "expected an integer >= 1, got 1.5"),
    (top(early_terminate={"type": "hyperband", "max_iter": 2, "s": 1}), "early_terminate.max_iter", "max_iter 2 / eta 3 is below 1"),
    (top(early_terminate={"type": "hyperband", "min_iter": 1, "max_iter": 27}), "early_terminate.s", "required with max_iter"),
    (top(early_terminate={"type": "asha", "min_iter": 9, "max_iter": 9}), "early_terminate.max_iter", "expected an integer > min_iter (9), got 9"),
    (top(early_terminate={"type": "asha", "s": 2}), "early_terminate.s", "not a key of type asha; expected one of eta, max_iter, min_iter, type"),
    (top(early_terminate={"type": "asha", "eta": "x"}), "early_terminate.eta", "expected a number > 1, got 'x'"),
    (top(early_terminate={"type": "ashaa"}), "early_terminate.type", "did you mean 'asha'?"),
    (top(early_terminate=[1]), "early_terminate", "expected a mapping such as {type: hyperband, min_iter: 3}, got [1]"),
    (top(sweeper={"resource": {"name": ""}}), "sweeper.resource.name", "expected a parameter name, got ''"),
    (top(sweeper={"resource": {"name": "epochs", "brackets": 0}}), "sweeper.resource.brackets", "expected an integer >= 1, got 0"),
    # sweeper options
    (top(sweeper={"seed": 1.5}), "sweeper.seed", "expected an integer, got 1.5"),
    (top(sweeper={"max_retries": -1}), "sweeper.max_retries", "expected an integer >= 0, got -1"),
    (top(sweeper={"sample_without_replacement": "no"}), "sweeper.sample_without_replacement", "expected true or false, got 'no'"),
    (top(sweeper={"seeds": 1}), "sweeper.seeds", "unknown key; did you mean 'seed'?"),
    # parameters
    (top(parameters={"": {"value": 1}}), "parameters", "expected a parameter name, got ''"),
    (top(epochs={"value": 5}), "epochs", "unknown key; a parameter goes under parameters:"),
    (top(optimizer={"parameters": {"lr": {"value": 1}}}), "optimizer", "unknown key; a parameter goes under parameters:"),
    (top(parameters={"a\nb": {"value": 1}}), "parameters.a\nb", "a parameter name may not hold control characters, got 'a\\nb'"),
    (top(parameters={1: {"value": 1}}), "parameters.1", "the name 1 is not text (YAML reads bare numbers, booleans and null as such): quote it"),
    (top(parameters={"lr": 0.1}), "parameters.lr", "expected a mapping such as {value: ...}, {values: [...]} or {min: ..., max: ...}, got 0.1"),
    (param(vaules=[1, 2]), "parameters.p.vaules", "unknown key; did you mean 'values'?"),
    (param(valuse=[1, 2]), "parameters.p.valuse", "unknown key; did you mean 'values'?"),
    (param(distribution="categorial", values=[1]), "parameters.p.distribution", "unknown distribution 'categorial'; did you mean 'categorical'?"),
    (param(distribution="gaussian"), "parameters.p.distribution", "unknown distribution 'gaussian'; expected one of constant, categorical,"),
    (param(mu=0, sigma=1), "parameters.p", "cannot infer the distribution from the keys (mu, sigma)"),
    (param(min=1), "parameters.p.max", "required beside min"),
    (param(distribution="uniform", min=0), "parameters.p.max", "required for uniform"),
    (param(values=[]), "parameters.p.values", "expected a non-empty list, got []"),
    (param(value="adam", values=["adam"]), "parameters.p.value", "a parameter is one constant (value) or a choice (values), not both"),
    (param(values="abc"), "parameters.p.values", "expected a non-empty list, got 'abc'"),
    (param(values=[1, 2], probabilities=[0.5, 0.6]), "parameters.p.probabilities", "expected numbers summing to 1, got [0.5, 0.6]"),
    (param(values=[1, 2], probabilities=[1.0]), "parameters.p.probabilities", "expected 2 probabilities, one per value, got 1"),
    (param(values=[1, 2], probabilities=[1.5, -0.5]), "parameters.p.probabilities[1]", "expected a number >= 0, got -0.5"),
    (param(min=5, max=1), "parameters.p", "min must be less than max, got min 5, max 1"),
    (param(min=0.5, max=0.5), "parameters.p", "min must be less than max, got min 0.5, max 0.5"),
    (param(distribution="log_uniform_values", min=0, max=0.1), "parameters.p.min", "log_uniform_values needs min > 0, got 0"),
    (param(distribution="inv_log_uniform_values", min=-1, max=1), "parameters.p.min", "inv_log_uniform_values needs min > 0, got -1"),
    (param(distribution="q_log_uniform_values", min=0, max=8, q=2), "parameters.p.min", "q_log_uniform_values needs min > 0, got 0"),
    (param(distribution="log_uniform", min=1, max=1000), "parameters.p.max", "log_uniform bounds are base-e exponents and exp(1000) is out of range; did you mean log_uniform_values?"),
    (param(distribution="int_uniform", min=1.5, max=3), "parameters.p.min", "expected an integer, got 1.5"),
    (param(distribution="uniform", min="low", max=1), "parameters.p.min", "expected a number, got 'low'"),
    (param(distribution="normal", sigma=-1), "parameters.p.sigma", "expected a number >= 0, got -1"),
    (param(distribution="q_uniform", min=0, max=1, q=0), "parameters.p.q", "expected a number > 0, got 0"),
    (param(distribution="beta", a=0), "parameters.p.a", "expected a number > 0, got 0"),
    (param(distribution="q_beta", b=-2), "parameters.p.b", "expected a number > 0, got -2"),
    (param(distribution="normal", mu=0, min=1), "parameters.p.min", "not a key of normal (it takes: mu, sigma)"),
    (param(min=1, max=10, q=2), "parameters.p.q", "not a key of int_uniform (it takes: min, max); give 'distribution' to choose another"),
    (param(parameters={"x": {"value": 1}}, value=2), "parameters.p.value", "not allowed beside nested 'parameters'"),
    (param(parameters={"x": {"distribution": "uniform", "min": 1, "max": 0}}), "parameters.p.parameters.x", "min must be less than max"),
    (param(parameters={}), "parameters.p.parameters", "expected at least one parameter"),
    (top(parameters={"opt.lr": {"value": 1}, "opt": {"parameters": {"lr": {"value": 2}}}}), "parameters.opt.parameters.lr", "name 'opt.lr' is also used by parameters.opt.lr"),
    # the method's own rules
    (top(method="grid", parameters={"u": {"min": 0.0, "max": 1.0}}), "parameters.u", "grid search needs a finite set of values; uniform is continuous"),
    (top(method="grid", parameters={"c": {"values": [1, 2], "probabilities": [0.5, 0.5]}}), "parameters.c.probabilities", "grid search does not allow probabilities"),
]  # fmt: skip


@pytest.mark.parametrize(("data", "path", "message"), CASES, ids=[f"{i}-{c[1]}" for i, c in enumerate(CASES)])
def test_broken(data: dict[str, Any], path: str, message: str) -> None:
    with pytest.raises(SpecError) as exc:
        parse_sweep(data)
    found = [p for p in exc.value.problems if p.path == path and message in p.message]
    assert found, f"no problem at {path!r} containing {message!r} in {exc.value.problems}"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        (
            "127.0.0.1:5000",
            "expected a URI such as http://127.0.0.1:5000: without a scheme it names a local folder",
        ),
        ("mlflow.corp:443/?token=s3cret", "expected a URI such as http://mlflow.corp:443: without a scheme"),
        ("http:/bob:pw@mlflow:5000", "expected http://host:port, such as http://***@mlflow:5000"),
        (
            "htp://bob:pw@mlflow:5000",
            "expected http://***@mlflow:5000: no tracking store has the scheme 'htp'",
        ),
    ],
)
def test_a_mistyped_mlflow_uri_is_refused_as_a_sweep_is_made_and_read_when_stored(
    uri: str, message: str
) -> None:
    data = top(integrations={"mlflow": {"tracking_uri": uri}})
    with pytest.raises(SpecError) as exc:
        parse_new_sweep(data)
    (problem,) = exc.value.problems
    assert problem.path == "integrations.mlflow.tracking_uri" and problem.message.startswith(message)
    assert "s3cret" not in problem.message and ":pw" not in problem.message
    parse_sweep(data)  # a sweep made before this check still reads


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 35


def test_every_problem_is_reported_together() -> None:
    data = {
        "method": "gird",
        "paramters": {},
        "run_cap": -3,
        "metric": {"name": "m", "goal": "up"},
        "command": ["${env}", "${nope}"],
        "parameters": {
            "lr": {"distribution": "log_uniform_values", "min": 0, "max": 0.1},
            "opt": {"distribution": "categorial", "values": ["adam"]},
            "bs": {"values": [16, 32]},
        },
    }
    with pytest.raises(SpecError) as exc:
        parse_sweep(data, source="multi.yaml")
    assert set(exc.value.problems) == {
        Problem("paramters", "unknown key; did you mean 'parameters'?"),
        Problem("method", "unknown method 'gird'; did you mean 'grid'?"),
        Problem("run_cap", "expected an integer > 0, got -3"),
        Problem("metric.goal", "expected one of minimize, maximize, got 'up'"),
        Problem(
            "command[1]",
            "unknown macro ${nope} (allowed: ${env}, ${interpreter}, ${program}, ${args}, ${args_no_hyphens}, "
            "${args_no_boolean_flags}, ${args_no_equals}, ${args_json}, ${args_json_file}, ${args_append_hydra}, "
            "${args_override_hydra}, ${envvar:NAME})",
        ),
        Problem("parameters.lr.min", "log_uniform_values needs min > 0, got 0"),
        Problem(
            "parameters.opt.distribution", "unknown distribution 'categorial'; did you mean 'categorical'?"
        ),
    }
    text = str(exc.value)
    assert text.startswith("multi.yaml: 7 problem(s)") and "run_cap: expected an integer > 0, got -3" in text


def test_values_a_sweep_cannot_store_are_named_alone() -> None:
    # Through the Python API: a date, a NumPy integer (np.float64 is a float), a set. Before, the
    # sweep was refused by the store with a TypeError and no key path.
    np = pytest.importorskip("numpy")
    data = top(
        run_cap="x",  # a problem of another kind is left for once these are plain
        parameters={
            "day": {"value": datetime.date(2024, 1, 1)},
            "n": {"values": [np.int64(1), np.float64(0.5)]},
        },
        sweeper={"tags": {"a"}},
        metric={"name": "loss", "target": float("-inf")},
    )
    with pytest.raises(SpecError) as exc:
        parse_new_sweep(data)
    assert [(p.path, p.message.split(",")[0]) for p in exc.value.problems] == [
        ("parameters.day.value", "2024-01-01 is a datetime.date"),
        ("parameters.n.values[0]", "1 is a numpy.int64"),
        ("sweeper.tags", "{'a'} is a set"),
        ("metric.target", "-inf is not a number a sweep can hold: a sweeper server takes sweeps as JSON"),
    ]
    # A sweep stored before these were refused is still read as it is.
    stored = top(parameters={"clip": {"value": float("inf")}})
    assert parse_sweep(stored).parameter("clip").value == float("inf")
    assert "which a sweep cannot store; expected a string, a number" in exc.value.problems[0].message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "expected a mapping of sweep keys at the top level, got an empty file"),
        ([1, 2], "expected a mapping of sweep keys at the top level, got [1, 2]"),
        ("method: grid", "expected a mapping of sweep keys at the top level, got 'method: grid'"),
        (  # a file that is one long line of text (not YAML at all): shown cut short, not whole
            "root:x:0:0 " * 40,
            "expected a mapping of sweep keys at the top level, got "
            f"{repr('root:x:0:0 ' * 40)[:115]}...' (440 characters)",
        ),
    ],
)
def test_top_level_not_a_mapping(data: Any, message: str) -> None:
    with pytest.raises(SpecError) as exc:
        parse_sweep(data)
    assert exc.value.problems == (Problem("", message),)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "bad.yaml",
            "method: grid\nparameters:\n  a: {values: [1]\n  b: 2\n",
            "malformed YAML at line 4, column 3",
        ),
        ("tab.yaml", "method: grid\n\tparameters: 1\n", "malformed YAML at line 2"),
        ("bad.json", '{"method": "grid",\n "x": }', "malformed JSON at line 2, column 7: Expecting value"),
        ("empty.yaml", "", "got an empty file"),
        ("list.yaml", "- 1\n- 2\n", "got [1, 2]"),
        (
            "dup.yaml",
            "method: grid\nparameters: {a: {value: 1}}\nmethod: random\n",
            "duplicate key 'method' at line 3",
        ),
        ("latin1.yaml", b"name: caf\xe9\n", "not a UTF-8 text file"),
    ],
)
def test_broken_files(tmp_path: Path, name: str, text: str | bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(SpecError) as exc:
        load_sweep_file(path)
    assert exc.value.source == str(path)
    assert any(p.path == "" and message in p.message for p in exc.value.problems), exc.value.problems


def test_nan_in_a_sweep_file_is_named_by_its_key_path(tmp_path: Path) -> None:
    # validate passed it and an embedded store took it; a server's client failed with a traceback
    path = tmp_path / "nan.yaml"
    path.write_text("method: grid\nprogram: t.py\nparameters: {lr: {values: [0.1, .nan]}}\n")
    with pytest.raises(SpecError) as exc:
        load_sweep_file(path)
    (problem,) = exc.value.problems
    assert problem.path == "parameters.lr.values[1]" and problem.message.startswith("nan is not a number")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as exc:
        load_sweep_file(tmp_path / "nope.yaml")
    assert exc.value.problems == (Problem("", "file not found"),)
    with pytest.raises(SpecError) as exc:
        load_sweep_file(tmp_path)
    assert exc.value.problems == (Problem("", "is a directory, not a sweep file"),)


# Any YAML-like value, biased towards the keys a sweep file uses, so the parser meets odd shapes.
_KEYS = st.sampled_from(
    ["method", "parameters", "metric", "early_terminate", "command", "program", "run_cap", "sweeper", "value"]
    + ["values", "probabilities", "min", "max", "q", "mu", "sigma", "a", "b", "distribution", "name", "goal"]
    + ["type", "min_iter", "max_iter", "s", "eta", "strict", "seed", "x", "grid", "random", "uniform"]
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=True),
    _KEYS,
    st.sampled_from(["1e-5", "${args}"]),
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_KEYS | st.integers(0, 3), inner, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.dictionaries(_KEYS, _VALUES, max_size=6))
def test_any_input_gives_a_spec_or_problems(data: dict[str, Any]) -> None:
    try:
        parse_sweep(data)
    except SpecError as exc:
        assert exc.problems and all(isinstance(p, Problem) and p.message for p in exc.problems)


_NUMBERS = st.one_of(
    st.integers(-1000, 1000), st.floats(-1e6, 1e6), st.sampled_from(["1e-5", "3", "-2.5e-3"])
)
_PARAMETER = st.fixed_dictionaries(
    {},
    optional={
        "distribution": st.sampled_from([d.value for d in Distribution]),
        "min": _NUMBERS,
        "max": _NUMBERS,
        "q": _NUMBERS,
        "mu": _NUMBERS,
        "sigma": _NUMBERS,
        "a": _NUMBERS,
        "b": _NUMBERS,
        "values": st.lists(_SCALARS, max_size=3),
        "probabilities": st.lists(st.floats(0, 1), max_size=3),
        "value": _SCALARS,
    },
)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(_PARAMETER)
def test_a_parsed_parameter_always_samples(body: dict[str, Any]) -> None:
    """Whatever the checks let through can be sampled and, when finite, listed."""
    try:
        spec = parse_sweep(param(**body))
    except SpecError as exc:
        assert exc.problems
        return
    rng = random.Random(0)
    for p in spec.parameters:
        for _ in range(20):
            sample(p, rng)
        values = grid_values(p)
        if values is not None and len(values) < 10_000:
            assert len(values) >= 1
