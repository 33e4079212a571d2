"""`megafin generate`: resumes after a SIGKILL half-way without duplicating or losing rows, --shard splits rows
without overlap, a bad input row is one line naming file:line (exit 2), extra fields are kept."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megafin.cli import main
from megafin.generate.api import GenerationRequest
from tests.generate.serve_fixtures import REPO, make_tiny_hf, megafin_env, scripted_engine, scripted_text


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_hf(tmp_path_factory.mktemp("generate_cli"))


def write_rows(path: Path, count: int) -> Path:
    """Alternating plain prompts and chat rows, each with fields of its own that must come back unchanged."""
    rows = []
    for i in range(count):
        if i % 2:
            rows.append({"id": f"q{i}", "messages": [{"role": "user", "content": f"Is quarter {i} good?"}],
                         "label": i % 3})
        else:
            rows.append({"id": f"q{i}", "prompt": f"Revenue in quarter {i} was", "meta": {"k": i}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def read_out(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def generate(args: list[str]) -> int:
    return main(["generate", *args])


def test_resume_after_sigkill_neither_duplicates_nor_loses_rows(tiny_hf: Path, tmp_path: Path, capsys) -> None:
    rows = 16
    data = write_rows(tmp_path / "in.jsonl", rows)
    out, clean = tmp_path / "out.jsonl", tmp_path / "clean.jsonl"
    common = ["--model", str(tiny_hf), "--engine", "hf", "--input", str(data), "--max-new-tokens", "8",
              "--batch-size", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "megafin", "generate", *common, "--output", str(out)], cwd=REPO,
                            env=megafin_env(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out.exists() and out.read_text().count("\n") >= 3):
        assert proc.poll() is None, f"generate ended before it was killed: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "generate wrote nothing in 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    written = out.read_text().count("\n")
    assert 3 <= written < rows, f"the kill came too late to test resuming ({written} of {rows} rows)"
    with out.open("a") as f:  # what a kill in the middle of a write leaves: a last line without its end
        f.write('{"id": "q99", "prompt": "cut')

    assert generate([*common, "--output", str(out)]) == 0
    summary = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{rows - written} rows written" in summary and f"{written} already there" in summary
    assert "partly written last row dropped" in summary and "tokens/s" in summary
    assert generate([*common, "--output", str(clean)]) == 0

    got, want = read_out(out), read_out(clean)
    assert sorted(r["_line"] for r in got) == list(range(1, rows + 1))  # each row once
    assert sorted(got, key=lambda r: r["_line"]) == want  # and the same as an uninterrupted run
    for row, source in zip(want, map(json.loads, data.read_text().splitlines())):
        assert {k: row[k] for k in source} == source  # the input's own fields kept
        assert row["prompt_tokens"] > 0 and len(row["samples"]) == 1
        assert set(row["samples"][0]) == {"text", "finish_reason", "completion_tokens"}
    # A rerun of a finished job writes nothing.
    assert generate([*common, "--output", str(out)]) == 0
    assert read_out(out) == got
    assert f"0 rows written to {out} ({rows} already there)" in capsys.readouterr().err


def test_shards_split_rows_without_overlap(tmp_path: Path, capsys) -> None:
    data = write_rows(tmp_path / "in.jsonl", 11)
    engine = scripted_engine()
    lines = {}
    for i in range(3):
        out = tmp_path / f"out{i}.jsonl"
        assert generate(["--model", "m", "--engine", engine.name, "--input", str(data), "--output", str(out),
                         "--shard", f"{i}/3", "--batch-size", "2", "--n", "2", "--temperature", "0.7"]) == 0
        lines[i] = [r["_line"] for r in read_out(out)]
        assert lines[i] == [line for line in range(1, 12) if (line - 1) % 3 == i]
        for row in read_out(out):
            request = GenerationRequest(prompt=row.get("prompt"), messages=row.get("messages"))
            assert [s["text"] for s in row["samples"]] == [scripted_text(request, k) for k in range(2)]
    assert sorted(sum(lines.values(), [])) == list(range(1, 12))
    assert "7 in other shards" in capsys.readouterr().err


def test_a_prompt_too_long_for_the_model_names_its_line(tiny_hf: Path, tmp_path: Path, capsys) -> None:
    data = write_rows(tmp_path / "in.jsonl", 3)
    out = tmp_path / "out.jsonl"
    assert generate(["--model", str(tiny_hf), "--engine", "hf", "--input", str(data), "--output", str(out),
                     "--max-new-tokens", "250", "--batch-size", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"megafin generate: error: {data}, line 1: a prompt of ")
    assert err.endswith("plus max_new_tokens 250 exceeds the model's context of 256 tokens")


BAD_ROWS = [
    ("not json", "{'prompt': 'single quotes'}", "not valid JSON"),
    ("no prompt", '{"question": "where is the prompt?"}', "exactly one of 'prompt'"),
    ("both", '{"prompt": "a", "messages": [{"role": "user", "content": "b"}]}', "exactly one of 'prompt'"),
    ("bad messages", '{"messages": [{"role": "user"}]}', "messages: expected a non-empty list"),
    ("prompt not text", '{"prompt": 42}', "prompt: expected a string"),
    ("not an object", '["prompt", "x"]', "expected a JSON object"),
    ("reserved key", '{"prompt": "x", "samples": []}', "'samples' is written by megafin generate"),
]


@pytest.mark.parametrize("kind,line,expected", BAD_ROWS, ids=[b[0] for b in BAD_ROWS])
def test_a_bad_row_is_one_line_naming_file_and_line(tmp_path: Path, capsys, kind, line, expected) -> None:
    data = tmp_path / "in.jsonl"
    data.write_text('{"prompt": "fine"}\n\n' + line + "\n" + '{"prompt": "also fine"}\n')
    out = tmp_path / "out.jsonl"
    engine = scripted_engine()
    args = ["--model", "m", "--engine", engine.name, "--input", str(data), "--output", str(out)]
    assert generate(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"megafin generate: error: {data}:3: ") and expected in err[0]
    assert not out.exists() and type(engine).calls == []  # refused before any generation
    # --skip-bad: the row is named, counted and skipped; the others are written.
    assert generate([*args, "--skip-bad"]) == 0
    err = capsys.readouterr().err
    assert f"skipped: {data}:3: " in err and "1 bad rows skipped" in err
    assert [r["_line"] for r in read_out(out)] == [1, 4]


@pytest.mark.parametrize("args,expected", [
    (["--shard", "3/3"], "--shard: expected i/N"),
    (["--n", "2"], "n: greedy decoding"),
    (["--temperature", "-1"], "temperature: expected a number >= 0"),
    (["--engine", "nope"], "--engine: expected one of auto, megafin, hf, vllm, openai"),
    (["--batch-size", "0"], "--batch-size: expected a positive integer"),
])
def test_bad_settings_are_one_line_and_exit_2(tmp_path: Path, capsys, args, expected) -> None:
    data = write_rows(tmp_path / "in.jsonl", 2)
    scripted_engine()
    assert generate(["--model", "m", "--engine", "scripted", "--input", str(data), "--output",
                     str(tmp_path / "out.jsonl"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_an_output_that_is_not_ours_is_refused_not_overwritten(tmp_path: Path, capsys) -> None:
    data = write_rows(tmp_path / "in.jsonl", 2)
    out = tmp_path / "out.jsonl"
    out.write_text('{"something": "else"}\n')
    scripted_engine()
    assert generate(["--model", "m", "--engine", "scripted", "--input", str(data), "--output", str(out)]) == 2
    assert f"--output {out}:1: not a row written by megafin generate" in capsys.readouterr().err
    assert out.read_text() == '{"something": "else"}\n'
