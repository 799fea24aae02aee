"""Weighing trajectory files: round-trip of release files, re-weighing, and the `weigh` command."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from drift_algos.records import read_trajectories
from drift_algos.weighting import WeighConfig, default_output_path, stats_path_for, weigh, weigh_file
from drift_cli.weigh import register
from drift_envs.loading import DataError

SAMPLE = Path(__file__).parent / "data" / "release_sample.jsonl"


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture()
def sample(tmp_path: Path) -> Path:
    path = tmp_path / "rollouts.jsonl"
    path.write_text(SAMPLE.read_text(encoding="utf-8"), encoding="utf-8")
    return path


@pytest.fixture()
def app() -> typer.Typer:
    app = typer.Typer()

    # A group callback keeps `weigh` a subcommand, as in the real `drift` app with its several commands.
    @app.callback()
    def main() -> None:
        pass

    register(app)
    return app


def test_release_file_round_trips_with_only_return_and_weight_added(sample: Path, tmp_path: Path) -> None:
    out = tmp_path / "weighted.jsonl"
    stats = weigh_file(sample, out, WeighConfig())
    original, weighted = read_rows(sample), read_rows(out)
    assert len(weighted) == len(original) == stats.num_trajectories == 11
    returns, weights, _ = weigh(read_trajectories(sample), WeighConfig())
    for before, after, r, w in zip(original, weighted, returns, weights, strict=True):
        assert list(after) == [*before, "return", "weight"]
        assert {k: v for k, v in after.items() if k not in ("return", "weight")} == before
        assert after["return"] == r and after["weight"] == w
    assert [row["weight"] for row in weighted[4:7]] == [1.0, 1.0, 1.0]


def test_weighted_file_loads_with_datasets(sample: Path, tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    out = tmp_path / "weighted.jsonl"
    weigh_file(sample, out, WeighConfig())
    table = datasets.load_dataset("json", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    assert table.num_rows == 11
    assert {"return", "weight", "messages", "turn_rewards", "answer_norms"} <= set(table.column_names)
    # datasets re-encodes rows whose structs differ in keys (reward_details: t1..tk) with pandas' ujson, which
    # keeps 10 decimal places of every float in the batch: weights come back to within 1e-10, not bit-exact.
    assert list(table["weight"]) == pytest.approx(weigh(read_trajectories(sample))[1], rel=0, abs=1e-9)


def test_reweighing_with_another_beta_needs_no_new_rollouts(sample: Path, tmp_path: Path) -> None:
    first, second = tmp_path / "b01.jsonl", tmp_path / "b05.jsonl"
    weigh_file(sample, first, WeighConfig(beta=0.1))
    weigh_file(first, second, WeighConfig(beta=0.5))
    rows_first, rows_second = read_rows(first), read_rows(second)
    assert [list(row) for row in rows_second] == [list(row) for row in rows_first]  # columns replaced, not added
    assert [row["return"] for row in rows_second] == [row["return"] for row in rows_first]
    assert [row["weight"] for row in rows_second] != [row["weight"] for row in rows_first]
    expected = weigh(read_trajectories(sample), WeighConfig(beta=0.5))[1]
    assert [row["weight"] for row in rows_second] == pytest.approx(expected, rel=1e-12)
    # A larger beta flattens the weights: the best trajectory of the first group loses weight.
    assert rows_second[0]["weight"] < rows_first[0]["weight"]
    strip = [{k: v for k, v in row.items() if k != "weight"} for row in rows_second]
    assert strip == [{k: v for k, v in row.items() if k != "weight"} for row in rows_first]


def test_weigh_file_in_place(sample: Path) -> None:
    before = read_rows(sample)
    weigh_file(sample, sample, WeighConfig())
    after = read_rows(sample)
    assert [{k: v for k, v in row.items() if k not in ("return", "weight")} for row in after] == before
    assert [p.name for p in sample.parent.iterdir()] == [sample.name]  # no temporary file left behind


def test_weigh_file_errors(sample: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="output directory does not exist"):
        weigh_file(sample, tmp_path / "missing" / "out.jsonl")
    with pytest.raises(IsADirectoryError, match="output path is a directory"):
        weigh_file(sample, tmp_path)
    lines = sample.read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([lines[0], lines[1][:-5], *lines[2:]]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{bad}:2: invalid JSON"):
        weigh_file(bad, tmp_path / "out.jsonl")
    row = json.loads(lines[2])
    del row["turn_rewards"]
    bad.write_text("\n".join([lines[0], lines[1], json.dumps(row)]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"{bad}:3: missing field 'turn_rewards'"):
        weigh_file(bad, tmp_path / "out.jsonl")
    bad.write_text("\n".join([lines[0], json.dumps({**json.loads(lines[1]), "turn_rewards": {"t1": 1e309}})]) + "\n")
    with pytest.raises(DataError, match=f"{bad}:2: field 'turn_rewards.t1' must be finite, got inf"):
        weigh_file(bad, tmp_path / "out.jsonl")
    assert not (tmp_path / "out.jsonl").exists()
    bad.write_text("\n")
    with pytest.raises(DataError, match="no trajectories"):
        weigh_file(bad, tmp_path / "out.jsonl")


def test_cli_writes_weighted_file_and_stats(app: typer.Typer, sample: Path) -> None:
    result = CliRunner().invoke(app, ["weigh", str(sample), "--beta", "0.2", "--gamma", "0.7"])
    assert result.exit_code == 0, result.output
    out = default_output_path(sample)
    assert out.name == "rollouts.weighted.jsonl"
    expected = weigh(read_trajectories(sample), WeighConfig(gamma=0.7, beta=0.2))
    assert [row["weight"] for row in read_rows(out)] == expected[1]
    report = json.loads(stats_path_for(out).read_text(encoding="utf-8"))
    assert stats_path_for(out).name == "rollouts.weighted.jsonl.stats.json"
    assert report["config"] == {
        "gamma": 0.7,
        "beta": 0.2,
        "repetition_lambda": 0.5,
        "use_recorded_repetition_penalty": False,
    }
    assert report["stats"] == expected[2].to_dict()
    assert report["stats"]["num_groups"] == 4
    assert "ESS overall" in result.stdout and "prompt groups" in result.stdout
    assert str(out) in result.stdout.replace("\n", "")


def test_cli_explicit_out(app: typer.Typer, sample: Path, tmp_path: Path) -> None:
    out = tmp_path / "w.jsonl"
    result = CliRunner().invoke(app, ["weigh", str(sample), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(read_rows(out)) == 11 and stats_path_for(out).is_file()
    assert not default_output_path(sample).exists()


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code in (1, 2), result.output
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error:")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.output


def test_cli_missing_output_directory(app: typer.Typer, sample: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["weigh", str(sample), "--out", str(tmp_path / "nope" / "w.jsonl")])
    assert_one_line_error(result, "output directory does not exist", "nope")


def test_cli_malformed_line_names_path_and_line(app: typer.Typer, sample: Path) -> None:
    lines = sample.read_text(encoding="utf-8").splitlines()
    lines[4] = "{not json"
    sample.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["weigh", str(sample)])
    assert_one_line_error(result, f"{sample}:5", "invalid JSON")
    assert result.exit_code == 2
    assert not default_output_path(sample).exists()


def test_cli_missing_field_names_the_field(app: typer.Typer, sample: Path) -> None:
    rows = read_rows(sample)
    del rows[1]["prompt_id"]
    sample.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    result = CliRunner().invoke(app, ["weigh", str(sample)])
    assert_one_line_error(result, f"{sample}:2", "'prompt_id'")


def test_cli_missing_input_and_bad_beta(app: typer.Typer, sample: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["weigh", str(tmp_path / "absent.jsonl")])
    assert_one_line_error(result, "absent.jsonl")
    result = CliRunner().invoke(app, ["weigh", str(sample), "--beta", "0"])
    assert_one_line_error(result, "beta must be > 0")
    assert result.exit_code == 2
    result = CliRunner().invoke(app, ["weigh", str(sample), "--gamma", "nan"])
    assert_one_line_error(result, "gamma")


def test_cli_help_explains_gamma_and_beta(app: typer.Typer) -> None:
    result = CliRunner().invoke(app, ["weigh", "--help"], env={"COLUMNS": "200", "TERM": "dumb"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--gamma" in text and "--beta" in text and "--repetition-lambda" in text and "--out" in text
    assert "gamma^(t-1)" in text and "exp(return/beta)" in text
    assert "default: IN with the suffix .weighted.jsonl" in text


def test_cli_recorded_repetition_penalty_flag(app: typer.Typer, sample: Path, tmp_path: Path) -> None:
    rows = read_rows(sample)
    rows[0]["repetition_penalty"] = 0.25  # the environment's own value; answer_norms ["4"] would give 0
    sample.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    default, recorded = tmp_path / "default.jsonl", tmp_path / "recorded.jsonl"
    assert CliRunner().invoke(app, ["weigh", str(sample), "-o", str(default)]).exit_code == 0
    result = CliRunner().invoke(app, ["weigh", str(sample), "-o", str(recorded), "--recorded-repetition-penalty"])
    assert result.exit_code == 0, result.output
    assert read_rows(default)[0]["return"] == 1.0
    assert read_rows(recorded)[0]["return"] == pytest.approx(0.75)
    assert [row["return"] for row in read_rows(recorded)[1:]] == [row["return"] for row in read_rows(default)[1:]]
