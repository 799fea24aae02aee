"""The bad-input corpus (tests/data/bad/, see its README) through `drift weigh` and `drift train`.

Every file gives a one-line ``error: FILE:LINE: field: problem`` with exit code 2 (nothing written, no
traceback), or, for the one file that is valid but unusual (a group of one), finite weights and a summary
that counts it. Bad flag values give a one-line error naming the flag, on every command that takes them.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from drift_cli.main import app, main

BAD = Path(__file__).parent / "data" / "bad"

# file -> the error line's text after "error: " (the path is prefixed in the test). Keep in step with BAD/README.md.
ERRORS = {
    "malformed_json.jsonl": ":2: invalid JSON",
    "missing_prompt_id.jsonl": ":2: prompt_id: missing field",
    "missing_turn_rewards.jsonl": ":2: turn_rewards: missing field",
    "missing_messages.jsonl": ":2: messages: missing field",
    "messages_not_a_list.jsonl": ":2: messages: must be list, got str",
    "reward_is_a_string.jsonl": ":2: turn_rewards.t1: must be a number",
    "turn_key_not_tN.jsonl": ":2: turn_rewards: has key 'turn1'",
    "nan_reward.jsonl": ":2: turn_rewards.t1: must be finite, got nan",
    "infinity_reward.jsonl": ":2: turn_rewards.t1: must be finite, got inf",
    "huge_float_reward.jsonl": ":2: turn_rewards.t1: must be finite, got inf",
    "huge_integer_reward.jsonl": ":2: turn_rewards.t1: number too large (400 digits)",
    "unknown_role.jsonl": ":2: messages[1]: must be {role: system|user|assistant, content: str}",
    "ends_with_user_message.jsonl": ":2: messages: must end with an assistant message",
    "success_is_a_string.jsonl": ":2: success: must be true or false, got 'false'",
    "positive_format_penalty.jsonl": ":2: format_penalty: must be <= 0, got 5",
    "t_star_is_a_string.jsonl": ":2: t_star: must be a turn number >= 1 or null, got 'abc'",
    "line_is_not_an_object.jsonl": ":2: expected a JSON object, got list",
    "not_utf8.jsonl": ":2: invalid UTF-8 at byte",
    "gzip_named_jsonl.jsonl": ":1: file is gzip-compressed; name it .gz",
    "empty.jsonl": ": no trajectories",
}


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def one_line_error(args: list[str]) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0].removeprefix("error: ")


def generated(name: str, tmp_path: Path) -> Path:
    """The corpus entries too big (or too odd) to commit, written on demand."""
    path = tmp_path / name
    good = (BAD / "malformed_json.jsonl").read_text().splitlines()[0]
    if name == "fifty_megabyte_line.jsonl":
        row = json.loads(good)
        row["messages"][1]["content"] = "x" * (50 * 1024 * 1024)
        path.write_text(good + "\n" + json.dumps(row) + "\n")
    elif name == "deeply_nested.jsonl":
        path.write_text(good + "\n" + '{"prompt_id": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    elif name == "directory.jsonl":
        path.mkdir()
    return path


GENERATED = {
    "fifty_megabyte_line.jsonl": ":2: line is over the 16,777,216-byte limit",
    "deeply_nested.jsonl": ":2: invalid JSON (nested too deeply)",
    "directory.jsonl": ": is a directory, expected a JSON Lines file",
}


def corpus_path(name: str, tmp_path: Path) -> Path:
    return generated(name, tmp_path) if name in GENERATED else BAD / name


def test_the_corpus_table_lists_every_file() -> None:
    readme = (BAD / "README.md").read_text()
    files = sorted(p.name for p in BAD.glob("*.jsonl"))
    assert files == sorted([*ERRORS, "group_of_one.jsonl", "empty_assistant_message.jsonl"])
    for name in [*files, *GENERATED]:
        assert f"`{name}`" in readme, name


@pytest.mark.parametrize("name", [*ERRORS, *GENERATED])
def test_weigh_gives_file_line_field_problem(name: str, tmp_path: Path) -> None:
    path = corpus_path(name, tmp_path)
    out = tmp_path / "out.jsonl"
    line = one_line_error(["weigh", path, "--out", out])
    assert line.startswith(f"{path}{(ERRORS | GENERATED)[name]}"), line
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl*"))


@pytest.mark.parametrize("name", [*ERRORS, *GENERATED])
def test_train_rejects_before_loading_a_model(name: str, tmp_path: Path) -> None:
    # A model that does not exist: the error must come from reading the file, before any model is loaded.
    path = corpus_path(name, tmp_path)
    line = one_line_error(["train", path, "--out", tmp_path / "ckpt", "--model", tmp_path / "no-model"])
    assert line.startswith(f"{path}{(ERRORS | GENERATED)[name]}"), line
    assert not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("name", ["ends_with_user_message.jsonl", "success_is_a_string.jsonl"])
def test_run_from_trajectories_rejects_before_loading_a_model(name: str, tmp_path: Path) -> None:
    path = BAD / name
    line = one_line_error(["run", "--trajectories", path, "--out", tmp_path / "run", "--model", tmp_path / "no"])
    assert line.startswith(f"{path}{ERRORS[name]}"), line
    assert not (tmp_path / "run").exists()


def test_group_of_one_is_weighed_and_counted(tmp_path: Path) -> None:
    out = tmp_path / "w.jsonl"
    result = CliRunner().invoke(app, ["weigh", str(BAD / "group_of_one.jsonl"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    weights = [row["weight"] for row in rows]
    assert all(math.isfinite(w) for w in weights)
    # p1: returns 1 and 0 at beta 0.1 -> 2e^10/(e^10+1) and 2/(e^10+1); "alone" has weight exactly 1.
    assert weights[0] == pytest.approx(2 * math.exp(10) / (math.exp(10) + 1), rel=1e-12)
    assert weights[1] == pytest.approx(2 / (math.exp(10) + 1), rel=1e-12)
    assert weights[2] == 1.0
    stats = json.loads(Path(str(out) + ".stats.json").read_text())["stats"]
    assert stats["num_groups"] == 2 and stats["equal_return_group_share"] == 0.5
    assert stats["single_trajectory_groups"] == 1
    assert "groups of one trajectory (weight 1)" in result.output


def test_group_of_one_trains(tiny_model_dir: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    result = CliRunner().invoke(app, ["train", str(BAD / "group_of_one.jsonl"), "--out", str(ckpt), "--model",
                                      str(tiny_model_dir), "--preset", "smoke", "--epochs", "1"])
    assert result.exit_code == 0, result.output
    log = [json.loads(line) for line in (ckpt / "train_log.jsonl").read_text().splitlines()]
    assert log and all(math.isfinite(entry["loss"]) for entry in log if "loss" in entry)


def test_an_empty_last_reply_is_weighed_counted_and_not_trained_on(tiny_model_dir: Path, tmp_path: Path) -> None:
    # A model can end its reply at once (an environment without a reply prefix records ""): the record is valid,
    # weighed with its group, counted in the summary, and left out of training, which says so.
    path = BAD / "empty_assistant_message.jsonl"
    out = tmp_path / "w.jsonl"
    result = CliRunner().invoke(app, ["weigh", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["weight"] for line in out.read_text().splitlines()] == [1.0, 1.0]  # equal returns
    assert json.loads(Path(str(out) + ".stats.json").read_text())["stats"]["empty_last_replies"] == 1
    assert "empty last replies (weighed, not trained on)" in result.output
    for algo in ("drift", "sft"):
        ckpt = tmp_path / f"ckpt-{algo}"
        result = CliRunner().invoke(app, ["train", str(path), "--out", str(ckpt), "--algo", algo, "--model",
                                          str(tiny_model_dir), "--preset", "smoke", "--keep-unsolved"])
        assert result.exit_code == 0, result.output
        assert "1 of 2 trajectories not trained on, 1 with an empty last reply" in " ".join(result.output.split())
        log = [json.loads(line) for line in (ckpt / "train_log.jsonl").read_text().splitlines()]
        assert len(log) == 1 and log[0]["tokens"] > 0


def test_weigh_reads_standard_input_once(tmp_path: Path) -> None:
    import subprocess

    good = (BAD / "group_of_one.jsonl").read_bytes()
    out = tmp_path / "w.jsonl"
    done = subprocess.run([sys.executable, "-m", "drift_cli.main", "weigh", "/dev/stdin", "--out", str(out)],
                          input=good, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr.decode()
    assert [json.loads(line)["weight"] for line in out.read_text().splitlines()][2] == 1.0


# -- bad flag values: one line naming the flag ------------------------------------------------------------------

FLAG_CASES = [
    (["weigh", "{good}", "--beta", "0"], "--beta: beta must be > 0"),
    (["weigh", "{good}", "--beta", "-1"], "--beta: beta must be > 0"),
    (["weigh", "{good}", "--beta", "nan"], "--beta: beta must be a finite number"),
    (["weigh", "{good}", "--gamma", "2"], "--gamma: gamma must be in [0, 1]"),
    (["weigh", "{good}", "--repetition-lambda", "-1"], "--repetition-lambda: repetition_lambda must be >= 0"),
    (["weigh", "{good}", "--out", "missing/w.jsonl"], "output directory does not exist"),
    (["train", "{good}", "--out", "ckpt", "--beta", "0"], "--beta: "),
    (["train", "{good}", "--out", "ckpt", "--beta", "inf"], "--beta: "),
    (["train", "{good}", "--out", "ckpt", "--gamma", "2"], "--gamma: "),
    (["train", "{good}", "--out", "ckpt", "--lr", "0"], "--lr: learning_rate must be > 0"),
    (["train", "{good}", "--out", "ckpt", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "{good}", "--out", "ckpt", "--algo", "nope"], "unknown algorithm 'nope'"),
    (["train", "{good}", "--out", "missing/ckpt"], "parent directory does not exist"),
    (["run", "--beta", "0", "--out", "r"], "--beta: "),
    (["run", "--lr", "0", "--out", "r"], "--lr: learning_rate must be > 0"),
    (["run", "--preset", "nope", "--out", "r"], "unknown preset 'nope'"),
    (["run", "--algo", "nope", "--out", "r"], "unknown algorithm 'nope'"),
    (["run", "--out", "missing/r"], "parent directory does not exist"),
    (["rollout", "--top-p", "0", "--out", "r.jsonl"], "--top-p: top_p must be in (0, 1]"),
    (["rollout", "--out", "missing/r.jsonl"], "output directory does not exist"),
    (["eval", "--out", "missing/e.json"], "output directory does not exist"),
]


@pytest.mark.parametrize(("args", "names"), FLAG_CASES)
def test_bad_flag_value_is_one_line_naming_it(args: list[str], names: str, tmp_path: Path) -> None:
    args = [a.format(good=BAD / "group_of_one.jsonl") for a in args]
    line = one_line_error(args)
    assert names in line, line
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("args", "flag"),
    [(["rollout", "--n", "0"], "--n"), (["run", "--n", "0"], "--n"),
     (["train", "x", "--out", "o", "--lr", "-1"], "--lr"),
     (["train", "x", "--out", "o", "--lr", "nan"], "--lr"), (["run", "--lr", "-1"], "--lr"),
     (["eval", "--num-problems", "0"], "--num-problems"), (["eval", "--max-new-tokens", "0"], "--max-new-tokens"),
     (["rollout", "--max-turns", "0"], "--max-turns"), (["train", "x", "--out", "o", "--epochs", "0"], "--epochs"),
     (["run", "--epochs", "0"], "--epochs"), (["train", "x", "--out", "o", "--batch-size", "0"], "--batch-size"),
     (["run", "--min-weight", "-1"], "--min-weight"), (["rollout", "--temperature", "-1"], "--temperature"),
     (["run", "--temperature", "nan"], "--temperature"), (["run", "--gamma", "0.5"], "--gamma")],
)
def test_out_of_range_flag_is_one_line_naming_it(args: list[str], flag: str, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Through the console entry point, which turns Typer's usage errors into one line."""
    monkeypatch.setattr(sys, "argv", ["drift", *args])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and flag in lines[0], lines
