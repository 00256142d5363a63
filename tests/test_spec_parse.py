"""Valid sweep files, as W&B documents them, parse into the SweepSpec they mean."""

from __future__ import annotations

import dataclasses
import datetime
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from sweeper.spec import (
    DEFAULT_COMMAND,
    Distribution,
    Goal,
    Hyperband,
    Options,
    Parameter,
    SpecError,
    build_config,
    config_key,
    describe,
    flatten_config,
    grid_problems,
    grid_size,
    grid_values,
    load_sweep_file,
    parse_sweep,
    space_size,
    space_values,
)

DATA = Path(__file__).parent / "data" / "sweeps"
D = Distribution


def sweep(**parameters: object) -> dict:
    return {"method": "random", "program": "train.py", "parameters": parameters}


def only(spec_dict: dict) -> Parameter:
    (param,) = parse_sweep(spec_dict).parameters
    return param


def test_documented_nested_sweep() -> None:
    spec = load_sweep_file(DATA / "wandb_bayes_nested.yaml")
    assert spec.method == "random"
    assert (spec.program, spec.name, spec.project, spec.entity) == ("train.py", "cnn-sweep", "vision", "team")
    assert spec.description == "nested optimizer settings"
    assert spec.metric.name == "val_loss" and spec.metric.goal is Goal.MINIMIZE and spec.metric.target == 0.05
    assert spec.early_terminate == Hyperband(min_iter=3)
    assert spec.command[3] == "--data=${envvar:DATA_DIR}/cifar"
    assert spec.run_cap == 50
    assert [p.path for p in spec.parameters] == [
        ("learning_rate",),
        ("batch_size",),
        ("epochs",),
        ("optimizer", "name"),
        ("optimizer", "momentum"),
        ("optimizer", "schedule", "warmup"),
    ]
    lr = spec.parameter("learning_rate")
    assert lr.distribution is D.LOG_UNIFORM_VALUES and (lr.min, lr.max) == (1e-5, 1e-1)
    assert spec.parameter("optimizer.schedule.warmup").distribution is D.INT_UNIFORM
    assert (
        spec.parameter("optimizer.schedule.warmup").key_path
        == "parameters.optimizer.parameters.schedule.parameters.warmup"
    )
    assert spec.raw["parameters"]["epochs"] == {"value": 10}


def test_json_file_with_hyperband_max_iter() -> None:
    spec = load_sweep_file(DATA / "hyperband_max_iter.json")
    assert spec.early_terminate == Hyperband(max_iter=27, s=2, eta=3, strict=False)
    assert spec.metric.goal is Goal.MAXIMIZE
    assert spec.parameter("layers").distribution is D.INT_UNIFORM
    assert spec.parameter("dropout").q == 0.1
    assert grid_size(spec) == 3 * 4 * 5  # dropout: arange(0, 0.5, 0.1), 0.5 left out as in W&B


def test_every_distribution_and_our_own_keys() -> None:
    spec = load_sweep_file(DATA / "every_distribution.yaml")
    assert {p.distribution for p in spec.parameters} == set(Distribution)
    assert spec.options == Options(seed=7, max_retries=2, sample_without_replacement=False)
    assert spec.raw["integrations"] == {"mlflow": {"experiment": "demo"}}
    ln = spec.parameter("ln")
    assert (ln.mu, ln.sigma) == (0.0, 1.0)  # W&B defaults
    assert spec.parameter("cwp").probabilities == (0.25, 0.75)
    assert isinstance(spec.parameter("qu").q, int) and isinstance(spec.parameter("qbe").q, float)


