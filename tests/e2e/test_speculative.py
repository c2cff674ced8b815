"""Speculative decoding end to end: the real binary serving Qwen2.5-Coder-0.5B with
`--speculative ngram`, and with `--draft-model`, answers the real SDKs exactly as a server
without it (greedy), streaming and not, with two requests decoding side by side, and
/metrics counts drafted and kept tokens. A draft model of another tokenizer is refused at
start, by name.
"""

from __future__ import annotations

import concurrent.futures
import subprocess

import anthropic
import openai
import pytest
from conftest import (
    ENGINE,
    QWEN_CODER,
    REQUESTED_MODEL,
    SMOLLM2,
    Server,
    mlx_model_dir,
    model_path,
    pensieve_bin,
)
from helpers import scrape

llama_only = pytest.mark.skipif(ENGINE != "llama", reason="the llama engine's tests")
mlx_only = pytest.mark.skipif(ENGINE != "mlx", reason="the mlx engine's test (PENSIEVE_TEST_ENGINE=mlx)")

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


@pytest.fixture(scope="module")
def plain_answers() -> list[str]:
    server = Server(model_path(QWEN_CODER), ["--parallel", "2", "--ctx", "2048"])
    try:
        server.start()
        out = answers(server.url)
        m = scrape(server.url)
        assert (m.get("pensieve_draft_tokens_total"), m.get("pensieve_draft_accepted_tokens_total")) == (0.0, 0.0)
        return out
    finally:
        server.close()


def speculating(extra: list[str]) -> tuple[list[str], float, float]:
    """The answers of a server started with `extra`, and its drafted and kept tokens."""
    server = Server(model_path(QWEN_CODER), ["--parallel", "2", "--ctx", "2048", *extra])
    try:
        server.start()
        out = answers(server.url)
        m = scrape(server.url)
        return out, m.get("pensieve_draft_tokens_total"), m.get("pensieve_draft_accepted_tokens_total")
    finally:
        server.close()


@llama_only
def test_ngram_speculation_answers_as_without_it(plain_answers):
    out, drafted, kept = speculating(["--speculative", "ngram"])
    assert out == plain_answers
    assert all("rect_area" in a or "area" in a for a in out)
    assert 0 < kept <= drafted, (drafted, kept)


@llama_only
def test_a_draft_model_answers_as_without_it(plain_answers):
    # The test models hold no smaller sibling of Qwen2.5-Coder-0.5B: a second copy of it
    # drafts, which tests the machinery (its drafts stand), not the speed-up.
    out, drafted, kept = speculating(["--draft-model", str(model_path(QWEN_CODER))])
    assert out == plain_answers
    assert 0 < kept <= drafted, (drafted, kept)


@llama_only
def test_a_draft_model_of_another_tokenizer_is_refused_at_start():
    r = subprocess.run(
        [
            str(pensieve_bin()),
            "serve",
            "--model",
            str(model_path(QWEN_CODER)),
            "--draft-model",
            str(model_path(SMOLLM2)),
            "--port",
            "0",
            "--ctx",
            "1024",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0, r
    assert (
        "the draft model cannot draft for this model: its vocabulary has 49152 tokens, the model's 151936" in r.stderr
    ), r.stderr[-2000:]


@llama_only
def test_speculative_draft_without_a_draft_model_is_refused():
    r = subprocess.run(
        [str(pensieve_bin()), "serve", "--model", str(model_path(QWEN_CODER)), "--port", "0", "--speculative", "draft"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0, r
    assert "--speculative draft needs a draft model" in r.stderr, r.stderr[-2000:]


@mlx_only
def test_mlx_speculation_answers_as_without_it():
    """The mlx worker checks a draft in one DECODE and cuts the rejected tokens off with
    TRUNCATE: the same answers as without speculation, with drafted tokens kept."""
    results = {}
    for name, extra in (("plain", []), ("ngram", ["--speculative", "ngram"])):
        server = Server(mlx_model_dir(SMOLLM2), ["--engine", "mlx", "--parallel", "2", *extra])
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
    assert results["plain metrics"] == (0.0, 0.0)
    drafted, kept = results["ngram metrics"]
    assert 0 < kept <= drafted, (drafted, kept)
