"""The man page imapd-ctl(8) and the bash and zsh completion, made at build time from the
argument parser (entry.cli) and the action table (core.actions):

    python3 -m tools.docgen OUTDIR [VERSION]
        -> OUTDIR/imapd-ctl.8, OUTDIR/imapd-ctl.bash, OUTDIR/_imapd-ctl (zsh)

The parser's part of the page is argparse-manpage's, the completion is shtab's (Debian:
python3-argparse-manpage, python3-shtab; needed to build the packages, not to run them). What
they cannot know is added here from the table: every action with its inputs, the exit codes
(entry.access.EXIT_CODES), the environment, the files; and the completion of action names and
of each action's input names (name=). tests/unit/test_docgen.py keeps them in step.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from imapd_ctl.core.actions import ACTIONS, Action
from imapd_ctl.core.settings import DEFAULT_PATH
from imapd_ctl.cli import access, main as cli
from imapd_ctl.cli.calls import controllers

SUMMARY = "control the mail host's IMAP server (InterWorx NodeWorx API compatible)"
EXAMPLES = (
    ("imapd-ctl status", "This node at a glance, as root (no key needed on the daemon's socket)."),
    ("imapd-ctl call isRunning", "Is the IMAP server active and listening on its port: true or false."),
    ("imapd-ctl call update imap_max_connections=60 dry_run=1",
     "The change to the IMAP server's files that update would make, without making it."),
    ("imapd-ctl call restart cascade_to_nodes=1", "Restart here and on every node of the registry at once."),
    ("imapd-ctl key create panel", "A key for a panel, printed once (permission EMAIL)."),
    ("IMAPD_CTL_KEY=ictl_... imapd-ctl call queryUpdate --json",
     "As another user, with a key: the limits in force, as JSON."),
    ("journalctl -u imapd-ctl.service", "The daemon's log (the audit trail of changes is /var/log/imapd-ctl/audit.log)."),
)


def roff(text: str) -> str:
    """Plain text for a roff line: backslashes and hyphens escaped, no control character first."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + text if text.startswith((".", "'")) else text


def _inputs(action: Action) -> str:
    if not action.inputs:
        return "no inputs"
    return "; ".join(f"{i.name}: {i.allowed()}" + (f" (default {i.default})" if i.default is not None else "")
                     for i in action.inputs)


def _sections() -> str:
    paths = " and ".join(f"{path} (--controller {name})" for name, path in controllers().items())
    out = [".SH ACTIONS", roff(f"The actions of {paths}, for `imapd-ctl call ACTION [name=value ...]`. "
                               "Read-only actions answer GET and POST; the others only POST."), ""]
    for action in ACTIONS.values():
        kind = "changes the host" if action.mutating else "read-only"
        out += [".TP", f"\\fB{action.name}\\fR ({kind})", roff(action.description), ".br",
                roff(f"Inputs: {_inputs(action)}.")]
    out += [".SH EXAMPLES"]
    for command, what in EXAMPLES:
        out += [".TP", f"\\fB{roff(command)}\\fR", roff(what)]
    out += [".SH EXIT STATUS"]
    for code, meaning in access.EXIT_CODES.items():
        out += [".TP", f"\\fB{code}\\fR", roff(meaning)]
    out += [".SH ENVIRONMENT",
            ".TP", f"\\fB{access.KEY_ENV}\\fR",
            roff("The API key for call and status (or --key-file FILE, --key-stdin). Keys are never "
                 "taken from the command line, where every local user can read them."),
            ".TP", "\\fBIMAPD_CTL_CONFIG\\fR", roff(f"The settings file (default {DEFAULT_PATH})."),
            ".TP", "\\fBNO_COLOR\\fR", roff("Set to anything: no colour, even on a terminal. Colour is "
                                             "never used when the output is not a terminal."),
            ".SH FILES",
            ".TP", roff(DEFAULT_PATH), roff("Settings; every key is documented in the file itself."),
            ".TP", roff("/run/imapd-ctl/imapd-ctl.sock"),
            roff("The daemon's unix socket (imapd-ctl.socket; root and SocketGroup= may connect)."),
            ".TP", roff("/var/lib/imapd-ctl"), roff("API keys (hashed), the change journal and lock."),
            ".TP", roff("/var/log/imapd-ctl/audit.log"), roff("One JSON line per change (never a key)."),
            ".SH SEE ALSO",
            "\\fBsystemctl\\fR(1), \\fBdoveconf\\fR(1), /usr/share/doc/imapd\\-ctl/README.md"]
    return "\n".join(out) + "\n"


def _date() -> str:
    """The page's date: SOURCE_DATE_EPOCH's (dpkg-buildpackage sets debian/changelog's), so the
    same tree gives the same page."""
    import time
    return time.strftime("%Y-%m-%d", time.gmtime(int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0)))


