"""Task: the verifier on right / wrong / malformed answers, the split, and the reward as TRL calls it."""

import inspect

import pytest

from helpers.lib import tasks

TASK = dict(operands=3, max_value=50, ops="+-", chain=True, train_size=300, heldout_size=40, seed=7)


@pytest.mark.parametrize(
    "completion,ok",
    [
        ("-11", True),
        ("19-30=-11", True),
        (" -11 ", True),
        ("11", False),
        ("19-30=-12", False),
        ("-11=19", False),
        ("", False),
        ("-", False),
        ("19-30=", False),
        ("1-1", False),
        ("--11", False),
        ("-11x", False),
    ],
)
def test_verifier(completion, ok):
    assert tasks.is_correct(completion, -11) is ok


def test_parse_answer_malformed_is_none():
    assert tasks.parse_answer("12+") is None
    assert tasks.parse_answer("7=08") == 8


def test_solutions_are_correct_and_chains_are_worked():
    train, heldout = tasks.split(TASK)
    for it in train + heldout:
        assert eval(it.prompt[:-1]) == it.answer  # the prompt is a Python expression plus "="
        assert tasks.is_correct(it.solution, it.answer)
        assert it.solution.count("=") == TASK["operands"] - 2  # one partial result per extra operand


def test_chain_example():
    assert tasks._solution([12, 7, 30], ["+", "-"], chain=True) == (-11, "19-30=-11")
    assert tasks._solution([12, 7, 30, 1], ["+", "-", "+"], chain=True) == (-10, "19-30+1=-11+1=-10")
    assert tasks._solution([12, 7, 30], ["+", "-"], chain=False) == (-11, "-11")


def test_split_is_deterministic_and_disjoint():
    train, heldout = tasks.split(TASK)
    again = tasks.split(TASK)
    assert (train, heldout) == again
    assert len(train) == 300 and len(heldout) == 40
    assert len({it.prompt for it in heldout}) == 40
    assert not {it.prompt for it in train} & {it.prompt for it in heldout}
    other = tasks.split({**TASK, "seed": 8})
    assert other[1] != heldout


def test_reward_as_trl_calls_it():
    # GRPOTrainer: reward_func(prompts=, completions=, completion_ids=, **dataset columns, trainer_state=, log_extra=,
    # log_metric=) -> one float per completion
    params = inspect.signature(tasks.reward).parameters
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    out = tasks.reward(
        prompts=["1+2+3=", "5-9+1="],
        completions=["3+3=6", "oops"],
        completion_ids=[[1], [2]],
        answer=[6, -3],
        trainer_state=None,
        log_extra=lambda *a: None,
        log_metric=lambda *a: None,
    )
    assert out == [1.0, 0.0]


def test_slip_corrupts_only_train_demonstrations():
    clean_train, clean_heldout = tasks.split({**TASK, "chain": False})
    train, heldout = tasks.split({**TASK, "chain": False, "slip": 0.5})
    assert heldout == clean_heldout and [it.prompt for it in train] == [it.prompt for it in clean_train]
    wrong = [it for it in train if not tasks.is_correct(it.solution, it.answer)]
    assert 0.35 < len(wrong) / len(train) < 0.65
    for it in wrong:  # the slip: the last operand is forgotten
        head = it.prompt[:-1].rstrip("0123456789")[:-1]
        assert int(it.solution) == eval(head)


def test_split_refuses_a_heldout_set_as_large_as_the_task():
    with pytest.raises(ValueError, match="only 32 distinct problems"):
        tasks.split({**TASK, "operands": 2, "max_value": 4, "heldout_size": 32})