def test_defaults() -> None:
    spec = parse_sweep(sweep(a={"values": [1]}))
    assert spec.command == DEFAULT_COMMAND
    assert spec.metric is None and spec.early_terminate is None and spec.run_cap is None
    assert spec.options == Options()
    spec = parse_sweep(
        {
            **sweep(a={"values": [1]}),
            "metric": {"name": "loss"},
            "early_terminate": {"type": "hyperband", "min_iter": 1},
        }
    )
    assert spec.metric.goal is Goal.MINIMIZE and spec.metric.impute == "worst"
    assert spec.metric.impute_while_running == "false"
    assert spec.early_terminate.eta == 3 and spec.early_terminate.strict is True
    beta = only(sweep(b={"distribution": "q_beta"}))
    assert (beta.a, beta.b, beta.q) == (1.0, 1.0, 1.0) and isinstance(beta.q, float)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"values": [1, 2]}, D.CATEGORICAL),
        ({"values": ["a", "b"], "probabilities": [0.3, 0.7]}, D.CATEGORICAL_W_PROBABILITIES),
        ({"value": 4}, D.CONSTANT),
        ({"value": None}, D.CONSTANT),
        ({"min": 1, "max": 10}, D.INT_UNIFORM),
        ({"min": 1, "max": 10.0}, D.UNIFORM),
        ({"min": 0.1, "max": 1}, D.UNIFORM),
        ({"min": "1e-5", "max": "1e-3"}, D.UNIFORM),
        ({"min": "1", "max": "3"}, D.INT_UNIFORM),
    ],
)
def test_type_inference(body: dict, expected: Distribution) -> None:
    assert only(sweep(p=body)).distribution is expected


def test_yaml_12_floats_are_numbers(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "method: random\nprogram: t.py\nmetric: {name: loss, target: 1e-3}\n"
        "parameters:\n"
        "  lr: {min: 1e-5, max: 1E+3}\n"
        "  wd: {values: [1e-5, .5, -2.5e-3, 1.0e2, 3, 1_000, 0x10, yes, 2.]}\n"
    )
    spec = load_sweep_file(path)
    lr = spec.parameter("lr")
    assert lr.distribution is D.UNIFORM and (lr.min, lr.max) == (1e-5, 1000.0)
    assert spec.parameter("wd").values == (1e-5, 0.5, -2.5e-3, 100.0, 3, 1000, 16, True, 2.0)
    assert spec.metric.target == 1e-3
    # The plain SafeLoader keeps its YAML 1.1 reading.
    assert yaml.safe_load("x: 1e-5") == {"x": "1e-5"}


def test_yaml_dates_are_read_as_the_text_written(tmp_path: Path) -> None:
    # W&B sends a sweep file on as YAML text, and its scripts get a date as written; a date object
    # could be neither stored nor passed as an argument.
    path = tmp_path / "s.yaml"
    path.write_text(
        "method: grid\nprogram: t.py\nparameters:\n"
        "  day: {value: 2024-01-01}\n"
        "  at: {values: [2024-01-01 10:00:00, 2024-01-01t10:00:00Z]}\n"
    )
    spec = load_sweep_file(path)
    assert spec.parameter("day").value == "2024-01-01"
    assert spec.parameter("at").values == ("2024-01-01 10:00:00", "2024-01-01t10:00:00Z")
    assert yaml.safe_load("x: 2024-01-01") == {"x": datetime.date(2024, 1, 1)}  # SafeLoader unchanged


def test_anchors_and_merge_keys_read_as_yaml_safe_load_reads_them(tmp_path: Path) -> None:
    # W&B reads sweep files with yaml.safe_load: files that share settings with << must move over.
    text = (
        "method: grid\nprogram: t.py\n"
        "parameters:\n"
        "  lr: &shared {values: [0.1, 0.2]}\n"
        "  wd:\n    <<: *shared\n    values: [0.0]\n"
        "  momentum:\n    <<: [*shared]\n"
    )
    path = tmp_path / "s.yaml"
    path.write_text(text)
    spec = load_sweep_file(path)
    assert [(p.name, p.values) for p in spec.parameters] == [
        ("lr", (0.1, 0.2)),
        ("wd", (0.0,)),
        ("momentum", (0.1, 0.2)),
    ]
    assert yaml.safe_load(text)["parameters"]["wd"] == {"values": [0.0]}
    # A key written twice in one mapping is still a mistake, merge or not.
    path.write_text(text.replace("values: [0.0]\n", "values: [0.0]\n    values: [0.3]\n"))
    with pytest.raises(SpecError, match="duplicate key 'values' at line 8"):
        load_sweep_file(path)


