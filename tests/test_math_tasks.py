import json
import threading

import pytest

from helpers.lib import math_tasks
from helpers.lib.math_tasks import DatasetError, MathItem, is_correct, last_boxed


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so the answer is \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("first \\boxed{1}, then \\boxed{2}", "2"),  # the last one counts
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces balance too
        ("\\boxed{\\sqrt{\\frac{a}{b}} + {c}}", "\\sqrt{\\frac{a}{b}} + {c}"),  # nesting three deep
        ("\\fbox{7}", "7"),
        ("$x = \\boxed{ 3 }$", "3"),
        ("no box here: 42", None),
        ("truncated \\boxed{\\frac{1}{2}", None),  # the last box never closes
        ("\\boxed 5", None),  # only the braced form is an answer
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


@pytest.mark.parametrize(
    "completion, gold",
    [
        ("\\boxed{\\frac{14}{3}}", "\\frac{14}{3}"),
        ("\\boxed{14/3}", "\\frac{14}{3}"),
        ("\\boxed{0.5}", "\\frac{1}{2}"),
        ("\\boxed{\\dfrac12}", "\\frac{1}{2}"),
        ("\\boxed{(3,\\frac{\\pi}{2})}", "(3, \\frac{\\pi}{2})"),
        ("\\boxed{\\sqrt{50}}", "5\\sqrt{2}"),
        ("\\boxed{-q+p}", "p - q"),
        ("\\boxed{204}", 204),  # AIME golds may be integers
        ("\\boxed{\\text{(C)}}", "C"),
        ("wrong first \\boxed{3}, corrected: \\boxed{\\frac{6}{2}}", "3"),
    ],
)
def test_equivalent_answers_are_correct(completion, gold):
    assert is_correct(completion, gold)


@pytest.mark.parametrize(
    "completion, gold",
    [
        ("\\boxed{205}", "204"),
        ("\\boxed{2}", "-2"),
        ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}"),
        ("the answer is 204", "204"),  # no box: wrong, whatever the text says
        ("\\boxed{204} ... on second thought \\boxed{205}", "204"),  # only the last box counts
        ("\\boxed{}", "0"),
        ("\\boxed{\\frac{1}{2}", "\\frac{1}{2}"),  # unclosed
    ],
)
def test_wrong_or_missing_answers_are_not(completion, gold):
    assert not is_correct(completion, gold)


def test_checker_runs_in_a_worker_thread():
    """math-verify's SIGALRM timeout only works in the main thread; elsewhere the checker runs without it."""
    out = {}
    t = threading.Thread(
        target=lambda: out.update(ok=is_correct("\\boxed{\\frac{2}{4}}", "\\frac12"), bad=is_correct("\\boxed{1}", "2"))
    )
    t.start()
    t.join()
    assert out == {"ok": True, "bad": False}


class ChatTokenizer:
    chat_template = "{{ messages }}"

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        assert tokenize is False and add_generation_prompt is True
        return "<user>" + messages[0]["content"] + "<assistant>"


def test_prompt_template():
    bare = math_tasks.format_prompt("What is 1+1?")
    assert bare == "What is 1+1? Let's think step by step and output the final answer within \\boxed{}."
    assert math_tasks.format_prompt("What is 1+1?", ChatTokenizer()) == "<user>" + bare + "<assistant>"

    class NoTemplate:
        chat_template = None

    assert math_tasks.format_prompt("What is 1+1?", NoTemplate()) == bare


def test_items_carry_their_verifier():
    it = math_tasks.make_items([{"problem": "p", "answer": "\\frac{1}{2}"}])[0]
    assert it == MathItem(math_tasks.format_prompt("p"), "\\frac{1}{2}", "p")
    assert it.is_correct("... \\boxed{0.5}") and not it.is_correct("\\boxed{2}")


def test_reward_scores_text_and_conversational_completions():
    comps = ["\\boxed{4}", "\\boxed{5}", [{"role": "assistant", "content": "\\boxed{4}"}]]
    assert math_tasks.reward(["p"] * 3, comps, answer=["4", "4", "4"]) == [1.0, 0.0, 1.0]


ROWS = [
    {"problem": "1+1?", "answer": "2", "solution": "..."},
    {"problem": "2+2?", "answer": "4", "solution": "..."},
    {"problem": "3+3?", "answer": "6", "solution": "..."},
]


def test_local_jsonl_json_and_parquet(tmp_path):
    import pandas as pd

    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in ROWS) + "\n\n")
    (tmp_path / "m.json").write_text(json.dumps(ROWS))
    aime = [{"ID": "2024-I-1", "Problem": r["problem"], "Answer": int(r["answer"])} for r in ROWS]  # AIME casing
    pd.DataFrame(aime).to_parquet(tmp_path / "aime.parquet")
    for name in ("m.jsonl", "m.json", "aime.parquet"):
        items = math_tasks.load_items(tmp_path / name, limit=2)
        assert [(it.problem, it.answer) for it in items] == [("1+1?", "2"), ("2+2?", "4")], name
    custom = math_tasks.load_items(tmp_path / "m.jsonl", problem_field="solution", answer_field="answer")
    assert custom[0].problem == "..." and len(custom) == 3


def test_bad_datasets_name_the_source(tmp_path):
    (tmp_path / "m.jsonl").write_text(json.dumps({"question_text": "q", "answer": "1"}) + "\n")
    with pytest.raises(DatasetError, match=r"m\.jsonl: no problem field problem / Problem / question"):
        math_tasks.load_items(tmp_path / "m.jsonl")
    with pytest.raises(DatasetError, match="no answer field final"):
        math_tasks.load_items(tmp_path / "m.jsonl", problem_field="question_text", answer_field="final")
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(DatasetError, match=r"e\.jsonl: no rows"):
        math_tasks.load_items(tmp_path / "e.jsonl")
    (tmp_path / "broken.jsonl").write_text("{not json\n")
    with pytest.raises(DatasetError, match=r"broken\.jsonl: cannot read"):
        math_tasks.load_items(tmp_path / "broken.jsonl")
    (tmp_path / "d.json").write_text('{"rows": []}')
    with pytest.raises(DatasetError, match="expected a JSON list of rows"):
        math_tasks.load_items(tmp_path / "d.json")
    (tmp_path / "m.csv").write_text("problem,answer\n")
    with pytest.raises(DatasetError, match="unsupported file type '.csv'"):
        math_tasks.load_items(tmp_path / "m.csv")
    with pytest.raises(DatasetError, match="missing.jsonl: not a data file"):
        math_tasks.load_items(tmp_path / "missing.jsonl")


def test_hub_dataset_without_a_hub_is_a_clear_error(monkeypatch):
    import datasets.config
    import huggingface_hub.constants

    # offline mode: the same failure as an unreachable hub, without waiting for network retries
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        DatasetError,
        match="HuggingFaceH4/MATH-500: not a local file, and loading it from the dataset "
        "hub failed .*point math.dataset at the file",
    ):
        math_tasks.load_items("HuggingFaceH4/MATH-500")
