import pytest

from ragcluster.errors import InvalidArgument
from router.prompt import Passage, PromptTemplate, answer_budget, order_passages, select_passages


def test_select_fits_budget_in_rank_order_and_skips_too_long():
    # base 100, budget 400: 150+2 fits, 300+2 does not, 100+2 fits, 50+2 does not any more
    chosen = select_passages(100, [150, 300, 100, 50], 400)
    assert chosen == [0, 2]
    used = 100 + sum([150, 100][i] + 2 for i in range(2))
    assert used <= 400


def test_select_never_exceeds_budget_randomised():
    import random

    rng = random.Random(7)
    for _ in range(500):
        counts = [rng.randint(1, 400) for _ in range(rng.randint(0, 12))]
        base, budget = rng.randint(0, 300), rng.randint(300, 2000)
        chosen = select_passages(base, counts, budget)
        assert base + sum(counts[i] + 2 for i in chosen) <= budget
        assert chosen == sorted(chosen)


def test_question_alone_too_long():
    with pytest.raises(InvalidArgument, match="question"):
        select_passages(500, [10], 400)


def test_answer_budget():
    assert answer_budget(2048, 256) == 1792
    with pytest.raises(InvalidArgument, match="max_tokens"):
        answer_budget(2048, 2048)


def test_template_numbers_and_citations_match():
    passages = order_passages([Passage("b", "text b", "B", 0.2), Passage("a", "text a", "", 0.9)])
    assert [p.id for p in passages] == ["a", "b"]
    t = PromptTemplate()
    formatted = [t.format_passage(i + 1, p) for i, p in enumerate(passages)]
    assert formatted[0].startswith("[1] a\ntext a")  # a passage without a title shows its id
    assert formatted[1].startswith("[2] B\ntext b")
    messages = t.messages("why?", formatted)
    assert messages[0]["role"] == "system" and "[1]" in messages[0]["content"]
    assert "[1] a" in messages[1]["content"] and "Question: why?" in messages[1]["content"]
    assert "(no passages)" in t.messages("why?", [])[1]["content"]


def test_bad_template_fails_at_startup():
    PromptTemplate().check()
    with pytest.raises(InvalidArgument, match="prompt template"):
        PromptTemplate(passage="[{n}] {missing}").check()
    with pytest.raises(InvalidArgument, match="prompt template"):
        PromptTemplate(user="{question} {0}").check()
