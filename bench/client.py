"""Streaming clients of the benchmark scripts (stdlib only, Python 3.11).

- `stream_message`: Anthropic `POST /v1/messages`, stream=true;
- `stream_chat`: OpenAI `POST /v1/chat/completions`, stream=true with usage;
- both return the same result dict: perf_counter timings (request sent, each content delta,
  end), usage, prompt/cached/output tokens and the content blocks the server produced;
- `anthropic_to_openai`: the request translation for servers without `/v1/messages`;
- `ttft`, `decode_rate`, `gaps` over a result.
"""

from __future__ import annotations

import http.client
import json
import time

# --------------------------------------------------------------------------------------------
# streaming clients
# --------------------------------------------------------------------------------------------


class StreamError(RuntimeError):
    pass


def _json_events(resp, notes: list[str]):
    """Yields (arrival time, event name, data string, parsed data) per SSE event up to
    `[DONE]`; data that is not JSON is noted in `notes` and skipped."""
    for now, event_name, data_s in _sse_events(resp):
        if data_s.strip() == "[DONE]":
            return
        try:
            data = json.loads(data_s)
        except json.JSONDecodeError:
            notes.append(f"unparsable SSE data: {data_s[:80]!r}")
            continue
        yield now, event_name, data_s, data


def _sse_events(resp):
    """Yields (arrival perf_counter, event name or None, data string) per SSE event."""
    data_lines: list[str] = []
    event_name = None
    while True:
        raw = resp.readline()
        now = time.perf_counter()
        if not raw:
            return
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if line.startswith(":"):
            continue
        if line.startswith("event:"):
            event_name = line[6:].strip()
            continue
        if line.startswith("data:"):
            data_lines.append(line[5:].lstrip(" "))
            continue
        if line != "":
            continue
        if data_lines:
            yield now, event_name, "\n".join(data_lines)
        data_lines = []
        event_name = None


def _post(port: int, path: str, body: dict, timeout: float):
    payload = json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    headers = {
        "content-type": "application/json",
        "accept": "text/event-stream",
        "anthropic-version": "2023-06-01",
        "x-api-key": "bench",
        "authorization": "Bearer bench",
    }
    t_sent = time.perf_counter()
    conn.request("POST", path, body=payload, headers=headers)
    resp = conn.getresponse()
    if resp.status != 200:
        txt = resp.read().decode(errors="replace")
        conn.close()
        raise StreamError(f"HTTP {resp.status}: {txt[:500]}")
    return conn, resp, t_sent


def _result(
    t_sent,
    t_message_start,
    delta_times,
    t_end,
    out_tokens,
    prompt_tokens,
    cached_tokens,
    usage,
    events,
    stop_reason,
    content,
    notes,
) -> dict:
    text = "".join(b.get("text", "") for b in content if b.get("type") == "text")
    if not out_tokens:
        out_tokens = len(delta_times)
        notes.append("no output_tokens in usage: counted content deltas instead")
    return {
        "t_sent": t_sent,
        "t_message_start": t_message_start,
        "t_first_delta": delta_times[0] if delta_times else None,
        "t_last_delta": delta_times[-1] if delta_times else None,
        "t_end": t_end,
        "delta_times": delta_times,
        "n_deltas": len(delta_times),
        "output_tokens": out_tokens,
        "prompt_tokens": prompt_tokens,
        "cached_tokens": cached_tokens,
        "usage": usage,
        "events": events,
        "stop_reason": stop_reason,
        "content": content,
        "text_chars": len(text),
        "text_head": text[:120],
        "notes": notes,
    }


