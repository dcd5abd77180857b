"""A small Dockerfile reader for the image's tests: its instructions by stage (continuation
lines joined, comment lines dropped, as Docker reads them), and `run_stage`, which runs a
stage's RUN commands in its SHELL with every program they call replaced by a recorder."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

# What a stage's RUN commands may call; any other program is "not found" (PATH holds
# only these recorders), so nothing of the host is ever run or changed.
RECORDED = ("python", "pip", "groupadd", "useradd", "mkdir", "chown", "sudo", "apt-get")
RECORDER = '#!/bin/sh\nprintf "%s\\t" "${0##*/}" "$@" >> "$CALLS"\necho >> "$CALLS"\n'


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, ...
    arguments: str

    def exec_form(self) -> list[str]:
        """The arguments of a JSON-form instruction (CMD ["a", "b"])."""
        return json.loads(self.arguments)


@dataclass
class Stage:
    name: str
    base: str
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        """The arguments of each `keyword` instruction, in order."""
        return [i.arguments for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        [instruction] = [i for i in self.instructions if i.keyword == keyword]
        return instruction

    def healthcheck(self) -> tuple[dict[str, str], list[str]]:
        """The HEALTHCHECK's options ({"--timeout": "6s", ...}) and its command."""
        options, _, command = self.one("HEALTHCHECK").arguments.partition(" CMD ")
        pairs = (o.partition("=") for o in options.split())
        return {name: value for name, _, value in pairs}, json.loads(command)

    def args(self) -> dict[str, str]:
        """The stage's ARG defaults (an ARG without one: "")."""
        pairs = (a.partition("=") for a in self.all("ARG"))
        return {name: default for name, _, default in pairs}


@dataclass(frozen=True)
class Dockerfile:
    global_args: dict[str, str]  # the ARGs before the first FROM
    stages: list[Stage]

    def stage(self, name: str) -> Stage:
        [stage] = [s for s in self.stages if s.name == name]
        return stage


def option(argv: list[str], name: str) -> str | None:
    """The value of `name` in a command line (`--name value` or `--name=value`)."""
    for i, argument in enumerate(argv):
        if argument == name and i + 1 < len(argv):
            return argv[i + 1]
        if argument.startswith(f"{name}="):
            return argument.split("=", 1)[1]
    return None


def _logical_lines(text: str) -> Iterator[str]:
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # comments end no instruction
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        yield pending + line
        pending = ""


def read_dockerfile(path: Path) -> Dockerfile:
    preamble: list[Instruction] = []
    stages: list[Stage] = []
    for line in _logical_lines(path.read_text()):
        keyword, _, arguments = line.partition(" ")
        instruction = Instruction(keyword.upper(), arguments.strip())
        if instruction.keyword == "FROM":
            base, _, name = instruction.arguments.partition(" AS ")
            stages.append(Stage(name.strip(), base.strip()))
        elif stages:
            stages[-1].instructions.append(instruction)
        else:
            preamble.append(instruction)
    global_args = Stage("", "", preamble).args()
    return Dockerfile(global_args, stages)


@dataclass(frozen=True)
class StageRun:
    returncode: int
    stderr: str
    calls: list[list[str]]  # each program called: [name, *arguments]

    def of(self, program: str) -> list[list[str]]:
        """The arguments of each call of `program`."""
        return [call[1:] for call in self.calls if call[0] == program]


def run_stage(stage: Stage, directory: Path, build_args: dict[str, str] | None = None) -> StageRun:
    """Run `stage`'s RUN commands in order (until one fails) in its SHELL, its ARGs set
    (their defaults, or `build_args`), every program they call recorded, not run."""
    bin_dir, calls = directory / "bin", directory / "calls"
    bin_dir.mkdir(parents=True)
    for program in RECORDED:
        (bin_dir / program).write_text(RECORDER)
        (bin_dir / program).chmod(0o755)
    shells = [i.exec_form() for i in stage.instructions if i.keyword == "SHELL"]
    shell = shells[-1] if shells else ["/bin/sh", "-c"]
    env = {**stage.args(), **(build_args or {}), "PATH": str(bin_dir), "CALLS": str(calls)}
    done = subprocess.CompletedProcess([], 0, "", "")
    for command in stage.all("RUN"):
        done = subprocess.run(
            [*shell, command], cwd=directory, env=env, capture_output=True, text=True, timeout=30
        )
        if done.returncode != 0:
            break
    recorded = calls.read_text().splitlines() if calls.exists() else []
    return StageRun(done.returncode, done.stderr, [line.split("\t")[:-1] for line in recorded])
