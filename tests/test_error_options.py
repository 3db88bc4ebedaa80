"""Every option an error message suggests exists where the user would type it.

The messages are read from the package's source (the text of every `raise`, and of every
`PolypsegError` built anywhere), so a new message is checked without a test of its own:
- `polypseg <command> ... --opt`: `--opt` must be in that command's `--help`;
- a bare `--opt`: it must be in the `--help` of every command that can reach the function that
  raises it (a static call graph over the package, by name, through each module's imports), as
  the user may meet the message under any of them. A message that *starts* with `--opt` names
  the option the user just gave (`--split 'x': use test or all`): that is no suggestion.
"""

from __future__ import annotations

import ast
import inspect
import re
from collections import defaultdict
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

import polypseg
from polypseg.cli import app

PACKAGE = Path(polypseg.__file__).parent
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
# `polypseg data synth --out DIR`: the command words, then the rest up to a quote or bracket.
COMMAND_FORM = re.compile(r"polypseg((?: [a-z][a-z-]*)+)([^`'\";()]*)")
# `mlflow ui --backend-store-uri ...`: another program's command; its options are not ours.
OTHER_PROGRAM_FORM = re.compile(r"\bmlflow((?: [a-z][a-z-]*)+)([^`'\";()]*)")
Site = tuple[str, str]  # (module, function qualname)
# Calls polypseg makes on the user's behalf with values it chose itself: `tune` under
# `data.protocol = "pranet"` scores its new champion through `evaluate`'s library path, passing
# the model, the sets, their roots (found before any trial) and the output folder. Messages past
# such a call name `evaluate`'s options, checked against `evaluate`, which reaches them directly.
DELEGATED: set[Site] = {("polypseg.tuning.finish", "champion_table")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


@cache
def _tree(module: str) -> ast.Module:
    return ast.parse(MODULES[module].read_text())


def _text(node: ast.AST) -> str:
    """The literal text of an expression: constants and f-string parts, `{}` for the holes."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = node.values
        return "".join(_text(p) if isinstance(p, ast.Constant) else "{}" for p in parts)
    return " ".join(_text(child) for child in ast.iter_child_nodes(node))


def _names(node: ast.AST) -> set[str]:
    """Every name and attribute `node` mentions: what it may call."""
    found = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            found.add(child.id)
        elif isinstance(child, ast.Attribute):
            found.add(child.attr)
    return found


def _imports(module: str) -> set[str]:
    """polypseg modules `module` imports, anywhere in it (function bodies included)."""
    found: set[str] = set()
    for node in ast.walk(_tree(module)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            if node.level:
                base = ".".join(module.split(".")[: -node.level] + [node.module])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name in MODULES}


@cache
def _reach(module: str) -> frozenset[str]:
    """`module` and the polypseg modules it imports, transitively."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(_imports(current))
    return frozenset(seen)


class _Scan(ast.NodeVisitor):
    """One module: its functions (and what they mention), module-level values, error messages."""

    def __init__(self, module: str, error_classes: set[str]) -> None:
        self.module, self.error_classes = module, error_classes
        self.stack: list[str] = []
        self.mentions: dict[Site, set[str]] = {}
        self.by_name: dict[str, set[Site]] = defaultdict(set)
        self.values: dict[str, set[str]] = {}  # module-level name -> what its value mentions
        self.aliases: dict[str, str] = {}  # `import x as y`: y -> x
        self.messages: dict[tuple[Site | None, str], None] = {}

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.stack.append(node.name)
        self.generic_visit(node)
        self.stack.pop()
        methods = {site for site in self.mentions if site[1].startswith(f"{node.name}.")}
        self.by_name[node.name] |= methods  # building an instance may call any method

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.stack.append(node.name)
        site = (self.module, ".".join(self.stack))
        self.mentions[site] = _names(node)
        self.by_name[node.name].add(site)
        self.generic_visit(node)
        self.stack.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        self.aliases.update({a.asname: a.name for a in node.names if a.asname})

    def visit_Assign(self, node: ast.Assign) -> None:
        if not self.stack:
            for target in node.targets:
                if isinstance(target, ast.Name):
                    self.values[target.id] = _names(node.value)
        self.generic_visit(node)

    def _message(self, node: ast.AST) -> None:
        text = _text(node).strip()
        if text:
            site = (self.module, ".".join(self.stack)) if self.stack else None
            self.messages[(site, text)] = None

    def visit_Raise(self, node: ast.Raise) -> None:
        if node.exc is not None:
            self._message(node.exc)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if (func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")) in (
            self.error_classes
        ):
            self._message(node)
        self.generic_visit(node)


def _scan_package() -> dict[str, _Scan]:
    errors = {n.name for n in _tree("polypseg.errors").body if isinstance(n, ast.ClassDef)}
    scans = {}
    for module in MODULES:
        scans[module] = _Scan(module, errors)
        scans[module].visit(_tree(module))
    return scans


SCANS = _scan_package()


@cache
def reachable(start: Site) -> frozenset[Site]:
    """Functions `start` may call, transitively: a mentioned name resolves to the functions,
    methods and classes of that name in the modules its own module imports (over-approximate)."""
    seen, todo = {start}, [start]
    while todo:
        module, qualname = todo.pop()
        scan = SCANS[module]
        names, pending = set(), list(scan.mentions[(module, qualname)])
        while pending:  # a module-level value (a registry dict) mentions what it holds
            name = pending.pop()
            if name not in names:
                names.add(name)
                pending.extend(scan.values.get(name, ()))
                pending.extend([scan.aliases[name]] if name in scan.aliases else [])
        for other in _reach(module):
            for name in names:
                for site in SCANS[other].by_name.get(name, ()):
                    if site not in seen and site not in DELEGATED:
                        seen.add(site)
                        todo.append(site)
    return frozenset(seen)


def _commands(group: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for name, command in group.commands.items():
        if hasattr(command, "commands"):  # a group (typer vendors its own click)
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name), command


COMMANDS = {
    path: (inspect.unwrap(command.callback).__module__, inspect.unwrap(command.callback).__name__)
    for path, command in _commands(typer.main.get_command(app))
}


@cache
def help_options(path: tuple[str, ...]) -> frozenset[str]:
    """The options `polypseg <path> --help` lists."""
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return frozenset(OPTION.findall(result.output))


def _command_path(words: tuple[str, ...]) -> tuple[str, ...]:
    """The longest command the words start with (the rest are arguments)."""
    known = sorted(COMMANDS, key=len, reverse=True)
    return next((path for path in known if words[: len(path)] == path), words)


def suggestions(site: Site | None, message: str) -> Iterator[tuple[tuple[str, ...] | None, str]]:
    """(command, option) for each option `message` suggests; command None: any command."""
    in_forms: set[int] = set()
    for form in OTHER_PROGRAM_FORM.finditer(message):
        in_forms.update(form.start() + o.start() for o in OPTION.finditer(form.group(0)))
    for form in COMMAND_FORM.finditer(message):
        path = _command_path(tuple(form.group(1).split()))
        for option in OPTION.finditer(form.group(0)):
            in_forms.add(form.start() + option.start())
            yield path, option.group(0)
    reaching = [path for path, fn in COMMANDS.items() if site and site in reachable(fn)]
    for option in OPTION.finditer(message):
        if option.start() not in in_forms and option.start() > 0:
            for path in reaching or [None]:
                yield path, option.group(0)


CASES = [
    pytest.param(path, option, f"{site}: {message!r}", id=f"{site and site[1]}-{option}")
    for scan in SCANS.values()
    for site, message in scan.messages
    for path, option in suggestions(site, message)
]


def test_the_scan_finds_the_suggestions_it_must_check() -> None:
    assert len(CASES) >= 3, "the scan finds no option suggestions: it is broken"
    paths = {case.values[0] for case in CASES}
    assert ("data", "synth") in paths  # `polypseg data synth --out DIR` in the data errors
    assert reachable(COMMANDS[("tune",)]) > {COMMANDS[("tune",)]}


@pytest.mark.parametrize(("path", "option", "where"), CASES)
def test_suggested_option_exists(path: tuple[str, ...] | None, option: str, where: str) -> None:
    if path is None:  # reached by no command we can see: some command must have it
        assert any(option in help_options(p) for p in COMMANDS), f"{where}: no command has {option}"
        return
    command = " ".join(path)
    assert path in COMMANDS, f"{where} names `polypseg {command}`: no such command"
    assert option in help_options(path), f"{where} suggests {option}: `polypseg {command}` has none"


def test_offline_error_suggests_forms_that_run(
    runner: CliRunner,
    tiny_config: Path,
    tiny_cache: Path,
    synthetic_root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Offline, a Kaggle config fails in one line; the `--set` form it names then works."""
    import kagglehub

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Max retries exceeded (simulated)")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    kaggle = tiny_config.with_name("kaggle.toml")
    kaggle.write_text(re.sub(r'source = "local"\nroot = .*\n', "", tiny_config.read_text()))
    failed = runner.invoke(app, ["cache", "--config", str(kaggle)])
    assert failed.exit_code == 2
    message = failed.stderr.strip()
    assert "--set data.source=local --set data.root=DIR" in message
    demo = (
        "polypseg tune --trials 4 --config experiments/synthetic.toml "
        "--study studies/demo_search.toml"
    )
    assert demo in message  # the demo as the README runs it: 4 quick trials, not 30
    sets = ["--set", "data.source=local", "--set", f"data.root={synthetic_root}"]
    worked = runner.invoke(app, ["cache", "--config", str(kaggle), *sets])
    assert worked.exit_code == 0, worked.output
    assert "images=12" in worked.stdout
