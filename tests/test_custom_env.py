"""docs/custom-environments.md, run as written.

The document's fenced blocks are the test's input: blocks whose first line is
``# file: NAME`` are written out as files, the other ``python`` blocks are executed, and the
``drift`` lines of the ``bash`` blocks are invoked through the real CLI app, with one change:
``--model`` points to a tiny random model built here (the default model is too slow for a
test). The document's ``pip install -e examples/word_env`` is carried out as a real pip
install (offline, into a temporary ``--target`` directory put on ``sys.path``) of the
package the document shows, which must be the one in ``examples/word_env/``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env
from typer.testing import CliRunner

from drift_algos.records import read_trajectories
from drift_cli.main import app
from drift_envs import UnknownEnvError, list_envs, make_env, resolve_env_id

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "custom-environments.md"
EXAMPLE = ROOT / "examples" / "word_env"
INSTALL_LINE = "pip install -e examples/word_env"
"""The document's install instruction (carried out here as a ``--target`` install of the same package)."""

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```\s*$", re.M | re.S)
_FILE_MARKER = re.compile(r"# file: (\S+)\n")
_ENV_ASSIGNMENT = re.compile(r"^([A-Z_][A-Z0-9_]*)=(.*)$")


@dataclass(frozen=True)
class Block:
    """A fenced code block of the document."""

    lang: str
    """The fence's language tag (``python``, ``bash``, ``toml``, ``text``)."""
    text: str
    """The block's content, ending with a newline."""
    line: int
    """Line of the opening fence (1-based), for test ids and messages."""

    @property
    def file_name(self) -> str | None:
        match = _FILE_MARKER.match(self.text)
        return match.group(1) if match else None

    @property
    def body(self) -> str:
        """The content without the ``# file:`` marker line."""
        return _FILE_MARKER.sub("", self.text, count=1) if self.file_name else self.text


def doc_blocks() -> list[Block]:
    text = DOC.read_text(encoding="utf-8")
    return [Block(m.group(1), m.group(2), text.count("\n", 0, m.start()) + 1) for m in _FENCE.finditer(text)]


def doc_files() -> dict[str, str]:
    files = {b.file_name: b.body for b in doc_blocks() if b.file_name}
    assert files, f"{DOC} shows no '# file:' blocks"
    return files


def doc_snippets() -> list[Block]:
    return [b for b in doc_blocks() if b.lang == "python" and not b.file_name]


def doc_shell_lines() -> list[str]:
    """Commands of the ``bash`` blocks, one per entry (``\\``-continued lines joined)."""
    return [line.strip() for b in doc_blocks() if b.lang == "bash" for line in b.text.replace("\\\n", " ").splitlines()
            if line.strip() and not line.strip().startswith("#")]


def doc_drift_commands() -> list[str]:
    return [line for line in doc_shell_lines() if line != INSTALL_LINE]


def doc_envs_table() -> list[tuple[str, ...]]:
    """Rows of the ``drift envs`` output the document shows, as tuples of cells."""
    tables = [b.text for b in doc_blocks() if b.lang == "text" and "│" in b.text]
    assert len(tables) == 1, "expected one drift envs table in the document"
    return table_rows(tables[0])


def table_rows(output: str) -> list[tuple[str, ...]]:
    """The body rows of a rich table, as tuples of stripped cells (independent of column widths)."""
    return [tuple(cell.strip() for cell in line.strip().strip("│").split("│"))
            for line in output.splitlines() if line.strip().startswith("│")]


def _command_id(command: str) -> str:
    return " ".join(word for word in command.split() if not word.startswith("--") and "=" not in word)[:60]


def _command_params() -> list:
    return [pytest.param(command, id=_command_id(command)) for command in doc_drift_commands()]


# -- fixtures --------------------------------------------------------------------------------

DOC_MODULES = ("word_env", "spell_env", "my_envs")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The document's package, installed by pip into a directory of its own (offline, no build isolation)."""
    source = tmp_path_factory.mktemp("word-env-src")
    files = doc_files()
    for name in ("pyproject.toml", "word_env.py"):
        (source / name).write_text(files[name], encoding="utf-8")
    target = tmp_path_factory.mktemp("site-packages")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps", "--no-index",
         "--disable-pip-version-check", "--target", str(target), str(source)],
        check=True, capture_output=True, text=True, timeout=120,
    )
    return target


@pytest.fixture(autouse=True)
def isolated() -> Iterator[None]:
    """Each test starts without the document's modules imported and leaves Gymnasium's registry as it found it."""

    def forget_modules() -> None:
        for name in DOC_MODULES:
            sys.modules.pop(name, None)

    forget_modules()
    before = set(gym.registry)
    yield
    for env_id in set(gym.registry) - before:
        del gym.registry[env_id]
    forget_modules()


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The reader's directory: the document's files, as the current directory."""
    work = tmp_path / "work"
    work.mkdir()
    for name, body in doc_files().items():
        (work / name).write_text(body, encoding="utf-8")
    monkeypatch.chdir(work)
    return work


# -- the document and the example package ------------------------------------------------------


def test_example_package_is_the_documented_code() -> None:
    files = doc_files()
    assert set(files) == {"word_env.py", "pyproject.toml", "my_envs.py", "spell_env.py"}
    assert files["word_env.py"] == (EXAMPLE / "word_env.py").read_text(encoding="utf-8")
    assert files["pyproject.toml"] == (EXAMPLE / "pyproject.toml").read_text(encoding="utf-8")
    assert '"word/Word-v0" = "word_env:WordEnv"' in files["pyproject.toml"]
    # The only non-drift shell line is the install; everything else below runs as a drift command.
    assert INSTALL_LINE in doc_shell_lines()
    assert all(shlex.split(c)[0] == "drift" or _ENV_ASSIGNMENT.match(shlex.split(c)[0])
               for c in doc_drift_commands())


@pytest.mark.parametrize("snippet", doc_snippets(), ids=lambda b: f"line{b.line}")
def test_python_snippet_runs(snippet: Block, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(workdir))
    with warnings.catch_warnings():
        # Gymnasium's checker reports problems as warnings: the documented code must raise none.
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        exec(compile(snippet.text, f"{DOC}:{snippet.line}", "exec"), {"__name__": f"doc_snippet_{snippet.line}"})


# -- the user's environments -------------------------------------------------------------------


def test_documented_envs_pass_check_env(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(workdir))
    import spell_env
    import word_env

    gym.register("test/Word-v0", entry_point="word_env:WordEnv")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        check_env(gym.make("test/Word-v0", num_problems=20).unwrapped)
        check_env(word_env.WordEnv(word_env.WordEnvConfig(feedback="full", think=True), split="test"),
                  skip_render_check=True)
        check_env(spell_env.SpellNumberEnv(split="test"), skip_render_check=True)


def test_word_env_behaves_as_documented(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(workdir))
    from word_env import WordEnv, WordEnvConfig, make_words

    train, test = set(make_words(300, "train", 0)), set(make_words(300, "test", 0))
    assert len(train) == len(test) == 300 and not train & test
    env = WordEnv(max_turns=3, max_actions=3)
    assert len(env.problems) == 500 and all(p.answer == p.question[::-1] for p in env.problems)
    observation, info = env.reset(options={"problem_index": 4})
    word = env.problems[4].question
    assert f"Write the word '{word}' backwards." in observation and info["gold"] == word[::-1]
    feedback, reward, terminated, truncated, step_info = env.step("<answer>xy</answer>")
    assert feedback == f"'xy' has 2 letters; the word has {len(word)}.\nIncorrect. Please think again."
    assert (reward, terminated, truncated) == (0.0, False, False)
    spaced = " ".join(word[::-1].upper())
    feedback, reward, terminated, truncated, step_info = env.step(f"<answer>{spaced}</answer>")
    assert (feedback, reward, terminated) == ("Correct!", 1.0, True)
    assert step_info["episode"].answer_norms == ["xy", word[::-1]] and step_info["episode"].t_star == 2
    with pytest.raises(ValueError, match="split"):
        WordEnvConfig(split="dev")
    with pytest.raises(ValueError, match="num_problems"):
        WordEnv(num_problems=0)


def test_spell_env_behaves_as_documented(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(workdir))
    from spell_env import SpellNumberEnv, spell

    assert [spell(n) for n in (0, 13, 20, 42, 99)] == ["zero", "thirteen", "twenty", "forty-two", "ninety-nine"]
    env = SpellNumberEnv(split="test", max_turns=5, max_actions=2)
    _, info = env.reset(seed=1)
    assert int(info["problem_id"].removeprefix("spell-")) % 4 == 0
    assert env.step("no idea") == ("No, try again.", 0.0, False, False, {"success": False})
    assert env.step("no idea")[3] is True  # max_actions=2 caps the turns


# -- the three ways to make it available --------------------------------------------------------


def test_resolved_three_ways(workdir: Path, site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(workdir))
    # (a) gymnasium.register in code, named on the command line as module:id
    env_id = resolve_env_id("my_envs:myorg/Word-v0")
    assert env_id == "myorg/Word-v0"
    assert type(gym.make(env_id).unwrapped).__name__ == "WordEnv"
    # (b) the package's drift.envs entry point: invisible until the package is installed
    assert "word/Word-v0" not in {info.id for info in list_envs()}
    with pytest.raises(UnknownEnvError):
        resolve_env_id("word/Word-v0")
    monkeypatch.syspath_prepend(str(site))
    infos = {info.id: info for info in list_envs()}
    assert infos["word/Word-v0"].entry_point == "word_env:WordEnv"
    assert infos["word/Word-v0"].origin == "entry point"
    env = make_env("word/Word-v0", split="test", max_turns=2)
    assert type(env.unwrapped).__name__ == "WordEnv" and env.unwrapped.config.split == "test"
    # (c) module:Class, registered on first use; gymnasium.make must accept the id it returns
    env_id = resolve_env_id("word_env:WordEnv")
    env = gym.make(env_id, max_turns=2)
    assert type(env.unwrapped).__name__ == "WordEnv" and env.unwrapped.config.max_turns == 2
    assert resolve_env_id("word_env:WordEnv") == env_id
    env_id = resolve_env_id("spell_env:SpellNumberEnv")
    assert type(gym.make(env_id).unwrapped).__name__ == "SpellNumberEnv"


def test_unknown_class_is_a_one_line_error(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(workdir))
    result = CliRunner().invoke(app, ["rollout", "--env", "word_env:NoSuchEnv", "--out", "x.jsonl"])
    assert result.exit_code == 2
    assert "word_env" in result.output and "NoSuchEnv" in result.output
    assert not (workdir / "x.jsonl").exists()


def test_drift_envs_in_a_fresh_process_lists_the_installed_package(site: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(site), "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-m", "drift_cli.main", "envs"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert ("word/Word-v0", "", "word_env:WordEnv", "entry point") in table_rows(result.stdout)


# -- the documented commands ---------------------------------------------------------------------


def _apply_prefix(words: list[str], cwd: Path, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Carry out ``NAME=value`` words before the command as the shell would; return the command."""
    while words and (match := _ENV_ASSIGNMENT.match(words[0])):
        name, value = match.groups()
        if name == "PYTHONPATH":  # the CLI runs in this process: its import path is sys.path
            for entry in reversed(value.split(os.pathsep)):
                monkeypatch.syspath_prepend(str((cwd / entry).resolve()))
        else:
            monkeypatch.setenv(name, value)
        words = words[1:]
    return words


def _option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.parametrize("command", _command_params())
def test_documented_command(command: str, workdir: Path, site: Path, tiny_model_dir: Path,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(site))  # the reader has run the document's pip install
    words = _apply_prefix(shlex.split(command), workdir, monkeypatch)
    assert words[0] == "drift"
    args = words[1:]
    if args[0] in ("rollout", "run"):
        assert "--model" not in args, "the document's commands use the default model; the test swaps in its own"
        args += ["--model", str(tiny_model_dir)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, f"{command}\n{result.output}\n{result.exception!r}"

    if args[0] == "envs":
        rows = table_rows(result.output)
        for row in doc_envs_table():
            assert row in rows, f"documented row {row} not in:\n{result.output}"
    elif args[0] == "rollout":
        out = workdir / _option(args, "--out")
        records = read_trajectories(out)
        num_prompts, n, max_turns = (int(_option(args, flag)) for flag in ("--num-prompts", "--n", "--max-turns"))
        assert len(records) == num_prompts * n
        env_spec = _option(args, "--env")
        assert {r.env_id for r in records} == {resolve_env_id(env_spec)}
        groups: dict[str, list] = {}
        for record in records:
            groups.setdefault(record.prompt_id, []).append(record)
            assert 1 <= record.num_turns <= max_turns
            assert len(record.turn_tokens) == record.num_turns
            assert record.messages[-1]["role"] == "assistant"
            assert record.model == str(tiny_model_dir) and record.gold
        assert len(groups) == num_prompts
        for members in groups.values():
            assert sorted(r.sample_index for r in members) == list(range(n))
            first_user = {next(m["content"] for m in r.messages if m["role"] == "user") for r in members}
            assert len(first_user) == 1  # a group starts from one prompt
        assert out.with_suffix(".summary.json").exists()
    elif args[0] == "run":
        run_dir = workdir / _option(args, "--out")
        for name in ("trajectories.jsonl", "weighted.jsonl", "metrics.json", "eval_base.jsonl", "eval_trained.jsonl"):
            assert (run_dir / name).exists(), name
        assert {r.env_id for r in read_trajectories(run_dir / "trajectories.jsonl")} == {"word/Word-v0"}
        assert {r.prompt_id for r in read_trajectories(run_dir / "eval_base.jsonl")}.isdisjoint(
            {r.prompt_id for r in read_trajectories(run_dir / "trajectories.jsonl")})
    else:
        pytest.fail(f"the test does not know how to check 'drift {args[0]}'")
