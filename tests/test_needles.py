from __future__ import annotations

import re

import pytest

from ragctx import RagctxError
from ragctx.tasks import KINDS, NeedleTask, string_match_all
from ragctx.tasks.needles import NEEDLE


@pytest.fixture(scope="module")
def essays():
    return NeedleTask("essays", seed=7)


def needle_pairs(context: str) -> list[tuple[str, str]]:
    pattern = re.escape(NEEDLE).replace(r"\{key\}", r"(\S+)").replace(r"\{value\}", r"(\S+?)")
    return re.findall(pattern, context)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("length", [600, 2000, 16000])
def test_examples_fit_the_length_and_answer_from_the_needles(essays, kind, length):
    for i in range(5):
        ex = essays.example(i, length=length, kind=kind)
        size = len(ex.prompt.encode())
        assert length * 0.95 <= size <= length, (size, length)
        pairs = needle_pairs(ex.context)
        assert [ex.context[a:b] for a, b in ex.needle_spans] == [NEEDLE.format(key=k, value=v) for k, v in pairs]
        values = {}
        for k, v in pairs:
            values.setdefault(k, []).append(v)
        assert all(k in ex.question for k in ex.keys)
        expected = [v for k in ex.keys for v in values[k]]
        assert ex.answers == expected
        assert ex.target == " " + ", ".join(expected)
        assert ex.prompt.endswith("\nAnswer:") and ex.question in ex.prompt
        if kind == "multikey":
            assert len(values) == 4 and len(ex.keys) == 1
        if kind == "multivalue":
            assert len(values) == 1 and len(ex.answers) == 4
        if kind == "multiquery":
            assert len(ex.keys) == 4 and len(set(ex.answers)) == 4


@pytest.mark.parametrize("kind", KINDS)
def test_unanswerable_questions_ask_for_an_absent_key(essays, kind):
    ex = essays.example(3, length=1500, kind=kind, unanswerable=True)
    assert ex.answers == ["unanswerable"] and not ex.answerable
    assert ex.keys[0] in ex.question and ex.keys[0] not in ex.context
    assert needle_pairs(ex.context)  # the distractor needles are still there


def test_needles_sit_near_the_requested_depth(essays):
    for depth in (0.0, 0.25, 0.5, 0.75, 1.0):
        ex = essays.example(0, length=8000, depth=depth)
        start = ex.needle_spans[0][0] / len(ex.context)
        assert abs(start - depth) < 0.08, (depth, start)


def test_reproducible_and_seeded(essays):
    a = essays.example(4, length=3000, kind="multikey")
    assert essays.example(4, length=3000, kind="multikey") == a
    assert NeedleTask("essays", seed=7).example(4, length=3000, kind="multikey") == a
    assert NeedleTask("essays", seed=8).example(4, length=3000, kind="multikey") != a
    assert essays.example(5, length=3000, kind="multikey") != a


def test_other_haystacks_and_token_counts(tmp_path):
    repeat = NeedleTask("repeat", seed=0).example(0, length=1000)
    assert "The grass is green." in repeat.context and len(needle_pairs(repeat.context)) == 1
    (tmp_path / "a.txt").write_text("Alpha beta gamma. Delta epsilon zeta. " * 50)
    folder = NeedleTask(tmp_path, seed=0).example(0, length=900)
    assert "Delta epsilon zeta." in folder.context
    words = NeedleTask("essays", seed=0, count=lambda s: len(s.split())).example(0, length=300)
    assert len(words.prompt.split()) <= 300


@pytest.mark.parametrize("kwargs,match", [
    (dict(length=50), "length=50 is too short for a single example"),
    (dict(length=1000, kind="needle"), "unknown"),
    (dict(length=1000, depth=1.5), "depth"),
])
def test_bad_arguments(essays, kwargs, match):
    with pytest.raises(RagctxError, match=match):
        essays.example(0, **kwargs)
    with pytest.raises(RagctxError, match="haystack"):
        NeedleTask("/no/such/folder")


def test_string_match_all():
    assert string_match_all("The numbers are 123 and 456.", ["123", "456"]) == 1.0
    assert string_match_all("only 123", ["123", "456"]) == 0.5
    assert string_match_all("UNANSWERABLE", ["unanswerable"]) == 1.0
    assert string_match_all("", ["1"]) == 0.0
    with pytest.raises(RagctxError):
        string_match_all("x", [])


def test_min_lengths_hold_every_kind_in_the_worst_case():
    from ragctx.tasks.needles import MIN_LENGTH, kinds_for

    task = NeedleTask("essays", seed=3)
    for kind, length in MIN_LENGTH.items():
        for i in range(40):  # random keys and value types: each must fit
            task.example(i, length=length, kind=kind, value_type="uuid", unanswerable=i % 2 == 1)
    assert kinds_for(300) == ["single"] and kinds_for(700) == ["single", "multikey", "multivalue"]