def test_numeric_strings_in_numeric_fields() -> None:
    p = only(sweep(p={"distribution": "q_normal", "mu": "1e1", "sigma": "0.5", "q": "2"}))
    assert (p.mu, p.sigma, p.q) == (10.0, 0.5, 2) and isinstance(p.q, int)
    spec = parse_sweep(
        {
            **sweep(a={"value": 1}),
            "run_cap": "5",
            "metric": {"name": "m", "target": "0.5"},
            "early_terminate": {"type": "hyperband", "max_iter": "27", "s": "2", "eta": "2"},
        }
    )
    assert spec.run_cap == 5 and spec.metric.target == 0.5
    assert spec.early_terminate == Hyperband(max_iter=27, s=2, eta=2)


def test_command_macros_numbers_and_booleans() -> None:
    names = (
        "env interpreter program args args_no_hyphens args_no_boolean_flags args_no_equals args_json "
        "args_json_file args_append_hydra args_override_hydra"
    )
    macros = [f"${{{name}}}" for name in names.split()]
    spec = parse_sweep(
        {
            **sweep(a={"value": 1}),
            "command": [*macros, "--port", 8080, "--scale", 1.5, "--fast", True, "${envvar:A}-${envvar:B_2}"],
        }
    )
    # Numbers and booleans as W&B's agent writes them: str(value).
    assert spec.command[-7:] == (
        "--port",
        "8080",
        "--scale",
        "1.5",
        "--fast",
        "True",
        "${envvar:A}-${envvar:B_2}",
    )
    # No ${program} in the command: no program needed.
    spec = parse_sweep(
        {"method": "grid", "command": ["python", "-m", "train", "${args}"], "parameters": {"a": {"value": 1}}}
    )
    assert spec.program is None


def test_hydra_override_names_and_shell_text_run_as_w_and_b_runs_them(tmp_path: Path) -> None:
    """Names outside W&B's schema pattern (W&B warns and runs them) and ``${...}`` text that is not
    a macro (passed on as written) are taken: Hydra sweeps name their parameters as overrides."""
    from sweeper.agents.command import expand_command

    data = {
        "method": "grid",
        "program": "train.py",
        "command": [
            "${env}",
            "bash",
            "-c",
            "cd ${HOME} && ${ENV} ${PROG} ${program_dir} exec python ${0} $@",
            "${program}",
            "${args_no_hyphens}",
        ],
        "parameters": {
            "+experiment": {"values": ["IRM", "DANN"]},
            "model/optimizer": {"value": "adam"},
            "~db": {"value": None},
            "out": {"value": "runs/${wandb.run.id}"},
        },
    }
    spec = parse_sweep(data)
    assert [p.name for p in spec.parameters] == ["+experiment", "model/optimizer", "~db", "out"]
    assert spec.command[3] == "cd ${HOME} && ${ENV} ${PROG} ${program_dir} exec python ${0} $@"
    argv = expand_command(
        spec.command,
        config=build_config(spec, {("+experiment",): "IRM"}),  # the rest are constants
        program="train.py",
        args_json_path=tmp_path / "args.json",
        interpreter="python",
        environ={},
    )
    assert argv == [
        "/usr/bin/env",
        "bash",
        "-c",
        "cd ${HOME} && ${ENV} ${PROG} ${program_dir} exec python ${0} $@",
        "train.py",
        "+experiment=IRM",
        "model/optimizer=adam",
        "~db=None",
        "out=runs/${wandb.run.id}",
    ]


def test_accepted_w_and_b_keys() -> None:
    data = {
        **sweep(a={"value": 1}),
        "controller": {"type": "cloud"},
        "apiVersion": "v1",
        "kind": "sweep",
        "job": "entity/project/job:v0",
        "image_uri": "repo/image:tag",
        "metric": {"name": "m", "impute": "best", "impute_while_running": False},
    }
    spec = parse_sweep(data)
    assert spec.metric.impute == "best" and spec.metric.impute_while_running == "false"
    assert spec.raw["image_uri"] == "repo/image:tag"


def test_spec_is_frozen_and_raw_is_a_copy() -> None:
    data = sweep(a={"values": [1, 2]})
    spec = parse_sweep(data)
    data["parameters"]["a"]["values"].append(3)
    assert spec.raw["parameters"]["a"]["values"] == [1, 2]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.method = "grid"  # type: ignore[misc]


