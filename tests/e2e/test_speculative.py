"""Speculative decoding end to end: the real binary serving Qwen2.5-Coder-0.5B with
`--speculative ngram` answers the real SDKs exactly as a server without it (greedy),
streaming and not, with two requests decoding side by side, and /metrics counts drafted
and kept tokens.
"""

from __future__ import annotations

import concurrent.futures

import anthropic
import openai
import pytest
from conftest import ENGINE, QWEN_CODER, REQUESTED_MODEL, Server, model_path
from helpers import scrape

pytestmark = pytest.mark.skipif(ENGINE != "llama", reason="speculation runs on the llama engine")

CODE = """def area(width, height):
    if width < 0 or height < 0:
        raise ValueError("negative size")
    return width * height
"""
PROMPTS = [
    f"Rename the function to rect_area and repeat the rest exactly:\n{CODE}",
    f"Add a docstring to this function and repeat the rest exactly:\n{CODE}",
]


def answers(url: str) -> list[str]:
    """Each prompt greedy through the openai SDK, then again streamed through the
    anthropic SDK, both prompts at once each time."""
    oa = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
    an = anthropic.Anthropic(base_url=url, api_key="none")

    def chat(prompt: str) -> str:
        r = oa.chat.completions.create(
            model=REQUESTED_MODEL,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=96,
            temperature=0,
        )
        return r.choices[0].message.content or ""

    def streamed(prompt: str) -> str:
        with an.messages.stream(
            model=REQUESTED_MODEL,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=96,
            # This SDK's stream() takes no temperature argument; the body does.
            extra_body={"temperature": 0},
        ) as stream:
            return "".join(stream.text_stream)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        out = list(pool.map(chat, PROMPTS))
        out += list(pool.map(streamed, PROMPTS))
    return out


def test_ngram_speculation_answers_as_without_it():
    results = {}
    for name, extra in (("plain", []), ("ngram", ["--speculative", "ngram"])):
        server = Server(model_path(QWEN_CODER), ["--parallel", "2", "--ctx", "2048", *extra])
        try:
            server.start()
            results[name] = answers(server.url)
            m = scrape(server.url)
            results[name + " metrics"] = (
                m.get("pensieve_draft_tokens_total"),
                m.get("pensieve_draft_accepted_tokens_total"),
            )
        finally:
            server.close()
    assert results["ngram"] == results["plain"]
    assert all("rect_area" in a or "area" in a for a in results["ngram"])
    assert results["plain metrics"] == (0.0, 0.0)
    drafted, kept = results["ngram metrics"]
    assert 0 < kept <= drafted, (drafted, kept)
