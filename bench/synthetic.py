"""Deterministic synthetic content shaped like Claude Code's requests (shared/docs/claude-code.md).

Everything comes from a seeded random.Random, so every server and every round sees the same
bytes: a system prompt of three blocks (the per-request billing line, an identity line, a long
prompt of markdown sections), 12 tool schemas in Anthropic `tools` format, <system-reminder>
blocks for the first user message, tool results that look like file reads and command output,
and short user messages. Sizes are in characters; the servers' own usage reports the tokens.
"""

from __future__ import annotations

import json
import random

from common import WORDS

IDENTS = (
    "request",
    "client",
    "session",
    "buffer",
    "config",
    "handler",
    "retry",
    "token",
    "cache",
    "stream",
    "parser",
    "worker",
    "queue",
    "state",
    "result",
    "error",
    "timeout",
    "path",
    "limit",
    "index",
    "store",
    "engine",
    "schema",
    "message",
    "header",
    "policy",
    "backoff",
)
EXTS = ("py", "rs", "ts", "go", "md", "json", "toml")
TOOL_NAMES = (
    "Agent",
    "Bash",
    "Edit",
    "Glob",
    "Grep",
    "Read",
    "Write",
    "NotebookEdit",
    "WebFetch",
    "WebSearch",
    "TodoWrite",
    "ExitPlanMode",
)
SECTIONS = (
    "Tone and style",
    "Proactiveness",
    "Following conventions",
    "Code style",
    "Task management",
    "Doing tasks",
    "Tool usage policy",
    "Code references",
    "Security",
    "Git workflow",
    "Testing",
    "Asking questions",
    "Planning",
    "Output format",
)
FIRST_PROMPTS = [
    "Find where the retry logic for HTTP requests lives in this repository and explain how the "
    "backoff is computed. Then suggest a fix for the bug where retries ignore the timeout.",
    "Search the codebase for every place that parses the config file and list which options are "
    "read but never documented. Report file paths and line numbers.",
    "Add a --verbose flag to the command line tool that prints each request and its timing, with a test.",
]
FOLLOW_UPS = [
    "Continue.",
    "Now look at the tests for this.",
    "Check the caller too.",
    "Good. What about the error path?",
    "Keep going, but be brief.",
    "Fix that and run the tests.",
    "Where is this configured?",
    "Look at the other module as well.",
    "Summarize what you found.",
]


def ident(rng: random.Random) -> str:
    return "_".join(rng.choice(IDENTS) for _ in range(rng.randint(1, 3)))


def path(rng: random.Random) -> str:
    return "src/" + "/".join(ident(rng) for _ in range(rng.randint(1, 3))) + "." + rng.choice(EXTS)


def sentence(rng: random.Random) -> str:
    """English-like words with code references mixed in, as in a coding agent's instructions."""
    out = []
    for _ in range(rng.randint(8, 20)):
        x = rng.random()
        if x < 0.14:
            out.append(f"`{ident(rng)}`")
        elif x < 0.20:
            out.append(path(rng))
        elif x < 0.25:
            out.append(str(rng.randint(2, 5000)))
        else:
            out.append(rng.choice(WORDS))
    out[0] = out[0].capitalize()
    return " ".join(out) + "."


def prose(rng: random.Random, n_chars: int) -> str:
    parts, size = [], 0
    while size < n_chars:
        s = sentence(rng)
        parts.append(s)
        size += len(s) + 1
    return " ".join(parts)[: max(n_chars, 1)]


def system_prompt_text(rng: random.Random, n_chars: int) -> str:
    """Markdown sections of bullet points and paragraphs, n_chars long."""
    out, size, i = [], 0, 0
    while size < n_chars:
        sec = [f"# {SECTIONS[i % len(SECTIONS)]}"]
        sec.append(prose(rng, rng.randint(200, 400)))
        for _ in range(rng.randint(2, 5)):
            sec.append("- " + prose(rng, rng.randint(60, 200)))
        if rng.random() < 0.3:
            sec.append("<example>\nuser: " + prose(rng, 60) + "\nassistant: " + prose(rng, 80) + "\n</example>")
        block = "\n".join(sec) + "\n\n"
        out.append(block)
        size += len(block)
        i += 1
    return "".join(out)[:n_chars]