def test_grid_values_and_size() -> None:
    spec = parse_sweep(
        {
            "method": "grid",
            "program": "t.py",
            "parameters": {
                "c": {"value": "x"},
                "cat": {"values": [1, 2, 3]},
                "i": {"min": -1, "max": 1},
                "qi": {"distribution": "q_uniform", "min": 1, "max": 10, "q": 3},
                "qf": {"distribution": "q_uniform", "min": 0.0, "max": 1.0, "q": 0.25},
            },
        }
    )
    values = {p.name: grid_values(p) for p in spec.parameters}
    assert values["c"] == ("x",) and values["cat"] == (1, 2, 3) and values["i"] == (-1, 0, 1)
    # W&B's grid: numpy.arange(min, max, q), from min, max left out.
    assert values["qi"] == (1, 4, 7) and all(isinstance(v, int) for v in values["qi"])
    assert values["qf"] == (0.0, 0.25, 0.5, 0.75)
    assert grid_size(spec) == 1 * 3 * 3 * 3 * 4
    assert grid_problems(spec) == []
    assert describe(spec).endswith(f"{1 * 3 * 3 * 3 * 4} combinations, no metric")
    # Sampling rounds to the lattice k*q instead, max included: what random search can return.
    sampled = {p.name: space_values(p) for p in spec.parameters}
    assert sampled["qi"] == (0, 3, 6, 9) and all(isinstance(v, int) for v in sampled["qi"])
    assert sampled["qf"] == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert space_size(spec) == 1 * 3 * 3 * 4 * 5
    assert describe(parse_sweep(spec.raw | {"method": "random"})).endswith("180 combinations, no metric")
    assert grid_size(parse_sweep(sweep(a={"values": [1]}, b={"min": 0.0, "max": 1.0}))) is None
    big = parse_sweep(
        sweep(a={"min": 0, "max": 10**12}, b={"distribution": "q_uniform", "min": 0, "max": 1e9, "q": 0.5})
    )
    assert grid_size(big) == (10**12 + 1) * (2 * 10**9)  # counted without listing
    assert space_size(big) == (10**12 + 1) * (2 * 10**9 + 1)


Q_UNIFORM_GRIDS = [
    {"min": 1, "max": 10, "q": 3},  # ints: 1, 4, 7
    {"min": 1, "max": 4},  # q defaults to 1.0: floats
    {"min": 1, "max": 10.0, "q": 3},  # one float bound: floats
    {"min": 0.0, "max": 1.0, "q": 0.25},  # max left out
    {"min": 1, "max": 1.3, "q": 0.1},  # float rounding lets a value past max in, as in numpy
    {"min": -0.35, "max": 0.4, "q": 0.15},
    {"min": 2, "max": 3, "q": 5},  # q wider than the range: min alone
]


@pytest.mark.parametrize("body", Q_UNIFORM_GRIDS, ids=[str(b) for b in Q_UNIFORM_GRIDS])
def test_q_uniform_grid_values_are_wandbs(body: dict) -> None:
    """The values W&B's grid search gives a q_uniform parameter, value for value and type for type."""
    grid_search = pytest.importorskip("sweeps.grid_search")
    config = {"method": "grid", "parameters": {"x": {"distribution": "q_uniform", **body}}}
    theirs = []
    while (run := grid_search.grid_search_next_runs(theirs, config)[0]) is not None:
        theirs.append(run)
    expected = [run.config["x"]["value"] for run in theirs]
    (param,) = parse_sweep(config).parameters
    assert json.dumps(grid_values(param)) == json.dumps(expected)  # 1 and 1.0 differ in JSON
    assert grid_size(parse_sweep(config)) == len(expected)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    lo=st.one_of(st.integers(-1000, 1000), st.floats(-1e3, 1e3)),
    width=st.one_of(st.integers(1, 1000), st.floats(1e-3, 1e3)),
    q=st.one_of(st.integers(1, 100), st.floats(1e-2, 100)),
)
def test_q_uniform_grid_is_numpy_arange(lo: float, width: float, q: float) -> None:
    np = pytest.importorskip("numpy")
    hi = lo + width
    if not lo < hi or (hi - lo) / q > 5000:
        return
    (param,) = parse_sweep(
        {"method": "grid", "parameters": {"x": {"distribution": "q_uniform", "min": lo, "max": hi, "q": q}}}
    ).parameters
    expected = np.arange(lo, hi, q).tolist()
    assert json.dumps(grid_values(param)) == json.dumps(expected)