def stream_message(port: int, body: dict, timeout: float) -> dict:
    """POST /v1/messages with stream=true; returns timings (perf_counter seconds), usage and the
    content blocks the server produced (text, and tool_use with its input parsed when it is
    valid JSON).

    Content deltas are text_delta, thinking_delta and input_json_delta (a model's tokens either
    way). Usage: message_start's is taken first, message_delta's fields replace it (Pensieve
    sends the whole prompt as message_start.input_tokens, then the uncached part plus
    cache_read/cache_creation in message_delta; llama-server sends uncached input_tokens and
    cache_read_input_tokens in message_start only). Prompt tokens = message_start's
    input_tokens + cache_read + cache_creation (both servers' message_start add up to the whole
    prompt); cached tokens = the final cache_read_input_tokens."""
    conn, resp, t_sent = _post(port, "/v1/messages", body, timeout)
    delta_times: list[float] = []
    usage: dict[str, int] = {}
    start_usage: dict[str, int] = {}
    events: dict[str, int] = {}
    blocks: dict[int, dict] = {}
    stop_reason = None
    t_message_start = None
    t_end = None
    notes: list[str] = []
    try:
        for now, event_name, data_s, data in _json_events(resp, notes):
            typ = data.get("type") or event_name or "?"
            events[typ] = events.get(typ, 0) + 1
            if typ == "message_start":
                t_message_start = now
                u = (data.get("message") or {}).get("usage") or {}
                start_usage = {k: v for k, v in u.items() if isinstance(v, int)}
                usage.update(start_usage)
            elif typ == "content_block_start":
                cb = dict(data.get("content_block") or {})
                if cb.get("type") == "tool_use":
                    cb["_json"] = ""
                blocks[data.get("index", len(blocks))] = cb
            elif typ == "content_block_delta":
                d = data.get("delta") or {}
                dt = d.get("type")
                b = blocks.setdefault(data.get("index", 0), {"type": "text", "text": ""})
                piece = None
                if dt == "text_delta":
                    piece = d.get("text")
                    b["text"] = b.get("text", "") + (piece or "")
                elif dt == "thinking_delta":
                    piece = d.get("thinking")
                elif dt == "input_json_delta":
                    piece = d.get("partial_json")
                    b["_json"] = b.get("_json", "") + (piece or "")
                if piece:  # signature_delta and empty pieces are not tokens
                    delta_times.append(now)
            elif typ == "message_delta":
                u = data.get("usage") or {}
                usage.update({k: v for k, v in u.items() if isinstance(v, int)})
                stop_reason = (data.get("delta") or {}).get("stop_reason", stop_reason)
            elif typ == "message_stop":
                t_end = now
                break
            elif typ == "error":
                raise StreamError(f"error event: {data_s[:500]}")
    finally:
        conn.close()
    if t_end is None:
        t_end = time.perf_counter()
        notes.append("stream ended without message_stop")

    content = []
    for _, b in sorted(blocks.items()):
        if b.get("type") == "tool_use":
            raw = b.pop("_json", "")
            try:
                b["input"] = json.loads(raw) if raw.strip() else (b.get("input") or {})
            except json.JSONDecodeError:
                b["input_invalid"] = raw
            content.append(b)
        elif b.get("type") == "text" and b.get("text"):
            content.append({"type": "text", "text": b["text"]})

    prompt_tokens = None
    final_total = (
        usage.get("input_tokens", 0)
        + usage.get("cache_read_input_tokens", 0)
        + usage.get("cache_creation_input_tokens", 0)
    )
    if "input_tokens" in start_usage:
        prompt_tokens = (
            start_usage.get("input_tokens", 0)
            + start_usage.get("cache_read_input_tokens", 0)
            + start_usage.get("cache_creation_input_tokens", 0)
        )
    elif "input_tokens" in usage:
        prompt_tokens = usage["input_tokens"] + usage.get("cache_read_input_tokens", 0)
    else:
        notes.append("no input_tokens in usage")
    if prompt_tokens is not None and final_total != prompt_tokens:
        notes.append(
            f"usage parts disagree: message_start adds up to {prompt_tokens}, the final usage to {final_total}"
        )
    return _result(
        t_sent,
        t_message_start,
        delta_times,
        t_end,
        usage.get("output_tokens"),
        prompt_tokens,
        usage.get("cache_read_input_tokens", 0),
        usage,
        events,
        stop_reason,
        content,
        notes,
    )


