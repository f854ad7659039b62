"""The man page and the shell completion made by entry.docgen stay in step with the parser and
the action table: `man -l` renders every command, action and exit code; a real bash completes
subcommands, action names and each action's input names."""
import argparse
import os
import re
import subprocess

import pytest

from imapd_ctl.core.actions import ACTIONS
from imapd_ctl.cli import access, main as cli
from tools import docgen


def _commands(parser, prefix=()):
    """Every command path of the parser: ('call',), ('key', 'create'), ..."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from _commands(sub, prefix + (name,))


COMMANDS = list(_commands(cli.build_parser()))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("gen")
    docgen.write(str(out), "9.9")
    return out


@pytest.fixture(scope="module")
def rendered(generated):
    env = dict(os.environ, MANWIDTH="200", LC_ALL="C.UTF-8", MAN_KEEP_FORMATTING="")
    done = subprocess.run(["man", "--warnings", "-l", str(generated / "imapd-ctl.8")], env=env,
                          capture_output=True, text=True, check=True)
    assert done.stderr == ""                  # groff found nothing to warn about
    return done.stdout


def test_the_page_is_section_8(rendered):
    first = rendered.splitlines()[0].split()
    assert first[0] == first[-1] == "IMAPD-CTL(8)"


@pytest.mark.parametrize("words", [" ".join(c) for c in COMMANDS] + list(ACTIONS))
def test_man_renders_every_command_and_action(rendered, words):
    assert f"imapd-ctl {words}" in rendered or f"       {words} (" in rendered


def test_the_page_is_dated_by_the_source_and_has_examples(generated, rendered, monkeypatch):
    assert re.search(r'^\.TH IMAPD\\-CTL 8 "\d{4}-\d\d-\d\d"', (generated / "imapd-ctl.8").read_text(), re.M)
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1796601600")
    assert docgen.manpage("9.9").startswith('.TH IMAPD\\-CTL 8 "2026-12-07"')
    examples = rendered.split("EXAMPLES", 1)[1].split("EXIT STATUS", 1)[0]
    assert "imapd-ctl status" in examples and "imapd-ctl call update imap_max_connections=60 dry_run=1" in examples


def test_the_programs_own_options_are_under_options_not_under_a_command(rendered):
    options = rendered.split("\nOPTIONS\n", 1)[1].split("Sub-commands", 1)[0]
    assert "--config CONFIG" in options and "--version" in options
    last_command = rendered.split("OPTIONS 'imapd-ctl recover'", 1)[1].split("\nACTIONS\n", 1)[0]
    assert "--config" not in last_command


def test_man_documents_every_exit_code_and_the_key_sources(rendered):
    section = rendered.split("EXIT STATUS", 1)[1].split("ENVIRONMENT", 1)[0]
    codes = [int(line.split()[0]) for line in section.splitlines() if line[7:8].isdigit()]
    assert codes == list(access.EXIT_CODES)
    for name in ("IMAPD_CTL_KEY", "--key-file", "--key-stdin", "NO_COLOR"):
        assert name in rendered


def _complete(generated, lines):
    """COMPREPLY of the generated bash completion for each command line (the last word is the
    one being completed), in a real bash that sourced the file."""
    script = [f"source {generated / 'imapd-ctl.bash'}", "complete -p imapd-ctl"]
    for words in lines:
        quoted = " ".join(f"'{w}'" for w in words)
        script.append(f"COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; _shtab_imapd_ctl; "
                      'echo "${COMPREPLY[*]}"')
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", "\n".join(script)],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0].endswith(" imapd-ctl") and "-F _shtab_imapd_ctl" in out[0]
    return [line.split() for line in out[1:]]


def test_bash_completes_commands_actions_and_inputs(generated):
    with_inputs = [name for name, a in ACTIONS.items() if a.inputs]
    lines = ([["imapd-ctl", ""], ["imapd-ctl", "key", ""], ["imapd-ctl", "call", ""],
              ["imapd-ctl", "call", "isR"], ["imapd-ctl", "status", "--"],
              ["imapd-ctl", "call", "update", "imap_max_connections", "=", ""]]
             + [["imapd-ctl", "key", "create", "x", "--perm", ""]]
             + [["imapd-ctl", "--config", "/x", "call", "--node", "n2", name, ""] for name in with_inputs])
    got = _complete(generated, lines)
    top = [c[0] for c in COMMANDS if len(c) == 1]
    assert got[0] == top and got[1] == [c[1] for c in COMMANDS if c[0] == "key" and len(c) == 2]
    assert got[2] == list(ACTIONS)
    assert got[3] == ["isRunning", "isRunningOnNode"]
    assert set(got[4]) >= {"--all", "--json", "--key-file", "--key-stdin"} and "--key" not in got[4]
    assert got[5] == []                                         # a value, not a name
    assert got[6] == ["EMAIL", "METRICS"]                       # --perm's values
    for name, words in zip(with_inputs, got[7:]):
        assert words == [f"{i.name}=" for i in ACTIONS[name].inputs], name


def test_zsh_completion_knows_every_action_and_input(generated):
    text = (generated / "_imapd-ctl").read_text()
    assert text.startswith("#compdef imapd-ctl")
    for name, action in ACTIONS.items():
        assert name in text
        for spec in action.inputs:
            assert f"{spec.name}=" in text


ZSH_SESSION = r"""
zmodload zsh/zpty
zpty -b z 'zsh -f -i'
zpty -w z 'PS1="> "; fpath=(%(dir)s $fpath); autoload -Uz compinit; compinit -u -D; setopt nobeep'
zpty -w -n z $'imapd-ctl call startOnB\t'
zpty -r z out '*startOnBoot*'
print -r -- "ACTION: $out"
zpty -w -n z $'\C-uimapd-ctl call update imap_m\t\t'
zpty -r z out '*imap_mem_limit=*'
print -r -- "INPUTS: $out"
zpty -d z
"""


def test_zsh_completes_actions_and_inputs(generated):
    """A real interactive zsh (in a pty), compinit finding the file on its fpath, and TAB."""
    done = subprocess.run(["zsh", "-f", "-c", ZSH_SESSION % {"dir": generated}], capture_output=True,
                          text=True, timeout=60)
    action, inputs = done.stdout.split("INPUTS: ")
    assert "imapd-ctl call startOnBoot" in action
    assert "imap_max_connections=" in inputs and "imap_mem_limit=" in inputs