def _globals_first(page: str) -> str:
    """argparse-manpage prints the program's own options (--config, --version) after the last
    sub-command's section, where they read as that command's: move them under OPTIONS."""
    start = page.find(".TP\n\\fB\\-\\-config\\fR")
    if start < 0 or ".SH OPTIONS\n" not in page:
        raise SystemExit("docgen: argparse-manpage's layout changed; check where --config is printed")
    tail = page[start:].rstrip("\n") + "\n"
    rest = page[:start].rstrip("\n") + "\n"
    return rest.replace(".SH OPTIONS\n", ".SH OPTIONS\n" + tail, 1)


def manpage(version: str = "") -> str:
    from build_manpages.manpage import Manpage   # python3-argparse-manpage: build time only
    parser = cli.build_parser()
    parser.man_short_description = roff(SUMMARY)     # type: ignore[attr-defined]
    page = _globals_first(str(Manpage(parser)))
    head, sep, rest = page.partition("\n")
    assert head.startswith(".TH "), head
    title = f'.TH IMAPD\\-CTL 8 "{_date()}" "imapd\\-ctl {roff(version)}" "System Administration"'
    return title + sep + rest + _sections()


# -- completion -------------------------------------------------------------------------------

def _inputs_by_action() -> dict[str, list[str]]:
    return {name: [f"{i.name}=" for i in action.inputs] for name, action in ACTIONS.items() if action.inputs}


def _bash_preamble() -> str:
    cases = "".join(f'    {name}) compgen -W "{" ".join(names)}" -- "$1" ;;\n'
                    for name, names in _inputs_by_action().items())
    # shtab's caller has IFS=newline: compgen must split its word list at blanks.
    return (f'_imapd_ctl_actions() {{ local IFS=$\' \\t\\n\'; compgen -W "{" ".join(ACTIONS)}" -- "$1"; }}\n'
            "# name= of the inputs of the action already on the line (bash splits name=value at =)\n"
            "_imapd_ctl_inputs() {\n"
            "  local w action='' IFS=$' \\t\\n'\n"
            '  [[ ${COMP_WORDS[COMP_CWORD-1]} == "=" ]] && return 0\n'
            '  for w in "${COMP_WORDS[@]:1:COMP_CWORD-1}"; do\n'
            f'    case $w in {"|".join(ACTIONS)}) action=$w ;; esac\n'
            "  done\n"
            '  case $action in\n' + cases + "  esac\n}\n")


def _zsh_preamble() -> str:
    cases = "".join(f"    {name}) compadd -S '' -- {' '.join(names)} ;;\n"
                    for name, names in _inputs_by_action().items())
    return (f"_imapd_ctl_zsh_actions() {{ compadd -- {' '.join(ACTIONS)}; }}\n"
            "_imapd_ctl_zsh_inputs() {\n"
            "  local w action\n"
            "  for w in $words; do\n"
            f"    case $w in {'|'.join(ACTIONS)}) action=$w ;; esac\n"
            "  done\n"
            "  case $action in\n" + cases + "  esac\n}\n")


def _call_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = sub.choices["call"]
    return found


def completion(shell: str) -> str:
    import shtab      # python3-shtab: build time only
    parser = cli.build_parser()
    call = _call_parser(parser)
    arg: Any
    for arg in call._actions:
        if arg.dest == "action":
            arg.complete = {"bash": "_imapd_ctl_actions", "zsh": "_imapd_ctl_zsh_actions"}
        elif arg.dest == "inputs":
            arg.complete = {"bash": "_imapd_ctl_inputs", "zsh": "_imapd_ctl_zsh_inputs"}
        elif arg.dest in ("key_file", "socket"):
            arg.complete = shtab.FILE
    for arg in parser._actions:
        if arg.dest == "config":
            arg.complete = shtab.FILE
    preamble = {"bash": _bash_preamble(), "zsh": _zsh_preamble()}
    text: str = shtab.complete(parser, shell, preamble=preamble)
    if shell == "bash":
        # shtab 1.5.5 (Debian 12) reads a choices array as its first element only, so only
        # `serve` would complete: read every element, one a line (its compgen splits at newlines).
        text = text.replace('current_action_choices="${!current_action_choices_var}"',
                            'current_action_choices="$(printf \'%s\\n\' "${!current_action_choices_var}")"')
        text = text.replace('local current_action_choices_var="${current_action}_choices"',
                            'local current_action_choices_var="${current_action}_choices[@]"')
    return text


def write(outdir: str, version: str = "") -> list[Path]:
    # argparse wraps usage lines at $COLUMNS: the same tree must give the same bytes.
    os.environ["COLUMNS"] = "80"
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"imapd-ctl.8": manpage(version), "imapd-ctl.bash": completion("bash"),
             "_imapd-ctl": completion("zsh")}
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8")
    return [out / name for name in files]


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python3 -m tools.docgen OUTDIR [VERSION]")
    for path in write(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else ""):
        print(path)