def stream_chat(port: int, body: dict, timeout: float) -> dict:
    """POST /v1/chat/completions with stream=true and stream_options.include_usage; same result
    shape as stream_message. Cached tokens: usage.prompt_tokens_details.cached_tokens, else
    llama-server's timings.cache_n."""
    body = dict(body, stream=True, stream_options={"include_usage": True})
    conn, resp, t_sent = _post(port, "/v1/chat/completions", body, timeout)
    delta_times: list[float] = []
    usage: dict = {}
    events: dict[str, int] = {}
    text_parts: list[str] = []
    calls: dict[int, dict] = {}
    stop_reason = None
    t_first_chunk = None
    cached = None
    notes: list[str] = []
    try:
        for now, _, data_s, data in _json_events(resp, notes):
            if "error" in data:
                raise StreamError(f"error chunk: {data_s[:500]}")
            events["chunk"] = events.get("chunk", 0) + 1
            if t_first_chunk is None:
                t_first_chunk = now
            if isinstance(data.get("usage"), dict):
                usage = data["usage"]
            if isinstance(data.get("timings"), dict) and "cache_n" in data["timings"]:
                cached = data["timings"]["cache_n"]
            for ch in data.get("choices") or []:
                d = ch.get("delta") or {}
                got = False
                for key in ("content", "reasoning_content", "reasoning"):
                    if d.get(key):
                        got = True
                        if key == "content":
                            text_parts.append(d[key])
                for tc in d.get("tool_calls") or []:
                    c = calls.setdefault(tc.get("index", len(calls)), {"id": None, "name": "", "args": ""})
                    c["id"] = tc.get("id") or c["id"]
                    fn = tc.get("function") or {}
                    c["name"] += fn.get("name") or ""
                    if fn.get("arguments"):
                        c["args"] += fn["arguments"]
                        got = True
                if got:
                    delta_times.append(now)
                if ch.get("finish_reason"):
                    stop_reason = ch["finish_reason"]
    finally:
        conn.close()
    t_end = time.perf_counter()
    content: list[dict] = []
    if text_parts:
        content.append({"type": "text", "text": "".join(text_parts)})
    for i, c in sorted(calls.items()):
        b = {"type": "tool_use", "id": c["id"] or f"call_{i}", "name": c["name"]}
        try:
            b["input"] = json.loads(c["args"]) if c["args"].strip() else {}
        except json.JSONDecodeError:
            b["input_invalid"] = c["args"]
        content.append(b)
    details = usage.get("prompt_tokens_details") or {}
    if isinstance(details, dict) and details.get("cached_tokens") is not None:
        cached = details["cached_tokens"]
    if not usage:
        notes.append("no usage chunk")
    return _result(
        t_sent,
        t_first_chunk,
        delta_times,
        t_end,
        usage.get("completion_tokens"),
        usage.get("prompt_tokens"),
        cached,
        usage,
        events,
        stop_reason,
        content,
        notes,
    )


def stream_completion(port: int, body: dict, timeout: float) -> dict:
    """POST /v1/completions with stream=true and stream_options.include_usage (the prompt may be
    token ids); same result shape as stream_message. Both Pensieve and llama-server take it."""
    body = dict(body, stream=True, stream_options={"include_usage": True})
    conn, resp, t_sent = _post(port, "/v1/completions", body, timeout)
    delta_times: list[float] = []
    usage: dict = {}
    text_parts: list[str] = []
    stop_reason = None
    t_first_chunk = None
    notes: list[str] = []
    chunks = 0
    try:
        for now, _, data_s, data in _json_events(resp, notes):
            if "error" in data:
                raise StreamError(f"error chunk: {data_s[:500]}")
            chunks += 1
            t_first_chunk = t_first_chunk or now
            if isinstance(data.get("usage"), dict):
                usage = data["usage"]
            for ch in data.get("choices") or []:
                if ch.get("text"):
                    text_parts.append(ch["text"])
                    delta_times.append(now)
                if ch.get("finish_reason"):
                    stop_reason = ch["finish_reason"]
    finally:
        conn.close()
    content = [{"type": "text", "text": "".join(text_parts)}] if text_parts else []
    return _result(
        t_sent,
        t_first_chunk,
        delta_times,
        time.perf_counter(),
        usage.get("completion_tokens"),
        usage.get("prompt_tokens"),
        None,
        usage,
        {"chunk": chunks},
        stop_reason,
        content,
        notes,
    )


