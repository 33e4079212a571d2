"""PIPELINE.yaml: read with the line of every key, checked before anything runs (one line per problem, naming
FILE:LINE and the key).

    out: pipeline_out/tiny          # every stage writes OUT/<stage>/
    stages:                         # in run order; a stage may use only stages above it
      data:   {kind: data_prep, ...}
      sft:    {kind: train, recipe: recipes/tiny/sft.yaml, data: "@data/instruct", ...}

A string "@stage" is that stage's output (its kind says what: a checkpoint, a directory), "@stage/sub/path" a path
inside the stage's directory; the stages a stage references are its inputs (stamps.py). Other relative paths are
relative to the working directory, as in training recipes."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from megafin.pipeline.errors import PipelineError

STAGE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
REFERENCE = re.compile(r"^@([a-z][a-z0-9_]*)(?:/(.+))?$")
TOP_KEYS = ("out", "stages", "description")


@dataclass(frozen=True)
class Reference:
    stage: str
    sub: Optional[str] = None  # a path inside the stage's directory; None: the stage's output

    @staticmethod
    def parse(value: Any) -> Optional["Reference"]:
        if not isinstance(value, str):
            return None
        m = REFERENCE.match(value.strip())
        return Reference(m.group(1), m.group(2)) if m else None


@dataclass
class StageSpec:
    name: str
    kind: str
    settings: dict           # the stage's mapping without `kind`
    line: int                # where the stage starts in the file (1-based)
    lines: dict = field(default_factory=dict)  # ("key", "sub", ...) -> line, for messages

    def line_of(self, *path: Any) -> int:
        for n in range(len(path), 0, -1):
            if tuple(path[:n]) in self.lines:
                return self.lines[tuple(path[:n])]
        return self.line

    def references(self) -> list[Reference]:
        return [r for _, r in iter_references(self.settings)]

    def needs(self) -> list[str]:
        """The stages this one reads, in first-use order."""
        return list(dict.fromkeys(r.stage for r in self.references()))


@dataclass
class PipelineSpec:
    path: Path
    out: Path
    stages: dict[str, StageSpec]  # in run order

    def names(self) -> list[str]:
        return list(self.stages)

    def where(self, stage: StageSpec, *key: Any) -> str:
        return f"{self.path}:{stage.line_of(*key)}"


def iter_references(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, Reference]]:
    """Every "@stage[/sub]" string in a settings tree, with its key path."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from iter_references(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from iter_references(v, (*path, i))
    else:
        ref = Reference.parse(value)
        if ref is not None:
            yield path, ref


def _read_yaml(path: Path) -> tuple[Any, dict]:
    """(data, {key path: 1-based line}); a YAML syntax error is one PipelineError line."""
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PipelineError(f"{path}: cannot read the pipeline file ({type(err).__name__}: {err})") from None
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            data = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise PipelineError(f"{where}: not valid YAML: {problem}") from None
    lines: dict = {}

    def walk(n: Any, key: tuple) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                sub = (*key, k.value)
                lines[sub] = k.start_mark.line + 1
                walk(v, sub)
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                lines[(*key, i)] = v.start_mark.line + 1
                walk(v, (*key, i))

    if node is not None:
        walk(node, ())
    return data, lines


def load_spec(path: str | Path, check_kinds: bool = True, deep: bool = True) -> PipelineSpec:
    """The pipeline as written, checked: every problem found is one line of the PipelineError (the first ten).
    deep=False leaves out the kinds' slower checks (a Slurm job: the submission ran them)."""
    from megafin.pipeline.registry import get_kind, kind_names

    path = Path(path)
    data, lines = _read_yaml(path)
    problems: list[str] = []

    def bad(line: int, key: str, expected: str, got: Any = ...) -> None:
        shown = "" if got is ... else f", got {got!r}"
        problems.append(f"{path}:{line}: {key}: expected {expected}{shown}")

    if not isinstance(data, dict):
        raise PipelineError(f"{path}:1: expected a mapping with 'out' and 'stages', got {type(data).__name__}")
    for key in data:
        if key not in TOP_KEYS:
            bad(lines.get((key,), 1), str(key), f"one of {', '.join(TOP_KEYS)}", key)
    out = data.get("out")
    if not isinstance(out, str) or not out.strip():
        bad(lines.get(("out",), 1), "out", "the output directory (a non-empty string)", out)
    stages_raw = data.get("stages")
    stages: dict[str, StageSpec] = {}
    if not isinstance(stages_raw, dict) or not stages_raw:
        bad(lines.get(("stages",), 1), "stages", "a mapping of stage name -> {kind: ..., ...} in run order",
            type(stages_raw).__name__ if stages_raw is not None else None)
        stages_raw = {}
    for name, body in stages_raw.items():
        line = lines.get(("stages", name), 1)
        key = f"stages.{name}"
        if not isinstance(name, str) or not STAGE_NAME.match(name):
            bad(line, key, "a stage name of lower-case letters, digits and _", name)
            continue
        if not isinstance(body, dict):
            bad(line, key, "a mapping with a 'kind'", type(body).__name__)
            continue
        kind = body.get("kind")
        if check_kinds and kind not in kind_names():
            bad(lines.get(("stages", name, "kind"), line), f"{key}.kind", f"one of {', '.join(kind_names())}",
                kind)
            continue
        stage_lines = {k[2:]: v for k, v in lines.items() if k[:2] == ("stages", name) and len(k) > 2}
        spec = StageSpec(name, kind, {k: v for k, v in body.items() if k != "kind"}, line, stage_lines)
        for ref_path, ref in iter_references(spec.settings):
            dotted = ".".join(str(p) for p in (key, *ref_path))
            if ref.stage == name:
                bad(spec.line_of(*ref_path), dotted, "a reference to an earlier stage, not to itself", f"@{ref.stage}")
            elif ref.stage not in stages:
                known = ", ".join(stages) or "none"
                bad(spec.line_of(*ref_path), dotted, f"a reference to an earlier stage (above it: {known})",
                    f"@{ref.stage}")
            elif ref.sub is not None and (".." in Path(ref.sub).parts or ref.sub.startswith("/")):
                bad(spec.line_of(*ref_path), dotted, "a path inside the stage's directory", f"@{ref.stage}/{ref.sub}")
        if check_kinds:
            checker = get_kind(kind)
            found = list(checker.check(spec.settings))
            if deep and not found:
                found = list(checker.deep_check(spec.settings))
            for sub, expected, got in found:
                dotted = ".".join(str(p) for p in (key, *sub))
                problems.append(f"{path}:{spec.line_of(*sub)}: {dotted}: expected {expected}"
                                + ("" if got is ... else f", got {got!r}"))
        stages[name] = spec
    if problems:
        raise PipelineError("\n".join(problems[:10]))
    return PipelineSpec(path, Path(out), stages)


def select(spec: PipelineSpec, start: Optional[str], until: Optional[str]) -> list[str]:
    """The stages from `start` through `until`, in order (both inclusive; None: the first/last)."""
    names = spec.names()
    for flag, value in (("--from", start), ("--until", until)):
        if value is not None and value not in names:
            raise PipelineError(f"{flag} {value}: not a stage of {spec.path} (stages: {', '.join(names)})")
    i = names.index(start) if start else 0
    j = names.index(until) if until else len(names) - 1
    if i > j:
        raise PipelineError(f"--from {start} comes after --until {until} in {spec.path}")
    return names[i:j + 1]
