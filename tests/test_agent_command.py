"""expand_command: a sweep's command template with W&B's agent macros."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from sweeper.agents.command import DEFAULT_COMMAND, expand_command

CONFIG = {
    "lr": 0.1,
    "layers": 3,
    "amp": True,
    "bias": False,
    "opt": None,
    "model": {"depth": 2},
    "name": "a b",
}


def expand(template, tmp_path: Path, config=CONFIG, environ=None, program="train.py"):
    return expand_command(
        template,
        config=config,
        program=program,
        args_json_path=tmp_path / "args.json",
        interpreter="/opt/py/bin/python",
        environ=environ or {},
    )


def test_default_command_is_env_interpreter_program_args(tmp_path: Path) -> None:
    assert list(DEFAULT_COMMAND) == ["${env}", "${interpreter}", "${program}", "${args}"]
    argv = expand(None, tmp_path, config={"lr": 0.1})
    assert argv == ["/usr/bin/env", "/opt/py/bin/python", "train.py", "--lr=0.1"]


@pytest.mark.parametrize(
    ("macro", "expected"),
    [
        ("${env}", ["/usr/bin/env"]),
        ("${interpreter}", ["/opt/py/bin/python"]),
        ("${program}", ["train.py"]),
        (
            "${args}",
            [
                "--lr=0.1",
                "--layers=3",
                "--amp=True",
                "--bias=False",
                "--opt=None",
                "--model={'depth': 2}",
                "--name=a b",
            ],
        ),
        (
            "${args_no_hyphens}",
            ["lr=0.1", "layers=3", "amp=True", "bias=False", "opt=None", "model={'depth': 2}", "name=a b"],
        ),
        (
            "${args_no_boolean_flags}",
            ["--lr=0.1", "--layers=3", "--amp", "--opt=None", "--model={'depth': 2}", "--name=a b"],
        ),
        (
            "${args_no_equals}",
            [
                "--lr",
                "0.1",
                "--layers",
                "3",
                "--amp",
                "True",
                "--bias",
                "False",
                "--opt",
                "None",
                "--model",
                "{'depth': 2}",
                "--name",
                "a b",
            ],
        ),
        (
            "${args_append_hydra}",
            [
                "+lr=0.1",
                "+layers=3",
                "+amp=True",
                "+bias=False",
                "+opt=None",
                "+model={'depth': 2}",
                "+name=a b",
            ],
        ),
        (
            "${args_override_hydra}",
            [
                "++lr=0.1",
                "++layers=3",
                "++amp=True",
                "++bias=False",
                "++opt=None",
                "++model={'depth': 2}",
                "++name=a b",
            ],
        ),
    ],
)
def test_each_list_macro(macro: str, expected: list[str], tmp_path: Path) -> None:
    assert expand([macro], tmp_path) == expected


def test_args_json_is_one_argument(tmp_path: Path) -> None:
    [arg] = expand(["${args_json}"], tmp_path)
    assert arg == json.dumps(CONFIG)
    assert json.loads(arg) == CONFIG


def test_args_json_file_is_written(tmp_path: Path) -> None:
    argv = expand(["python", "train.py", "--config", "${args_json_file}"], tmp_path)
    assert argv == ["python", "train.py", "--config", str(tmp_path / "args.json")]
    assert json.loads((tmp_path / "args.json").read_text()) == CONFIG


def test_args_json_file_not_written_when_unused(tmp_path: Path) -> None:
    expand(["${args}"], tmp_path)
    assert not (tmp_path / "args.json").exists()


def test_literal_chunks_stay_whole(tmp_path: Path) -> None:
    template = ["torchrun", "--nproc_per_node=2", "${program}", "--note=${args}", "x ${program}", 7]
    assert expand(template, tmp_path, config={}) == [
        "torchrun",
        "--nproc_per_node=2",
        "train.py",
        "--note=${args}",
        "x ${program}",
        "7",
    ]


def test_macro_order_follows_the_template(tmp_path: Path) -> None:
    argv = expand(["${args_no_hyphens}", "--", "${program}"], tmp_path, config={"a": 1, "b": 2})
    assert argv == ["a=1", "b=2", "--", "train.py"]


def test_empty_config_gives_no_args(tmp_path: Path) -> None:
    assert expand(["${program}", "${args}", "${args_no_equals}"], tmp_path, config={}) == ["train.py"]
    assert expand(["${args_json}"], tmp_path, config={}) == ["{}"]


def test_envvar_is_replaced_anywhere_in_a_chunk(tmp_path: Path) -> None:
    env = {"DATA_DIR": "/data", "SEED": "7"}
    argv = expand(["--data=${envvar:DATA_DIR}/train", "${envvar:SEED}", "${program}"], tmp_path, environ=env)
    assert argv == ["--data=/data/train", "7", "train.py"]


def test_envvar_can_name_a_whole_macro(tmp_path: Path) -> None:
    # The variable is expanded first, so its value may itself be a macro, as in W&B.
    argv = expand(["${envvar:STYLE}"], tmp_path, config={"a": 1}, environ={"STYLE": "${args_no_hyphens}"})
    assert argv == ["a=1"]


def test_unset_envvar_leaves_its_name_and_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sweeper.agents.command"):
        argv = expand(["--cache=${envvar:NOT_SET_ANYWHERE}"], tmp_path)
    assert argv == ["--cache=NOT_SET_ANYWHERE"]
    assert "NOT_SET_ANYWHERE" in caplog.text


def test_envvar_reads_os_environ_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SWEEPER_TEST_VALUE", "hello")
    argv = expand_command(
        ["${envvar:SWEEPER_TEST_VALUE}"], config={}, program=None, args_json_path=tmp_path / "a.json"
    )
    assert argv == ["hello"]


def test_unknown_macro_is_left_out_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="sweeper.agents.command"):
        assert expand(["${program}", "${args_dict}"], tmp_path) == ["train.py"]
    assert "${args_dict}" in caplog.text


def test_interpreter_defaults_to_this_python(tmp_path: Path) -> None:
    import sys

    argv = expand_command(["${interpreter}"], config={}, program=None, args_json_path=tmp_path / "a.json")
    assert argv == [sys.executable]