def ttft(r: dict) -> float | None:
    return r["t_first_delta"] - r["t_sent"] if r.get("t_first_delta") is not None else None


def decode_rate(r: dict) -> float | None:
    n = r["output_tokens"]
    if not n or n < 2 or r["t_first_delta"] is None or r["t_last_delta"] is None:
        return None
    span = r["t_last_delta"] - r["t_first_delta"]
    return (n - 1) / span if span > 0 else None


def gaps(r: dict) -> list[float]:
    """Inter-token latencies: times between consecutive content deltas of one stream."""
    t = r.get("delta_times") or []
    return [b - a for a, b in zip(t, t[1:])]


# --------------------------------------------------------------------------------------------
# Anthropic request -> OpenAI chat request (for servers without /v1/messages)
# --------------------------------------------------------------------------------------------

BILLING_HEADER = "x-anthropic-billing-header:"


def _blocks_text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(b.get("text", "") for b in content if isinstance(b, dict) and b.get("type") == "text")


def anthropic_to_openai(body: dict, strip_billing_line: bool = True) -> dict:
    """The same request as an OpenAI chat request: system blocks joined into one system message
    (Claude Code's per-request billing line dropped: a proxy in front of an OpenAI-only server
    would have to do that, or every request misses the prefix cache), tool_use -> tool_calls,
    tool_result -> role "tool" messages, tools -> functions."""
    msgs: list[dict] = []
    system = body.get("system")
    if system:
        blocks = [{"type": "text", "text": system}] if isinstance(system, str) else system
        texts = [b.get("text", "") for b in blocks if b.get("type") == "text"]
        if strip_billing_line:
            texts = [t for t in texts if not t.startswith(BILLING_HEADER)]
        msgs.append({"role": "system", "content": "".join(texts)})
    for m in body.get("messages", []):
        content = m.get("content")
        if isinstance(content, str):
            msgs.append({"role": m["role"], "content": content})
            continue
        texts, calls, results = [], [], []
        for b in content:
            t = b.get("type")
            if t == "text":
                texts.append(b.get("text", ""))
            elif t == "tool_use":
                calls.append(
                    {
                        "id": b["id"],
                        "type": "function",
                        "function": {"name": b["name"], "arguments": json.dumps(b.get("input", {}))},
                    }
                )
            elif t == "tool_result":
                results.append(
                    {
                        "role": "tool",
                        "tool_call_id": b.get("tool_use_id", ""),
                        "content": _blocks_text(b.get("content", "")),
                    }
                )
        msgs.extend(results)  # tool results answer the previous assistant message: they go first
        if texts or calls:
            msg: dict = {"role": m["role"], "content": "".join(texts)}
            if calls:
                msg["tool_calls"] = calls
            msgs.append(msg)
    out = {"model": body.get("model", "model"), "messages": msgs, "max_tokens": body.get("max_tokens", 256)}
    for k in ("temperature", "top_p", "top_k"):
        if k in body:
            out[k] = body[k]
    if body.get("tools"):
        out["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t["name"],
                    "description": t.get("description", ""),
                    "parameters": t.get("input_schema", {"type": "object"}),
                },
            }
            for t in body["tools"]
        ]
    return out


def send(port: int, api: str, body: dict, timeout: float) -> dict:
    """One streaming request over `api` ("anthropic" or "openai"); `body` is Anthropic-shaped."""
    if api == "openai":
        return stream_chat(port, anthropic_to_openai(body), timeout)
    return stream_message(port, body, timeout)
