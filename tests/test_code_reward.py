"""The code environment's reward contract: solving sooner is never worth less, no failure outscores a solve.

Episodes are played through ``CodeFeedbackEnv.step`` (its parsing, penalties, partial credit and
episode record) and scored with the return weighting uses (``WeighConfig.return_of``). The
property tests replace only the sandbox run with a scripted one (a reply ``return k`` passes k of
the 4 tests), so hypothesis can play thousands of episodes; the last tests play the issue's
examples through the real sandbox.
"""

from __future__ import annotations

import math
import re
import sys
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drift_algos.records import Trajectory
from drift_algos.returns import discounted_return, group_weights
from drift_algos.weighting import WeighConfig
from drift_envs.code.env import CodeFeedbackEnv
from drift_envs.code.problems import CodeProblem, CodeTest
from drift_envs.code.sandbox import CaseResult, SuiteResult

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox needs Linux")

LEVELS = 4
PROBLEM = CodeProblem(
    id="test/level", question="Write level() returning 4.", answer="def level():\n    return 4\n", source="test",
    entry_point="level", tests=tuple(CodeTest(f"assert level() >= {i}", f"assert level() >= {i}")
                                     for i in range(1, LEVELS + 1)),
)


def scripted_suite(solution: str, tests, **_kwargs) -> SuiteResult:
    """What the sandbox reports for ``def level(): return k``: the first k tests pass."""
    match = re.search(r"return (\d+)", solution)
    level = int(match.group(1)) if match else 0
    return SuiteResult(tuple(CaseResult(i, i < level, "" if i < level else "AssertionError", got=str(level))
                             for i in range(len(tests))))


def reply(kind: str, level: int, variant: int) -> str:
    """A reply of the given form whose code passes ``level`` tests; ``variant`` makes it a different answer."""
    code = f"def level():\n    x{variant} = {variant}\n    return {level}\n"
    return {"fenced": f"```python\n{code}```", "unclosed": f"```python\n{code}", "empty": "```python\n```"}[kind]


def play(env: CodeFeedbackEnv, turns) -> tuple[Trajectory, list[float], list[float | None]]:
    """Play ``turns`` (stopping when the episode ends); the record, the step rewards and the pass rates."""
    env.reset(options={"problem_index": 0})
    messages, rewards, rates = [{"role": "user", "content": "Write level()."}], [], []
    info: dict = {}
    for kind, level, variant in turns:
        text = reply(kind, level, variant)
        observation, reward, terminated, truncated, info = env.step(text)
        messages += [{"role": "assistant", "content": text}, {"role": "user", "content": observation}]
        rewards.append(reward)
        rates.append(info.get("pass_rate"))
        if terminated or truncated:
            break
    stats = info["episode"]
    record = Trajectory(prompt_id=PROBLEM.id, messages=messages[:-1], verifier=stats.verifier,
                        turn_rewards=stats.turn_rewards, answer_norms=stats.answer_norms,
                        format_penalty=stats.format_penalty, t_star=stats.t_star,
                        repetition_penalty=stats.repetition_penalty, success=stats.success)
    return record, rewards, rates


_kinds = st.sampled_from(["fenced", "fenced", "unclosed", "empty"])
_turn = st.tuples(_kinds, st.integers(0, LEVELS), st.integers(0, 2))
_failing_turn = st.tuples(_kinds, st.integers(0, LEVELS - 1), st.integers(0, 2))
_settings = st.fixed_dictionaries({
    "max_turns": st.integers(1, 6), "max_actions": st.integers(1, 6),
    "format_penalty": st.sampled_from([0.0, -0.1, -0.5]), "repetition_lambda": st.sampled_from([0.0, 0.5, 2.0]),
})
_gamma = st.floats(min_value=1e-3, max_value=1.0) | st.just(1.0)
"""Discounts the toolkit accepts, down to 1e-3: far below it gamma**(T-1) underflows float64 at the turn limit."""


def _episode(settings_: dict, data) -> list:
    """Enough turns to end the episode: successes come from the turn strategy, failures otherwise."""
    return data.draw(st.lists(_turn, min_size=settings_["max_turns"], max_size=settings_["max_turns"]))


def _check_one(record: Trajectory, rewards: list[float], rates: list, cfg: dict, gamma: float, credit: float) -> None:
    weigh = WeighConfig(gamma=gamma, repetition_lambda=cfg["repetition_lambda"])
    total = weigh.return_of(record)
    score = discounted_return(record.turn_rewards, gamma)
    penalties = record.format_penalty - record.repetition_penalty
    assert total == pytest.approx(score + penalties, abs=1e-12)
    # The rewards add up: the Gymnasium rewards sum to the return at gamma = 1.
    undiscounted = WeighConfig(gamma=1.0, repetition_lambda=cfg["repetition_lambda"]).return_of(record)
    assert math.fsum(rewards) == pytest.approx(undiscounted, abs=1e-12)
    if record.success:
        assert score == pytest.approx(gamma ** (record.t_star - 1), rel=1e-12)
    else:
        best = max((rate for rate in rates if rate is not None), default=0.0)
        assert score == pytest.approx(credit * best * gamma ** (cfg["max_turns"] - 1), rel=1e-12, abs=1e-300)
    assert total <= 1.0 + 1e-12
    if total == pytest.approx(1.0):  # the best episode there is: a solve without penalties, at once unless gamma ~ 1
        # (a later solve scores gamma ** (t - 1), within approx's tolerance of 1 only when gamma is too)
        assert record.success and penalties == 0 and (record.t_star == 1 or gamma == pytest.approx(1.0))