def tools(rng: random.Random, total_chars: int, n_tools: int = 12) -> list[dict]:
    """n_tools Anthropic tool definitions whose JSON adds up to about total_chars."""
    per_tool = max(total_chars // max(n_tools, 1), 200)
    out = []
    for i in range(n_tools):
        name = TOOL_NAMES[i] if i < len(TOOL_NAMES) else f"Tool{i}"
        props, required = {}, []
        for _ in range(rng.randint(2, 6)):
            p = ident(rng)
            kind = rng.choice(["string", "string", "string", "number", "boolean", "array"])
            spec: dict = {"type": kind, "description": prose(rng, rng.randint(40, 160))}
            if kind == "array":
                spec["items"] = {"type": "string"}
            if kind == "string" and rng.random() < 0.2:
                spec["enum"] = [ident(rng) for _ in range(3)]
            props[p] = spec
            if rng.random() < 0.5:
                required.append(p)
        tool = {
            "name": name,
            "description": "",
            "input_schema": {
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": props,
                "required": required,
                "additionalProperties": False,
            },
        }
        room = per_tool - len(json.dumps(tool))
        tool["description"] = system_prompt_text(rng, max(room, 80)) if room > 400 else prose(rng, max(room, 80))
        if i == n_tools - 1:
            tool["defer_loading"] = True  # Claude Code marks one tool like this
        out.append(tool)
    return out


def reminders(rng: random.Random, n_chars: int) -> list[dict]:
    """Two <system-reminder> text blocks (Claude Code's context and environment notes)."""
    a = max(n_chars * 2 // 3, 1)
    b = max(n_chars - a, 1)
    env = "\n".join(f"- {ident(rng)}: {path(rng)}" for _ in range(8))
    return [
        {
            "type": "text",
            "text": "<system-reminder>\nAs you answer the user's questions, you can use the "
            "following context:\n# claudeMd\n" + system_prompt_text(rng, a) + "\n</system-reminder>",
        },
        {
            "type": "text",
            "text": "<system-reminder>\n# Environment\n" + env + "\n" + prose(rng, b) + "\n</system-reminder>",
        },
    ]


def code_lines(rng: random.Random, n_chars: int) -> str:
    """A file read as Claude Code's Read tool shows it: numbered lines of code-like text."""
    lines, size, n = [], 0, 1
    indent = 0
    while size < n_chars:
        x = rng.random()
        if x < 0.15:
            line = f"def {ident(rng)}({ident(rng)}, {ident(rng)}={rng.randint(0, 99)}):"
            indent = 4
        elif x < 0.25:
            line = " " * indent + f"# {prose(rng, rng.randint(20, 70))}"
        elif x < 0.35:
            line = " " * indent + f"if {ident(rng)} > {rng.randint(1, 100)}:"
        elif x < 0.45:
            line = " " * indent + f"return {ident(rng)}.{ident(rng)}()"
        else:
            line = " " * indent + f'{ident(rng)} = {ident(rng)}.{ident(rng)}({ident(rng)}, "{rng.choice(WORDS)}")'
        line = f"{n:>6}\t{line}"
        lines.append(line)
        size += len(line) + 1
        n += 1
    return "\n".join(lines)


def tool_result_text(rng: random.Random, n_chars: int) -> str:
    if rng.random() < 0.6:
        return code_lines(rng, n_chars)
    return "\n".join(
        f"{path(rng)}:{rng.randint(1, 900)}: {prose(rng, rng.randint(30, 90))}" for _ in range(max(n_chars // 100, 1))
    )[:n_chars]


def tool_input(rng: random.Random, name: str) -> dict:
    if name == "Bash":
        return {"command": f"grep -rn {ident(rng)} src/ | head -50", "description": prose(rng, 40)}
    if name == "Grep":
        return {"pattern": ident(rng), "path": "src/"}
    return {"file_path": "/home/user/project/" + path(rng)}


def billing_line(rng: random.Random, version_suffix: str = "a3f") -> str:
    """Claude Code's attribution line: cc_version's suffix stays the same within a session, the
    cch= value changes from request to request (servers normalise or strip the line)."""
    return (
        f"x-anthropic-billing-header: cc_version=2.1.328.{version_suffix}; cc_entrypoint=cli; "
        f"cch={rng.randrange(16**5):05x};"
    )
