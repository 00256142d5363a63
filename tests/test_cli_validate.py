"""``sweeper validate``: one OK line per good file; every problem, exit 2, for a bad one."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from sweeper.cli import main

DATA = Path(__file__).parent / "data" / "sweeps"

GRID = """\
method: grid
program: train.py
metric: {name: val_acc, goal: maximize}
parameters:
  lr: {values: [1e-3, 1e-2, 1e-1]}
  batch_size: {values: [32, 64]}
  optimizer:
    parameters:
      name: {values: [adam, sgd]}
"""


def run(*args: str):
    return CliRunner().invoke(main, ["validate", *args])


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_valid_file(tmp_path: Path) -> None:
    path = write(tmp_path, "grid.yaml", GRID)
    result = run(path)
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"{path}: OK: grid, 3 parameters (lr, batch_size, optimizer.name), 12 combinations, "
        "metric val_acc (maximize)\n"
    )
    assert result.stderr == ""


def test_several_valid_files() -> None:
    files = [str(DATA / name) for name in ("wandb_bayes_nested.yaml", "hyperband_max_iter.json")]
    result = run(*files)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line.split(": OK: ")[0] for line in lines] == files
    assert "hyperband early termination (max_iter 27, s 2, eta 3)" in lines[1]


def test_broken_file_lists_every_problem(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "broken.yaml",
        "method: grid\nprogram: t.py\nrun_cap: -3\nparameters:\n"
        "  lr: {distribution: log_uniform_values, min: 0, max: 0.1}\n"
        "  opt: {distribution: categorial, values: [adam]}\n",
    )
    result = run(path)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert sorted(result.stderr.splitlines()) == sorted(
        [
            f"{path}: run_cap: expected an integer > 0, got -3",
            f"{path}: parameters.lr.min: log_uniform_values needs min > 0, got 0",
            f"{path}: parameters.opt.distribution: unknown distribution 'categorial'; "
            "did you mean 'categorical'?",
        ]
    )
    assert "Traceback" not in result.output


def test_good_and_bad_together(tmp_path: Path) -> None:
    good = write(tmp_path, "good.yaml", GRID)
    bad = write(tmp_path, "bad.yaml", GRID.replace("method: grid", "method: grid\nparamters: {}"))
    result = run(good, bad)
    assert result.exit_code == 2
    assert result.stdout.startswith(f"{good}: OK: ")
    assert result.stderr == f"{bad}: paramters: unknown key; did you mean 'parameters'?\n"


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    result = run(path)
    assert result.exit_code == 2
    assert result.stderr == f"{path}: file not found\n"


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "method: grid\nparameters:\n  a: {values: [1, 2]\n  b: {value: 1}\n")
    result = run(path)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{path}: malformed YAML at line 4, column 3: ")
    assert "Traceback" not in result.output


def test_did_you_mean_for_misspelt_keys(tmp_path: Path) -> None:
    text = GRID.replace("goal: maximize", "gaol: maximize").replace("values: [32, 64]", "vaules: [32, 64]")
    path = write(tmp_path, "typo.yaml", text)
    result = run(path)
    assert result.exit_code == 2
    assert f"{path}: metric.gaol: unknown key; did you mean 'goal'?" in result.stderr
    assert f"{path}: parameters.batch_size.vaules: unknown key; did you mean 'values'?" in result.stderr


def test_needs_a_file() -> None:
    result = run()
    assert result.exit_code == 2
    assert "Missing argument" in result.output


def test_exponent_bounds_that_look_like_values_are_pointed_out(tmp_path: Path) -> None:
    meant_values = write(
        tmp_path,
        "values.yaml",
        "method: random\nprogram: t.py\nparameters:\n"
        "  opt:\n    parameters:\n      lr: {distribution: log_uniform, min: 0.0001, max: 0.1}\n"
        "  decay: {distribution: inv_log_uniform, min: 0.001, max: 0.5}\n",
    )
    result = run(meant_values)
    assert result.exit_code == 0, result.output  # valid: W&B runs it too
    assert result.stderr.splitlines() == [
        f"warning: {meant_values}: parameters.opt.parameters.lr: log_uniform takes base-e exponents as "
        "min and max, so 0.0001 and 0.1 give values from 1 to 1.105; for values from 0.0001 to 0.1, "
        "use log_uniform_values",
        f"warning: {meant_values}: parameters.decay: inv_log_uniform takes base-e exponents as min and "
        "max, so 0.001 and 0.5 give values from 0.6065 to 0.999; for values from 0.001 to 0.5, use "
        "inv_log_uniform_values",
    ]
    exponents = write(
        tmp_path,
        "exponents.yaml",
        "method: random\nprogram: t.py\n"
        "parameters:\n  lr: {distribution: log_uniform, min: -9.2, max: -2.3}\n",
    )
    result = run(exponents)
    assert result.exit_code == 0 and result.stderr == ""


def test_a_file_without_the_program_its_command_runs_is_valid_with_a_warning(tmp_path: Path) -> None:
    path = write(tmp_path, "function.yaml", GRID.replace("program: train.py\n", ""))
    result = run(path)
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith(f"warning: {path}: program: not given, and the command runs ${{program}}")
    assert "sweeper.agent(SWEEP_ID, function=train)" in result.stderr
    assert "warning" not in run(write(tmp_path, "grid.yaml", GRID)).stderr


def test_grid_values_made_twice_and_yaml_booleans_among_them_are_pointed_out(tmp_path: Path) -> None:
    text = (
        "method: grid\nprogram: t.py\nparameters:\n"
        "  mode: {values: [yes, on, maybe]}\n  x: {values: [1, 1.0, 2]}\n"
        "  amp: {values: [true, false, auto]}\n"
    )
    path = write(tmp_path, "values.yaml", text)
    result = run(path)
    assert result.exit_code == 0, result.output  # valid: W&B reads it so too
    assert result.stderr.splitlines() == [
        f"warning: {path}: parameters.mode.values: [True, True, 'maybe'] holds a boolean twice: YAML reads "
        "yes/no and on/off as true/false; quote them ('on') to keep them strings",
        f"warning: {path}: parameters.x.values: [1, 1.0, 2] makes 2 distinct values; the grid runs each "
        "once, as W&B's does",
    ]
    # In a random search a repeat weighs a value, as in W&B: no warning.
    assert run(write(tmp_path, "random.yaml", text.replace("grid", "random"))).stderr == ""


def test_hyperband_s_beside_min_iter_is_taken_as_w_and_b_takes_it(tmp_path: Path) -> None:
    """A common copy of W&B's examples: min_iter, eta and s, no max_iter. W&B runs it on min_iter
    and leaves s unused; so does sweeper, saying so. With max_iter too, max_iter and s count."""
    text = (
        "method: random\nprogram: t.py\nmetric: {name: loss, goal: minimize}\n"
        "parameters:\n  lr: {min: 0.001, max: 0.1}\n"
        "early_terminate: {type: hyperband, min_iter: 5, eta: 3, s: 2}\n"
    )
    path = write(tmp_path, "hb.yaml", text)
    result = run(path)
    assert result.exit_code == 0, result.output
    assert "hyperband early termination (min_iter 5, eta 3)" in result.stdout
    assert result.stderr.splitlines() == [
        f"warning: {path}: early_terminate.s: not used without max_iter: hyperband stops trials at "
        "min_iter, min_iter*eta, min_iter*eta^2, ... (as W&B does); give max_iter and s instead to count "
        "brackets down from max_iter"
    ]
    both = write(tmp_path, "both.yaml", text.replace("s: 2}", "s: 1, max_iter: 1000}"))
    result = run(both)
    assert result.exit_code == 0 and result.stderr == "", result.output
    assert "hyperband early termination (max_iter 1000, s 1, eta 3)" in result.stdout
