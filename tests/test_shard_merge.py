"""Sharded collection: four shards collected separately and merged equal one unsharded collection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from drift_algos.rollout.collection import Shard
from drift_cli.main import app

runner = CliRunner()
PROMPTS, N = 10, 2


def rollout(model_dir: Path, out: Path, *extra: str, seed: int = 3) -> None:
    result = runner.invoke(app, ["rollout", "--model", str(model_dir), "--env", "math", "--num-prompts", str(PROMPTS),
                                 "--n", str(N), "--max-turns", "2", "--max-new-tokens", "6", "--temperature", "1.0",
                                 "--seed", str(seed), "--env-arg", "num_problems=40", "--out", str(out), *extra])
    assert result.exit_code == 0, result.output


def sorted_lines(path: Path) -> list[str]:
    return sorted(path.read_text().splitlines(), key=lambda x: (json.loads(x)["group_index"],
                                                                json.loads(x)["sample_index"]))


@pytest.fixture(scope="module")
def collected(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("shards")
    rollout(tiny_model_dir, folder / "all.jsonl")
    for i in range(4):
        rollout(tiny_model_dir, folder / f"s{i}.jsonl", "--shard", f"{i}/4")
    rollout(tiny_model_dir, folder / "other-seed.jsonl", "--shard", "3/4", seed=4)
    return folder


def test_four_shards_merged_equal_one_unsharded_run(collected: Path) -> None:
    shards = [collected / f"s{i}.jsonl" for i in range(4)]
    assert [len(s.read_text().splitlines()) for s in shards] == [6, 6, 4, 4]  # groups 0,4,8 / 1,5,9 / 2,6 / 3,7
    merged = collected / "merged.jsonl"
    result = runner.invoke(app, ["merge", str(merged), *map(str, shards[::-1])])
    assert result.exit_code == 0, result.output
    assert merged.read_text().splitlines() == sorted_lines(collected / "all.jsonl")  # row for row, groups in order
    assert json.loads((collected / "merged.meta.json").read_text())["shard"] == "0/1"


@pytest.mark.parametrize(("files", "message"), [
    (["s0", "s1", "s2", "other-seed"], "other-seed.jsonl: field 'seed' is 4, but"),
    (["s0", "s1", "s2"], "groups [3, 7] are in none of the 3 shards"),
    (["s0", "s1", "s2", "s3", "s3"], "field 'group_index': group 3 is also in"),
])
def test_merge_refuses_mismatched_shards(collected: Path, files: list[str], message: str) -> None:
    if files.count("s3") == 2:  # the same groups under another name: a duplicate, not the same file twice
        (collected / "s3-copy.jsonl").write_text((collected / "s3.jsonl").read_text())
        (collected / "s3-copy.meta.json").write_text((collected / "s3.meta.json").read_text())
        files = [*files[:-1], "s3-copy"]
    out = collected / "bad-merge.jsonl"
    result = runner.invoke(app, ["merge", str(out), *(str(collected / f"{f}.jsonl") for f in files)])
    assert result.exit_code == 2
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and message in " ".join(result.output.split()), result.output
    assert not out.exists()


def test_shard_parsing() -> None:
    assert Shard.parse("1/4").groups(10) == [1, 5, 9]
    for bad in ("4/4", "x/2", "1", "-1/3", "1/0"):
        with pytest.raises(ValueError, match="shard"):
            Shard.parse(bad)
