"""Math agent: grade-school word problems solved step by step with a calculator tool.

    python examples/math_agent.py                       # offline, scripted model, ~2 s
    python examples/math_agent.py --base-url http://localhost:8000/v1 --model Qwen/Qwen2.5-7B-Instruct

The calculator really evaluates arithmetic (safely, from the expression's syntax tree); offline,
the scripted model works through each problem's recorded solution steps, feeding earlier results
into later expressions.  Runs with ``invoke`` (sync), one LangGraph thread per problem.
"""

from __future__ import annotations

import ast
import json
import math
import operator
import re
import sys
from collections.abc import Callable, Sequence
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
from langchain_core.tools import ToolException, tool

SYSTEM = (
    "You solve grade-school math word problems. Use the calculator tool for every arithmetic "
    "step, one expression per call. Finish with a line 'Answer: <number>'."
)
_OPERATORS: dict[type, Callable[..., float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def evaluate(expression: str) -> float:
    """Evaluate + - * / // % ** and parentheses over numbers; anything else is refused."""

    def visit(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return visit(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return float(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
            left, right = visit(node.left), visit(node.right)
            if isinstance(node.op, ast.Pow) and abs(right) > 64:
                raise ToolException("exponent too large")
            return _OPERATORS[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
            return _OPERATORS[type(node.op)](visit(node.operand))
        raise ToolException(f"unsupported syntax: {ast.dump(node)[:60]}")

    try:
        value = visit(ast.parse(expression, mode="eval"))
    except (SyntaxError, ZeroDivisionError, OverflowError) as exc:
        raise ToolException(f"cannot evaluate {expression!r}: {exc}") from exc
    if not math.isfinite(value):
        raise ToolException(f"{expression!r} is not a finite number")
    return value


def fmt(value: float) -> str:
    return str(round(value)) if abs(value - round(value)) < 1e-9 else f"{value:.10g}"


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression such as '(12 + 7) * 2 / 5' and return the number."""
    return fmt(evaluate(expression))


calculator.handle_tool_error = True  # a bad expression goes back to the model as an error


def load_problems(limit: int | None) -> list[dict[str, Any]]:
    lines = (DATA / "math_problems.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()][:limit]


def solution_script(problems: Sequence[dict[str, Any]]) -> Callable[[list[BaseMessage]], AIMessage]:
    """Offline model: the next recorded step of the problem asked, filled with earlier results."""
    steps = {p["question"]: p["steps"] for p in problems}

    def script(messages: list[BaseMessage]) -> AIMessage:
        question = next(m.content for m in messages if isinstance(m, HumanMessage))
        results = [str(m.content) for m in messages if isinstance(m, ToolMessage)]
        todo = steps[str(question)]
        if len(results) < len(todo):
            expression = todo[len(results)].format(*results)
            call = {
                "name": "calculator",
                "args": {"expression": expression},
                "id": f"c{len(results)}",
            }
            return AIMessage(content="", tool_calls=[call])
        return AIMessage(content=f"Answer: {results[-1]}")

    return script


def last_number(text: str) -> float | None:
    numbers = re.findall(r"-?\d+(?:\.\d+)?", text.replace(",", ""))
    return float(numbers[-1]) if numbers else None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args("Math word problems with a calculator tool.", argv)
    problems = load_problems(args.limit)
    with open_registry(args) as registry:
        registry.register(calculator, duration_hint=0.001, api_type="calculator")
        model = chat_model(args, solution_script(problems))
        agent = create_agent(
            model,
            [calculator],
            system_prompt=SYSTEM,
            middleware=middleware(args, registry, "math"),
        )
        solved = 0
        for i, problem in enumerate(problems):
            config: Any = {"configurable": {"thread_id": f"math-{i}"}}
            state = agent.invoke({"messages": [HumanMessage(problem["question"])]}, config)
            answer = last_number(str(state["messages"][-1].content))
            ok = answer is not None and abs(answer - problem["answer"]) < 1e-6
            solved += ok
            shown = "?" if answer is None else f"{answer:g}"
            print(f"[{'ok' if ok else 'XX'}] {problem['question'][:64]}... = {shown}")
        print(f"solved {solved}/{len(problems)}")
        print_hints(model)
        print_stats(registry)
    return 0


if __name__ == "__main__":
    sys.exit(main())
