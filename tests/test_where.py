"""`--where`: comparisons over input names, and one line naming the problem for anything else."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.errors import ComfysweepError
from orchestrator.where import WhereError, parse, select

MODEL = "community/wan-2-2/vace-fun"


@dataclass(frozen=True)
class Job:
    key: str
    inputs: dict[str, Any]
    model_id: str = MODEL
    state: str = "pending"
    tags: list[str] = field(default_factory=list)


def jobs() -> list[Job]:
    """A 2 x 3 x 2 grid of cfg, steps and seed, by raw field names as the store keeps them."""
    out = []
    for cfg in (4.5, 7):
        for steps in (4, 8, 12):
            for seed in (1, 2):
                raw = {"108_cfg": cfg, "47_value": steps, "98_seed": seed, "56_text": "a fox"}
                out.append(Job(f"{cfg}-{steps}-{seed}", raw))
    return out


def keys(where: str) -> list[str]:
    return [job.key for job in select(where, jobs(), lambda job: True)]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("cfg>=5 and steps==8", ["7-8-1", "7-8-2"]),
        ("cfg < 5 and steps > 4 and seed == 2", ["4.5-8-2", "4.5-12-2"]),
        ("(steps == 4 or steps == 12) and not cfg >= 5 and seed != 1", ["4.5-4-2", "4.5-12-2"]),
        ("steps in [4, 12] and seed == 1 and cfg == 7", ["7-4-1", "7-12-1"]),
        ("steps not in [4, 12] and cfg <= 4.5", ["4.5-8-1", "4.5-8-2"]),
        ("108_cfg == 7 and 47_value == 4 and 98_seed == 1", ["7-4-1"]),  # raw field names
        ("prompt == 'a fox' and seed == 2 and steps == 4", ["4.5-4-2", "7-4-2"]),
        ('prompt != "a fox"', []),
        # "and" binds tighter than "or"
        ("seed == 1 or seed == 2 and cfg == 100", list(keys("seed == 1"))),
    ],
)
def test_a_filter_picks_the_jobs_whose_inputs_match(where: str, expected: list[str]) -> None:
    assert keys(where) == expected


def test_pick_narrows_before_the_filter_and_the_order_is_the_jobs() -> None:
    chosen = select("steps == 8", jobs(), lambda job: job.inputs["98_seed"] == 2)
    assert [job.key for job in chosen] == ["4.5-8-2", "7-8-2"]
    assert [job.key for job in select(None, jobs(), lambda job: job.key.endswith("-4-1"))] == [
        "4.5-4-1",
        "7-4-1",
    ]


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (
            "cfg >>= 5",
            "--where 'cfg >>= 5': column 6: expected a value after '>' "
            "(a number, a 'string', true or false), found '>='",
        ),
        ("cfg = 5", "--where 'cfg = 5': column 5: unexpected '=' (== compares)"),
        (
            "cfg >= 5 and",
            "--where 'cfg >= 5 and': column 13: expected an input name (cfg, steps, seed, ...), "
            "found the end",
        ),
        ("(cfg >= 5", "--where '(cfg >= 5': column 10: expected ')', found the end"),
        (
            "cfg >= 5 steps",
            "--where 'cfg >= 5 steps': column 10: expected 'and', 'or' or the end, found 'steps'",
        ),
        (
            "seed in 1",
            "--where 'seed in 1': column 9: expected '[' and a list of values, found '1'",
        ),
        ("cfg > 'x", '--where "cfg > \'x": column 7: unexpected "\'"'),
    ],
)
def test_bad_syntax_is_one_line_with_the_column(where: str, message: str) -> None:
    with pytest.raises(WhereError) as caught:
        parse(where)
    assert str(caught.value) == message


def test_an_unknown_name_says_which_exist_and_the_closest() -> None:
    with pytest.raises(WhereError) as caught:
        keys("cgf >= 5")
    assert str(caught.value) == (
        "--where 'cgf >= 5': column 1: no input named 'cgf' (did you mean 'cfg'?); "
        "the jobs have: cfg, prompt, seed, steps"
    )


def test_a_string_compared_to_a_number_is_refused() -> None:
    with pytest.raises(WhereError) as caught:
        keys("steps == 8 and cfg > 'high'")
    assert str(caught.value) == (
        "--where \"steps == 8 and cfg > 'high'\": column 16: cfg is a number in this sweep's "
        "jobs, compared with the string 'high'"
    )
    with pytest.raises(WhereError, match=r"prompt is a string .* compared with the number 3"):
        keys("prompt in ['a', 3]")


def test_nesting_has_a_bound_not_a_stack_overflow() -> None:
    assert parse("(" * 60 + "cfg > 1" + ")" * 60)
    with pytest.raises(WhereError, match="at most 64 levels of nesting"):
        parse("(" * 1000 + "cfg > 1" + ")" * 1000)
    with pytest.raises(WhereError, match="at most 64 levels of nesting"):
        parse("not " * 500 + "cfg > 1")


NAMES = st.sampled_from(["cfg", "steps", "seed", "prompt", "108_cfg", "x"])
ATOMS = st.one_of(
    NAMES,
    st.sampled_from(["==", "!=", "<", "<=", ">", ">=", "in", "not", "and", "or", "(", ")", "["]),
    st.sampled_from(["]", ",", "true", "false", "'a fox'", '"x', "-1.5e3", "7", ".5", "1e999"]),
    st.text(max_size=4),
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=60), st.lists(ATOMS, max_size=14).map(" ".join)))
def test_any_text_is_a_filter_or_one_line_error(text: str) -> None:
    """Whatever is typed: a filter that runs on every job, or a WhereError of one line."""
    try:
        chosen = select(text, jobs(), lambda job: True)
    except WhereError as exc:
        message = str(exc)
        assert "\n" not in message
        assert "\r" not in message
        assert message.startswith("--where ")
        assert issubclass(WhereError, ComfysweepError)
        return
    assert isinstance(chosen, list)
