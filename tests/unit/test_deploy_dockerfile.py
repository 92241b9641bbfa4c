"""The Dockerfile, checked by reading it (no Docker engine runs here).

Every path it copies exists in the repo and survives .dockerignore, every stage it copies from exists and made the
path, the installed project is where pip is told to look, and the entry point is the console script pyproject.toml
declares, with a subcommand outrider's own command line accepts.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import posixpath
import shlex
import tomllib
from pathlib import Path

import pytest

from outrider.cli import build_parser
from tests.conftest import REPO

DOCKERFILE = REPO / "Dockerfile"


@dataclasses.dataclass
class Instruction:
    keyword: str
    args: str


@dataclasses.dataclass
class Stage:
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]


def parse(text: str) -> tuple[list[Instruction], list[Stage]]:
    """Instructions (continuations joined, comments dropped) and the stages they fall in."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    instructions = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    stages: list[Stage] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            words = ins.args.split()
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(name, []))
        elif stages:
            stages[-1].instructions.append(ins)
    return instructions, stages


def copy_parts(ins: Instruction) -> tuple[dict[str, str], list[str], str]:
    """(flags, sources, destination) of a COPY or ADD, in shell or JSON form."""
    rest = ins.args
    flags = {}
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        key, _, value = flag[2:].partition("=")
        flags[key] = value
        rest = rest.lstrip()
    words: list[str] = json.loads(rest) if rest.startswith("[") else shlex.split(rest)
    return flags, words[:-1], words[-1]


def dockerignored(path: str) -> bool:
    patterns = [
        ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")
    ]
    first = Path(path).parts[0]
    return any(p.rstrip("/") in (path, first) for p in patterns)


@pytest.fixture(scope="module")
def dockerfile() -> tuple[list[Instruction], list[Stage]]:
    return parse(DOCKERFILE.read_text())


def test_every_copied_path_exists_in_the_repo_or_an_earlier_stage(
    dockerfile: tuple[list[Instruction], list[Stage]],
) -> None:
    _, stages = dockerfile
    copies = 0
    for index, stage in enumerate(stages):
        for ins in stage.instructions:
            if ins.keyword not in ("COPY", "ADD"):
                continue
            copies += 1
            flags, sources, _ = copy_parts(ins)
            assert sources, ins
            if "from" in flags:
                earlier = {s.name: s for s in stages[:index] if s.name}
                assert flags["from"] in earlier, f"{ins.args}: no earlier stage {flags['from']!r}"
                made = " ".join(i.args for i in earlier[flags["from"]].all("RUN"))
                for source in sources:
                    assert source in made, f"{source} is not made by stage {flags['from']!r}"
                continue
            assert ins.keyword == "COPY", "ADD fetches URLs and unpacks archives; COPY says what it does"
            for source in sources:
                assert (REPO / source).exists(), f"{ins.keyword} {source}: not in the repo"
                assert not dockerignored(source), f"{source} is excluded by .dockerignore"
    assert copies >= 3


def test_pip_installs_the_copied_project_without_extras(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    _, stages = dockerfile
    build = stages[0]
    workdir = "/"
    copied: set[str] = set()
    for ins in build.instructions:
        if ins.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, ins.args)
        elif ins.keyword == "COPY":
            _, sources, dest = copy_parts(ins)
            target = posixpath.normpath(posixpath.join(workdir, dest))
            for source in sources:
                copied.add(posixpath.join(target, source) if dest.endswith("/") else target)
    (run,) = build.all("RUN")
    installs = [cmd.split() for cmd in run.args.split("&&") if " install " in cmd]
    assert len(installs) == 1 and "pip" in installs[0][0]
    project = installs[0][-1]
    assert "[" not in project, "the image gets runtime dependencies only, no extras"
    assert {posixpath.join(project, "pyproject.toml"), posixpath.join(project, "src")} <= copied
    # pyproject.toml reads README.md at build time: it must be there too.
    readme = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["readme"]
    assert posixpath.join(project, readme) in copied


def test_entry_point_is_the_console_script(dockerfile: tuple[list[Instruction], list[Stage]]) -> None:
    _, stages = dockerfile
    final = stages[-1]
    (entry,) = final.all("ENTRYPOINT")
    (cmd,) = final.all("CMD")
    entrypoint, command = json.loads(entry.args), json.loads(cmd.args)  # exec form: signals reach outrider
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    # `outrider` is the image's entry point; `aibrix_runtime` is the command AIBrix's webhook injects in its place.
    assert entrypoint == [next(iter(scripts))] and set(scripts) == {"outrider", "aibrix_runtime"}
    for script in scripts.values():
        module, _, func = script.partition(":")
        assert callable(getattr(importlib.import_module(module), func))
    build_parser().parse_args([*command, "-E", "vllm"])  # CMD's subcommand is one outrider has
    # The script is found on PATH: the venv it was installed into is on the final stage's PATH.
    (env,) = final.all("ENV")
    path = next(w for w in shlex.split(env.args) if w.startswith("PATH="))
    venv = stages[0].all("RUN")[0].args.split("venv ", 1)[1].split()[0]
    assert path.startswith(f"PATH={venv}/bin:")
    # The build stage runs the installed script once, so a broken install fails the build, not the pod.
    assert f"{venv}/bin/{entrypoint[0]} --version" in stages[0].all("RUN")[0].args


def test_image_is_multi_stage_non_root_and_has_no_healthcheck(
    dockerfile: tuple[list[Instruction], list[Stage]],
) -> None:
    instructions, stages = dockerfile
    assert len(stages) >= 2
    assert not [i for i in instructions if i.keyword == "HEALTHCHECK"], "probes belong to Kubernetes"
    (user,) = stages[-1].all("USER")
    uid, _, gid = user.args.partition(":")
    assert uid.isdigit() and int(uid) != 0 and gid.isdigit(), "runAsNonRoot can only verify a numeric uid"
    assert not any("pip" in i.args for i in stages[-1].all("RUN")), "nothing is installed in the final stage"


def test_parser_reads_continuations_and_forms() -> None:
    instructions, stages = parse(
        'FROM a AS one\nRUN x \\\n  # note\n  && y\nFROM b\nCOPY --from=one ["/o p", "/d"]\nENTRYPOINT ["e"]\n'
    )
    assert [i.keyword for i in instructions] == ["FROM", "RUN", "FROM", "COPY", "ENTRYPOINT"]
    assert instructions[1].args == "x  && y"
    assert [s.name for s in stages] == ["one", None]
    assert copy_parts(instructions[3]) == ({"from": "one"}, ["/o p"], "/d")
