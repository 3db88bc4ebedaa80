"""Every `polypseg ...` command that README.md and docs/*.md show still runs as written.

The commands are read from the fenced shell blocks (```bash, ```sh, ```console or no language):
`\\` continuations are joined, `# comments` dropped, and a line is cut into simple commands at
pipes, `;`, `&&`, `&`, `$( )` and loops, past `NAME=value` prefixes and words such as `do` or
`env`. Each `polypseg` command is then walked through the click command tree that typer builds
from `polypseg.cli.app`: every subcommand must exist and every `--option` must be one that command
accepts. No command runs, so the check costs milliseconds and needs neither data nor network.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer

from polypseg.cli import app

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console", "zsh"}
FENCE = re.compile(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)")
# Words that may stand before a command without being it: shell keywords and plain wrappers.
PREFIXES = {"do", "then", "else", "time", "!", "env", "exec", "nohup", "command", "{"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# A click command of the tree typer builds. Read by duck typing: typer 0.29 builds it from the
# click it vendors (`typer._click`), older typers from `click` itself.
Command = Any


@dataclass(frozen=True)
class DocCommand:
    """One `polypseg` command of a page: where it is, and the words after `polypseg`."""

    where: str
    words: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.where}: polypseg {' '.join(self.words)}"


def shell_blocks(text: str) -> Iterator[tuple[int, list[str]]]:
    """(line number of the first line, lines) of each fenced block in a shell language."""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        index += 1
        if not opening:
            continue
        fence, language = opening.groups()
        start = index
        while index < len(lines) and not lines[index].strip().startswith(fence):
            index += 1
        if language.lower() in SHELL_LANGUAGES:
            yield start + 1, lines[start:index]
        index += 1  # the closing fence


def strip_comment(line: str) -> str:
    """The line without its `# comment`: a `#` that starts a word, outside quotes (as bash)."""
    quote = ""
    for position, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (position == 0 or line[position - 1].isspace()):
            return line[:position]
    return line


def logical_lines(first: int, lines: Sequence[str]) -> Iterator[tuple[int, str]]:
    """(line number, text) of each command line, `\\` continuations joined, comments gone."""
    pending, start = "", first
    for number, raw in enumerate(lines, first):
        line = strip_comment(raw).rstrip()
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending


def simple_commands(line: str) -> list[list[str]]:
    """The line's simple commands as word lists, cut at shell operators, redirections dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    commands: list[list[str]] = [[]]
    tokens = iter(lexer)
    for token in tokens:
        if token and set(token) <= set(lexer.punctuation_chars):
            if "<" in token or ">" in token:
                next(tokens, None)  # the redirection's file
            else:
                commands.append([])
        else:
            commands[-1].append(token)
    return [words for words in commands if words]


def polypseg_words(words: Sequence[str]) -> tuple[str, ...] | None:
    """The arguments when a simple command runs `polypseg`, past prefixes; else None."""
    index = 0
    while index < len(words) and (words[index] in PREFIXES or ASSIGNMENT.match(words[index])):
        index += 1
    if index < len(words) and Path(words[index]).name == "polypseg":
        return tuple(words[index + 1 :])
    return None


def doc_commands(text: str, name: str) -> list[DocCommand]:
    """Every `polypseg` command in the shell blocks of one page's text."""
    found = []
    for first, lines in shell_blocks(text):
        for number, line in logical_lines(first, lines):
            for words in simple_commands(line):
                arguments = polypseg_words(words)
                if arguments is not None:
                    found.append(DocCommand(f"{name}:{number}", arguments))
    return found


def _subcommands(command: Command) -> dict[str, Command]:
    return getattr(command, "commands", None) or {}


def _option_names(command: Command) -> dict[str, Any]:
    names: dict[str, Any] = {}
    for param in command.params:
        for name in [*param.opts, *param.secondary_opts]:
            names[name] = param
    return names


def _takes_value(param: Any) -> bool:
    return param.param_type_name == "option" and not param.is_flag and not param.count


def problems(words: Sequence[str], root: Command) -> list[str]:
    """What click would refuse in `polypseg WORDS`: unknown subcommands and unknown options."""
    command, path, found = root, ["polypseg"], []
    remaining = iter(words)
    for word in remaining:
        if word == "--":
            break  # only arguments follow
        if word.startswith("-") and len(word) > 1:
            name = word.split("=", 1)[0]
            options = _option_names(command)
            if name in typer.Context(command).help_option_names:
                continue
            if name not in options:
                found.append(f"`{' '.join(path)}` has no option {name}")
            elif _takes_value(options[name]) and "=" not in word:
                next(remaining, None)  # its value, even one that starts with '-'
        elif _subcommands(command):
            if word not in _subcommands(command):
                found.append(f"`{' '.join(path)}` has no command {word!r}")
                break
            command = _subcommands(command)[word]
            path.append(word)
    return found


