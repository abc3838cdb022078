"""Every console script, ``python -m weights`` included, runs through one ``run_command``:
``--help`` works and an unknown flag exits 2 (in this process), and Ctrl-C exits 130.

The Ctrl-C is a real SIGINT to a real process, which it sends itself as its command starts
parsing its flags (``argparse.ArgumentParser.parse_args`` is wrapped in the child): a known
moment inside the command, so no timer decides the outcome.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from weights.command import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

ROOT = Path(__file__).resolve().parents[1]


def _entry_points() -> dict[str, str]:
    """``name -> module:function`` of setup.py's console scripts (read from its text)."""
    text = (ROOT / "setup.py").read_text()
    return dict(re.findall(r'"([\w-]+)=([\w.]+:\w+)"', text))


def _programs() -> dict[str, list[str]]:
    """Each command, with its sub-commands, as the words that select it after ``python -c``."""
    programs = {name: [target] for name, target in _entry_points().items()}
    programs["python -m weights"] = ["weights.__main__:main"]
    programs["extract_features merge"] = [programs["extract_features"][0], "merge"]
    programs["extract_features compare"] = [programs["extract_features"][0], "compare"]
    programs["lxmert-finetune train"] = [programs["lxmert-finetune"][0], "train"]
    programs["lxmert-finetune evaluate"] = [programs["lxmert-finetune"][0], "evaluate"]
    return programs


#: Runs ``module:function`` (argv[1]) on argv[2:]; with CTRL_C set, the process sends itself
#: SIGINT when the command starts parsing its flags.
CHILD = """
import argparse, importlib, os, signal, sys
module, function = sys.argv[1].split(":")
if os.environ.get("CTRL_C"):
    parse = argparse.ArgumentParser.parse_args
    def interrupted(self, *args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return parse(self, *args, **kwargs)
    argparse.ArgumentParser.parse_args = interrupted
sys.exit(getattr(importlib.import_module(module), function)(sys.argv[2:]))
"""


def _run(words: list[str], *args: str, ctrl_c: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("CTRL_C", None)
    if ctrl_c:
        env["CTRL_C"] = "1"
    return subprocess.run(
        [sys.executable, "-c", CHILD, *words, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )


PROGRAMS = _programs()


def test_every_console_script_of_setup_py_is_walked() -> None:
    names = set(_entry_points())
    assert names == {"extract_features", "answer", "judge", "lxmert-finetune", "lxmert-demo"}


def _in_process(words: list[str], *args: str) -> int:
    """The exit code of ``words`` run in this process (argparse's own exits included)."""
    module, function = words[0].split(":")
    try:
        return int(getattr(importlib.import_module(module), function)([*words[1:], *args]))
    except SystemExit as done:
        return int(done.code or 0)


@pytest.mark.parametrize("program", sorted(PROGRAMS))
def test_help_and_unknown_flag(program: str, capsys: pytest.CaptureFixture[str]) -> None:
    words = PROGRAMS[program]
    assert _in_process(words, "--help") == EXIT_OK
    assert "usage:" in capsys.readouterr().out
    assert _in_process(words, "--no-such-flag") == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--no-such-flag" in err or "usage:" in err


#: The bare ``lxmert-finetune`` only names its sub-commands: it parses nothing, runs nothing.
RUNS_A_COMMAND = sorted(set(PROGRAMS) - {"lxmert-finetune"})


@pytest.mark.parametrize("program", RUNS_A_COMMAND)
def test_ctrl_c_exits_130(program: str) -> None:
    interrupted = _run(PROGRAMS[program], "--no-such-flag", ctrl_c=True)
    assert interrupted.returncode == EXIT_INTERRUPTED, interrupted.stderr[-2000:]
    assert "interrupted" in interrupted.stderr
    assert "Traceback" not in interrupted.stderr


def _parsers(words: list[str]) -> list[argparse.ArgumentParser]:
    """The parser of ``words``' command (and its sub-commands' parsers)."""
    module_name, _ = words[0].split(":")
    module = importlib.import_module(module_name)
    if len(words) > 1:  # a sub-command: its Command in the module's COMMANDS
        return [module.COMMANDS[words[1]].build_parser()]
    for name in (
        "ANSWER_COMMAND",
        "JUDGE_COMMAND",
        "EXTRACT_COMMAND",
        "COMMAND",
        "WEIGHTS_COMMAND",
    ):
        if hasattr(module, name):
            parser = getattr(module, name).build_parser()
            subparsers = [
                action
                for action in parser._actions
                if isinstance(action, argparse._SubParsersAction)
            ]
            return [parser, *(p for action in subparsers for p in action.choices.values())]
    return []


@pytest.mark.parametrize("program", RUNS_A_COMMAND)
def test_help_shows_every_default(program: str) -> None:
    """A flag with a default says it in its help (``%(default)s``, or the value in words)."""
    parsers = _parsers(PROGRAMS[program])
    assert parsers, program
    silent = []
    for parser in parsers:
        for action in parser._actions:
            default = action.default
            if not action.option_strings or action.help == argparse.SUPPRESS:
                continue
            if default in (None, False, argparse.SUPPRESS) or isinstance(
                action, argparse._HelpAction
            ):
                continue
            text = action.help or ""
            if "%(default)" not in text and "default" not in text.lower():
                silent.append(
                    f"{parser.prog} {'/'.join(action.option_strings)} (default {default!r})"
                )
    assert not silent, "help without its default: " + "; ".join(silent)
