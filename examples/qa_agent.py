"""Multi-hop question answering: an agent that searches a small local corpus, hop by hop.

    python examples/qa_agent.py                         # offline, scripted model, ~2 s
    python examples/qa_agent.py --base-url http://localhost:8000/v1 --model Qwen/Qwen2.5-7B-Instruct

The search tool ranks the shipped corpus (examples/data/qa_corpus.jsonl) with BM25.  Each question
needs two searches, the second built from what the first found.  Offline, the scripted model
issues each hop's query and pulls the entity it needs out of the search results with the hop's
pattern, so a wrong ranking gives a wrong answer.  Runs with ``stream`` (sync, token streaming).
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from _common import (
    DATA,
    chat_model,
    middleware,
    open_registry,
    parse_args,
    print_hints,
    print_stats,
)
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool

SYSTEM = (
    "Answer questions about the documents reachable with the search tool. Questions need several "
    "searches: search, read, then search again for what you learned. Finish with 'Answer: <answer>'."
)
_WORD = re.compile(r"[a-z0-9]+")
_STOP = frozenset(
    [
        "a",
        "an",
        "and",
        "the",
        "of",
        "in",
        "on",
        "at",
        "to",
        "is",
        "was",
        "by",
        "for",
        "its",
        "it",
        "who",
        "which",
        "what",
        "where",
    ]
)


@dataclass(frozen=True, slots=True)
class Document:
    title: str
    text: str


class BM25:
    """Okapi BM25 over title + text (k1 = 1.5, b = 0.75)."""

    def __init__(self, docs: Sequence[Document], *, k1: float = 1.5, b: float = 0.75) -> None:
        self.docs = list(docs)
        self.k1, self.b = k1, b
        self.terms = [Counter(_tokens(f"{d.title} {d.text}")) for d in self.docs]
        self.avg_len = sum(sum(t.values()) for t in self.terms) / len(self.terms)
        df = Counter(term for terms in self.terms for term in terms)
        n = len(self.docs)
        self.idf = {t: math.log(1 + (n - f + 0.5) / (f + 0.5)) for t, f in df.items()}

    def search(self, query: str, k: int = 2) -> list[Document]:
        scores = []
        for i, terms in enumerate(self.terms):
            length = sum(terms.values())
            score = 0.0
            for term in set(_tokens(query)):
                tf = terms.get(term, 0)
                if tf:
                    norm = tf + self.k1 * (1 - self.b + self.b * length / self.avg_len)
                    score += self.idf[term] * tf * (self.k1 + 1) / norm
            scores.append((score, -i))
        best = sorted(scores, reverse=True)[:k]
        return [self.docs[-i] for score, i in best if score > 0]


def _tokens(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOP]


def load_jsonl(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines() if line.strip()]


INDEX = BM25([Document(d["title"], d["text"]) for d in load_jsonl("qa_corpus.jsonl")])


@tool
def search(query: str) -> str:
    """Search the encyclopedia; returns the two best-matching articles."""
    hits = INDEX.search(query)
    return "\n".join(f"[{d.title}] {d.text}" for d in hits) or "no results"


def hop_script(questions: Sequence[dict[str, Any]]) -> Callable[[list[BaseMessage]], AIMessage]:
    """Offline model: search each hop's query, filled with what earlier hops extracted."""
    hops = {q["question"]: q["hops"] for q in questions}

    def script(messages: list[BaseMessage]) -> AIMessage:
        question = str(next(m.content for m in messages if isinstance(m, HumanMessage)))
        results = [str(m.content) for m in messages if isinstance(m, ToolMessage)]
        plan = hops[question]
        found: list[str] = []
        for hop, result in zip(plan, results, strict=False):
            match = re.search(hop["extract"], result)
            if match is None:
                return AIMessage(content="Answer: unknown")
            found.append(match.group(1))
        if len(results) < len(plan):
            query = plan[len(results)]["query"].format(*found)
            call = {"name": "search", "args": {"query": query}, "id": f"s{len(results)}"}
            return AIMessage(content="", tool_calls=[call])
        return AIMessage(content=f"Answer: {found[-1]}")

    return script


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("Multi-hop question answering over a local corpus.", argv)
    questions = load_jsonl("qa_questions.jsonl")[: args.limit]
    with open_registry(args) as registry:
        registry.register(search, duration_hint=0.01, api_type="search")
        model = chat_model(args, hop_script(questions))
        agent = create_agent(
            model, [search], system_prompt=SYSTEM, middleware=middleware(args, registry, "qa")
        )
        correct = 0
        for i, item in enumerate(questions):
            config: Any = {"configurable": {"thread_id": f"qa-{i}"}}
            final = ""  # stream tokens as they come; keep the last full state's answer
            for kind, chunk in agent.stream(
                {"messages": [HumanMessage(item["question"])]},
                config,
                stream_mode=["messages", "values"],
            ):
                if kind == "values":
                    final = str(chunk["messages"][-1].content)
            answer = final.split("Answer:")[-1].strip().rstrip(".")
            ok = answer.lower() == item["answer"].lower()
            correct += ok
            print(f"[{'ok' if ok else 'XX'}] {item['question']} -> {answer}")
        print(f"answered {correct}/{len(questions)}")
        print_hints(model)
        print_stats(registry)
    return 0


if __name__ == "__main__":
    sys.exit(main())