def test_grid_problems_reported_by_the_grid_method() -> None:
    with pytest.raises(SpecError) as exc:
        parse_sweep({"method": "grid", "program": "t.py", "parameters": {
            "u": {"min": 0.0, "max": 1.0},
            "w": {"values": [1, 2], "probabilities": [0.5, 0.5]},
        }})  # fmt: skip
    paths = [p.path for p in exc.value.problems]
    assert paths == ["parameters.u", "parameters.w.probabilities"]
    assert "uniform is continuous" in exc.value.problems[0].message


def test_build_and_flatten_config() -> None:
    spec = load_sweep_file(DATA / "wandb_bayes_nested.yaml")
    values = {
        ("learning_rate",): 0.01,
        ("batch_size",): 64,
        ("optimizer", "name"): "adam",
        ("optimizer", "momentum"): 0.9,
        ("optimizer", "schedule", "warmup"): 2,
    }
    config = build_config(spec, values)
    assert config == {
        "learning_rate": 0.01,
        "batch_size": 64,
        "epochs": 10,
        "optimizer": {"name": "adam", "momentum": 0.9, "schedule": {"warmup": 2}},
    }
    assert flatten_config(config) == {**values, ("epochs",): 10}
    with pytest.raises(KeyError):
        build_config(spec, {("learning_rate",): 0.1})
    with pytest.raises(ValueError, match="nope"):
        build_config(spec, {**values, ("nope",): 1})


def test_flatten_config_with_spec_keeps_dict_values_whole() -> None:
    spec = parse_sweep(
        sweep(model={"values": [{"depth": 2}, {"depth": 4}]}, opt={"parameters": {"lr": {"value": 1}}})
    )
    config = {"model": {"depth": 2}, "opt": {"lr": 1}}
    assert flatten_config(config, spec) == {("model",): {"depth": 2}, ("opt", "lr"): 1}
    assert flatten_config(config) == {("model", "depth"): 2, ("opt", "lr"): 1}


def test_config_key() -> None:
    assert config_key({"a": 3.0, "b": {"y": 1, "x": 2}}) == config_key({"b": {"x": 2, "y": 1.0}, "a": 3})
    assert config_key({"a": 3.5}) != config_key({"a": 3})
    assert config_key({"a": True}) != config_key({"a": 1})
    assert config_key({"a": [1.0, 2]}) == config_key({"a": [1, 2]})
    assert json.loads(config_key({"b": 1, "a": 2})) == {"a": 2, "b": 1}


def test_describe() -> None:
    spec = parse_sweep(
        {
            "method": "grid",
            "program": "t.py",
            "metric": {"name": "val_acc", "goal": "maximize"},
            "parameters": {
                "lr": {"values": [0.1, 0.01]},
                "batch_size": {"values": [16, 32]},
                "optimizer": {"parameters": {"name": {"values": ["adam", "sgd", "adamw"]}}},
            },
        }
    )
    assert describe(spec) == (
        "grid, 3 parameters (lr, batch_size, optimizer.name), 12 combinations, metric val_acc (maximize)"
    )
    spec = load_sweep_file(DATA / "wandb_bayes_nested.yaml")
    assert describe(spec).startswith("random, 6 parameters (learning_rate, batch_size, epochs,")
    assert (
        "continuous space, metric val_loss (minimize), "
        "hyperband early termination (min_iter 3, eta 3), run_cap 50" in describe(spec)
    )


def test_progress_lines_show_a_float_as_a_float() -> None:
    """A q_uniform value is 280.0 in the script (q written as a float): not shown as 280."""
    from sweeper.results import format_config

    config = {
        "size": 280.0,
        "lr": 0.1,
        "big": 12345.0,
        "n": 3,
        "neg": -2.0,
        "tiny": 1e-7,
        "inf": float("inf"),
    }
    assert format_config(config, limit=7) == "size=280.0 lr=0.1 big=1.234e+04 n=3 neg=-2.0 tiny=1e-07 inf=inf"
