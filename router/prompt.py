"""Prompt building for Ask (pure: no grpc).

Passages are ordered by score, numbered [1], [2], ... and included while they fit the model's context
minus the answer budget; token counts come from the generator's own tokenizer (passed in as numbers,
so this module stays pure). The ids of the included passages, in order, are the citations.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ragcluster.errors import InvalidArgument

DEFAULT_SYSTEM = (
    "You are a helpful assistant. Answer the question using only the numbered passages. "
    "Cite the passages you use by their number in square brackets, like [1]. "
    "If the passages do not contain the answer, say you do not know."
)
DEFAULT_PASSAGE = "[{n}] {title}\n{text}"
DEFAULT_USER = "Passages:\n{passages}\n\nQuestion: {question}"


@dataclass
class PromptTemplate:
    system: str = DEFAULT_SYSTEM
    passage: str = DEFAULT_PASSAGE  # fields: n, id, title, text, score
    user: str = DEFAULT_USER  # fields: passages, question
    separator: str = "\n\n"

    def check(self) -> None:
        """Fail at start-up (not at the first Ask) on a template with unknown fields."""
        try:
            self.format_passage(1, Passage("id", "text", "title", 0.5))
            self.messages("question", ["passage"])
        except (KeyError, IndexError, ValueError) as exc:
            raise InvalidArgument(f"prompt template: {exc!r} (see --help for the fields each template takes)") from exc

    def format_passage(self, n: int, passage: Passage) -> str:
        title = passage.title or passage.id
        return self.passage.format(n=n, id=passage.id, title=title, text=passage.text, score=passage.score)

    def messages(self, question: str, formatted_passages: list[str]) -> list[dict[str, str]]:
        passages = self.separator.join(formatted_passages) if formatted_passages else "(no passages)"
        out = []
        if self.system:
            out.append({"role": "system", "content": self.system})
        out.append({"role": "user", "content": self.user.format(passages=passages, question=question)})
        return out


@dataclass
class Passage:
    id: str
    text: str
    title: str = ""
    score: float = 0.0


@dataclass
class Prompt:
    messages: list[dict[str, str]]
    citations: list[str] = field(default_factory=list)  # ids of included passages, numbered from 1
    prompt_tokens: int = 0
    token_ids: list[int] | None = None  # the templated prompt's ids, when counted with the node's own tokenizer


def order_passages(passages: list[Passage]) -> list[Passage]:
    return sorted(passages, key=lambda p: -p.score)


def select_passages(base_tokens: int, passage_tokens: list[int], budget: int, separator_tokens: int = 2) -> list[int]:
    """Indices of passages to include, in order, so that the estimate stays within ``budget``.

    Greedy by rank: a passage that does not fit is skipped and later (shorter) ones are still tried.
    """
    if base_tokens > budget:
        raise InvalidArgument(
            f"question: the prompt needs {base_tokens} tokens without passages, over the budget of {budget}"
        )
    used, chosen = base_tokens, []
    for i, n in enumerate(passage_tokens):
        cost = n + separator_tokens
        if used + cost <= budget:
            chosen.append(i)
            used += cost
    return chosen


def answer_budget(max_context: int, max_tokens: int) -> int:
    budget = max_context - max_tokens
    if budget <= 0:
        raise InvalidArgument(
            f"sampling.max_tokens: {max_tokens} leaves no room for the prompt in a context of {max_context}"
        )
    return budget