def _check_pair(a: tuple, b: tuple, gamma: float) -> None:
    """Ordering between two episodes of one group: (record, total, score, penalties) each."""
    (ra, ta, sa, pa), (rb, tb, sb, pb) = a, b
    if ra.success and not rb.success:
        assert sa > sb
        if pa >= pb:
            assert ta > tb
            weights = group_weights([ta, tb], 0.1)
            assert weights[0] > weights[1]
    if ra.success and rb.success and ra.t_star < rb.t_star:
        assert sa >= sb and (sa > sb or gamma == 1.0)
        if pa >= pb:
            assert ta >= tb - 1e-12


def _scored(record: Trajectory, cfg: dict, gamma: float) -> tuple:
    weigh = WeighConfig(gamma=gamma, repetition_lambda=cfg["repetition_lambda"])
    return (record, weigh.return_of(record), discounted_return(record.turn_rewards, gamma),
            record.format_penalty - record.repetition_penalty)


@settings(max_examples=400, deadline=None)
@given(cfg=_settings, gamma=_gamma, data=st.data())
def test_solving_sooner_never_pays_less_and_no_failure_outscores_a_solve(cfg, gamma, data):
    env = CodeFeedbackEnv(problems=[PROBLEM], **cfg)
    credit = getattr(env.config, "partial_credit", 0.0)
    with mock.patch("drift_envs.code.env.run_suite", scripted_suite):
        played = [play(env, _episode(cfg, data)) for _ in range(2)]
        # A failure that uses every turn at its best partial score, against the pair above.
        worst_case = [("fenced", LEVELS - 1, v % 3) for v in range(cfg["max_turns"])]
        played.append(play(env, worst_case))
    for record, rewards, rates in played:
        _check_one(record, rewards, rates, cfg, gamma, credit)
    scored = [_scored(record, cfg, gamma) for record, _, _ in played]
    for a in scored:
        for b in scored:
            _check_pair(a, b, gamma)


@settings(max_examples=200, deadline=None)
@given(cfg=_settings, gamma=_gamma, credit=st.floats(0.0, 1.0), failing=st.data(), solve_turn=st.integers(1, 6))
def test_every_failure_is_below_every_solve_for_any_partial_credit(cfg, gamma, credit, failing, solve_turn):
    env = CodeFeedbackEnv(problems=[PROBLEM], partial_credit=credit, **cfg)
    turns = failing.draw(st.lists(_failing_turn, min_size=cfg["max_turns"], max_size=cfg["max_turns"]))
    solve_turn = min(solve_turn, cfg["max_turns"], cfg["max_actions"])
    late_solve = [("fenced", LEVELS - 1, t % 3) for t in range(solve_turn - 1)]
    late_solve.append(("fenced", LEVELS, 0))
    with mock.patch("drift_envs.code.env.run_suite", scripted_suite):
        failure, solve = play(env, turns), play(env, late_solve)
    assert not failure[0].success and solve[0].success and solve[0].t_star == solve_turn
    _check_one(*failure, cfg, gamma, credit)
    _check_one(*solve, cfg, gamma, credit)
    scored_failure, scored_solve = _scored(failure[0], cfg, gamma), _scored(solve[0], cfg, gamma)
    assert scored_solve[2] > scored_failure[2]  # the scores, penalties aside
    _check_pair(scored_solve, scored_failure, gamma)


def test_partial_credit_must_be_a_share():
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="partial_credit"):
            CodeFeedbackEnv(problems=[PROBLEM], partial_credit=bad)


def test_credit_sits_at_the_turn_limit_when_the_action_limit_ends_the_episode():
    env = CodeFeedbackEnv(problems=[PROBLEM], max_turns=4, max_actions=2)
    with mock.patch("drift_envs.code.env.run_suite", scripted_suite):
        record, rewards, rates = play(env, [("fenced", 1, 0), ("fenced", 3, 1)])
    assert rates == [0.25, 0.75] and record.num_turns == 2
    assert record.turn_rewards == {"t1": 0.0, "t2": 0.0, "t3": 0.0, "t4": pytest.approx(0.5 * 0.75)}
    assert rewards == [0.0, pytest.approx(0.375)]


# -- the examples, through the real sandbox ---------------------------------------------------


def test_a_wrong_then_right_answer_returns_less_than_solving_at_once():
    env = CodeFeedbackEnv(problems=[PROBLEM])
    at_once, _, _ = play(env, [("fenced", LEVELS, 0)])
    wrong_then_right, rewards, rates = play(env, [("fenced", 1, 0), ("fenced", LEVELS, 1)])
    assert rates == [0.25, 1.0] and rewards == [0.0, 1.0]
    weigh = WeighConfig(gamma=0.9)
    assert weigh.return_of(at_once) == 1.0
    assert weigh.return_of(wrong_then_right) == pytest.approx(0.9)  # the old reward: 0.25 + 0.9 = 1.15


def test_five_near_misses_weigh_far_less_than_a_first_turn_solve():
    env = CodeFeedbackEnv(problems=[PROBLEM])
    solve, _, _ = play(env, [("fenced", LEVELS, 0)])
    misses, rewards, rates = play(env, [("fenced", LEVELS - 1, v) for v in range(5)])
    assert rates == [0.75] * 5 and not misses.success
    weigh = WeighConfig(gamma=0.9, beta=0.1)
    near = weigh.return_of(misses)
    assert near == pytest.approx(0.5 * 0.75 * 0.9 ** 4)  # 0.246; the old reward gave 3.07
    assert math.fsum(rewards) == pytest.approx(0.5 * 0.75)
    weights = group_weights([weigh.return_of(solve), near], 0.1)
    assert weights[0] / weights[1] == pytest.approx(math.exp((1.0 - near) / 0.1))  # e^7.5 for the solve
