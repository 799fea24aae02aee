"""Records that once slipped through or crashed: each now fails at read time with ``FILE:LINE: field``.

Every case goes through the real `drift` command in a subprocess (exit code 2, one line on stderr,
no traceback, no output file) and through the reader that `drift train` uses before any model loads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from drift_algos.records import read_trajectories
from drift_envs.loading import DataError

GOOD = {
    "prompt_id": "p",
    "messages": [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "<answer>2</answer>"}],
    "verifier": {"t1": 1},
    "turn_rewards": {"t1": 1.0},
    "t_star": 1,
    "format_penalty": 0.0,
    "success": True,
}

# (name, the second line of the file, the field the error must name)
CASES = [
    ("success as a string", json.dumps({**GOOD, "success": "false"}), "field 'success' must be true or false"),
    ("positive format penalty", json.dumps({**GOOD, "format_penalty": 5}), "field 'format_penalty' must be <= 0"),
    ("400-digit reward", json.dumps(GOOD).replace('"t1": 1.0', '"t1": ' + "9" * 400),
     "field 'turn_rewards.t1' is too large"),
    ("5000-digit reward", json.dumps(GOOD).replace('"t1": 1.0', '"t1": ' + "9" * 5000), "invalid JSON"),
    ("nested arrays", '{"prompt_id": ' + "[" * 100_000 + "]" * 100_000 + "}", "invalid JSON (nested too deeply)"),
    ("t_star text", json.dumps({**GOOD, "t_star": "abc"}), "field 't_star' must be a turn number"),
    ("t_star zero", json.dumps({**GOOD, "t_star": 0}), "field 't_star' must be a turn number"),
    ("ends with a user message",
     json.dumps({**GOOD, "messages": [*GOOD["messages"], {"role": "user", "content": "Incorrect."}]}),
     "field 'messages' must end with an assistant message"),
    ("NaN reward", json.dumps(GOOD).replace('"t1": 1.0', '"t1": NaN'), "field 'turn_rewards.t1' must be finite"),
    ("infinite reward", json.dumps(GOOD).replace('"t1": 1.0', '"t1": -Infinity'),
     "field 'turn_rewards.t1' must be finite"),
    ("infinite penalty", json.dumps(GOOD).replace('"format_penalty": 0.0', '"format_penalty": -Infinity'),
     "field 'format_penalty' must be finite"),
    ("negative repetition penalty", json.dumps({**GOOD, "repetition_penalty": -1}),
     "field 'repetition_penalty' must be >= 0"),
    ("sample index text", json.dumps({**GOOD, "sample_index": "3"}), "field 'sample_index' must be an integer"),
]


def drift(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "drift_cli.main", *args], input=stdin, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(("name", "line", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_record_is_one_line_error_naming_file_line_and_field(tmp_path: Path, name: str, line: str,
                                                                  message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=f"^{path}:2: ") as err:
        read_trajectories(path)
    assert message in str(err.value)
    out = tmp_path / "out.jsonl"
    result = drift("weigh", str(path), "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and f"{path}:2: " in lines[0].replace("\n", "") and message.split("'")[0] in lines[0]
    assert not out.exists()


def test_weigh_reads_standard_input(tmp_path: Path) -> None:
    """A pipe can be read once: `drift weigh /dev/stdin` keeps its rows for the second pass."""
    rows = [{**GOOD, "turn_rewards": {"t1": r}, "success": r > 0, "t_star": 1 if r > 0 else None} for r in (1.0, 0.0)]
    out = tmp_path / "out.jsonl"
    result = drift("weigh", "/dev/stdin", "--out", str(out), "--beta", "0.5",
                   stdin="".join(json.dumps(r) + "\n" for r in rows))
    assert result.returncode == 0, result.stderr
    weights = [json.loads(x)["weight"] for x in out.read_text().splitlines()]
    # exp(1/0.5) and exp(0) normalised to mean 1 within the group
    e = 2.718281828459045 ** 2
    assert weights == pytest.approx([2 * e / (e + 1), 2 / (e + 1)])