def leaf_paths(command: Command, path: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """The command paths that do work (`data split`, `train`, ...), not the groups holding them."""
    subcommands = _subcommands(command)
    if not subcommands:
        return {path}
    return set().union(*(leaf_paths(sub, (*path, n)) for n, sub in subcommands.items()))


def command_path(words: Sequence[str], root: Command) -> tuple[str, ...]:
    """The subcommands that WORDS name, in order: `("data", "split")` for `data split --root D`."""
    command, path = root, ()
    for word in words:
        if word not in _subcommands(command):
            break
        command, path = _subcommands(command)[word], (*path, word)
    return path


@pytest.fixture(scope="module")
def cli() -> Command:
    return typer.main.get_command(app)


def page_commands(page: Path) -> list[DocCommand]:
    return doc_commands(page.read_text(encoding="utf-8"), str(page.relative_to(ROOT)))


def test_every_documented_command_has_its_subcommands_and_options(cli: Command) -> None:
    commands = [command for page in PAGES for command in page_commands(page)]
    assert len(commands) >= 30, commands  # the extractor still finds the pages' commands
    wrong = [f"{c}\n    {issue}" for c in commands for issue in problems(c.words, cli)]
    assert not wrong, "\n".join(wrong)


def test_the_readme_shows_every_command(cli: Command) -> None:
    shown = {command_path(c.words, cli) for c in page_commands(ROOT / "README.md")}
    assert leaf_paths(cli) <= shown, sorted(leaf_paths(cli) - shown)


def test_a_made_up_option_or_command_is_caught(cli: Command) -> None:
    text = (
        "Run it:\n\n```bash\n"
        "polypseg train --config experiments/synthetic.toml \\\n"
        "  --set train.lr=1e-3 --learning-rate 3   # a made-up option\n"
        "polypseg data shuffle --root DIR\n"
        "```\n"
    )
    commands = doc_commands(text, "page.md")
    assert [c.where for c in commands] == ["page.md:4", "page.md:6"]
    assert problems(commands[0].words, cli) == ["`polypseg train` has no option --learning-rate"]
    assert problems(commands[1].words, cli) == ["`polypseg data` has no command 'shuffle'"]


def test_the_extractor_reads_shells_continuations_comments_prefixes_and_pipes() -> None:
    text = (
        "```python\npolypseg tune --not-shell\n```\n"
        "```text\npolypseg output --lines\n```\n"
        "```bash\n"
        "# polypseg tune --in-a-comment\n"
        "MLFLOW_TRACKING_URI=sqlite:///x.db polypseg tune --trials 2 | tail -n 3  # see #3\n"
        "for s in a b; do polypseg predict --maps \\\n"
        "    --out 'out dir/#1' $s; done && polypseg --version > v.txt\n"
        "echo polypseg; env A=1 polypseg data split --root=/data --ratios -1\n"
        "```\n"
    )
    assert [(c.where, c.words) for c in doc_commands(text, "p.md")] == [
        ("p.md:9", ("tune", "--trials", "2")),
        ("p.md:10", ("predict", "--maps", "--out", "out dir/#1", "$s")),
        ("p.md:10", ("--version",)),
        ("p.md:12", ("data", "split", "--root=/data", "--ratios", "-1")),
    ]


def test_an_option_value_that_looks_like_an_option_is_not_checked(cli: Command) -> None:
    assert problems(["data", "split", "--ratios", "--bogus", "--root=/d"], cli) == []
    bogus = problems(["data", "split", "--bogus"], cli)
    assert bogus == ["`polypseg data split` has no option --bogus"]


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {_anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_the_readme_links_every_docs_page_and_every_link_resolves() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    linked = set(re.findall(r"\]\((docs/[\w.-]+\.md)\)", readme))
    assert {str(page.relative_to(ROOT)) for page in PAGES[1:]} <= linked
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://")):
                continue
            file, _, anchor = target.partition("#")
            linked_page = (page.parent / file).resolve() if file else page
            assert linked_page.exists(), f"{page.name}: {target}"
            if anchor:
                assert anchor in _anchors(linked_page), f"{page.name}: {target}"


def test_the_readme_installs_and_tests_as_ci_does() -> None:
    first_block = next(shell_blocks((ROOT / "README.md").read_text(encoding="utf-8")))[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert any("pip install -e '.[dev]'" in line for line in first_block)
    assert "pytest -q" in first_block
    assert "-e '.[dev]'" in ci and "pytest -q" in ci
