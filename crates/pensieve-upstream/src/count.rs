//! `count_tokens` for an upstream model, through the upstream's own tokenizer: vLLM (and
//! SGLang) take chat messages at `/tokenize` and answer their `count`; llama-server renders
//! messages at `/apply-template` and tokenizes that text at `/tokenize`. A server with
//! neither (Ollama, mlx_lm.server, Pensieve) cannot count, and the client is told so.

use std::time::Duration;

use pensieve_engine::EngineError;
use serde_json::{json, Value};

/// How long a counting request may take.
const COUNT_TIMEOUT: Duration = Duration::from_secs(60);

/// The server's root for an OpenAI API base (`http://gpu1:8000/v1` -> `http://gpu1:8000`):
/// the tokenizer endpoints are not under `/v1`.
pub fn server_root(base: &str) -> &str {
    let base = base.trim_end_matches('/');
    base.strip_suffix("/v1").unwrap_or(base)
}

/// The prompt tokens of `chat` (a Chat Completions body) as the server at `root` counts them.
pub async fn count_tokens(
    http: &reqwest::Client,
    root: &str,
    key: Option<&str>,
    chat: &Value,
) -> Result<usize, EngineError> {
    let mut messages = json!({
        "model": chat["model"],
        "messages": chat["messages"],
        "add_generation_prompt": true,
    });
    if let Some(tools) = chat.get("tools") {
        messages["tools"] = tools.clone();
    }
    // vLLM: the messages in, their count out. (llama-server answers this with the tokens of
    // an empty text, and no count.)
    let tokenize = format!("{root}/tokenize");
    if let Some(answer) = post(http, &tokenize, key, &messages).await? {
        if let Some(n) = answer["count"].as_u64() {
            return Ok(usize::try_from(n).unwrap_or(usize::MAX));
        }
    }
    // llama-server: the prompt its template makes, then that text's tokens.
    let apply = format!("{root}/apply-template");
    if let Some(answer) = post(http, &apply, key, &messages).await? {
        if let Some(prompt) = answer["prompt"].as_str() {
            let text = json!({"content": prompt, "add_special": false, "parse_special": true});
            if let Some(tokens) = post(http, &tokenize, key, &text).await? {
                if let Some(tokens) = tokens["tokens"].as_array() {
                    return Ok(tokens.len());
                }
            }
        }
    }
    Err(EngineError::InvalidRequest(format!(
        "the upstream server at {root} has no tokenizer endpoint (vLLM's or llama-server's \
         /tokenize), so Pensieve cannot count this model's tokens"
    )))
}

/// The JSON answer of a POST; None when the server has no such endpoint or refuses the
/// body (any error status, or an answer that is not JSON).
async fn post(
    http: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    body: &Value,
) -> Result<Option<Value>, EngineError> {
    let request = http.post(url).json(body).timeout(COUNT_TIMEOUT);
    let response = crate::client::authorized(request, key)
        .send()
        .await
        .map_err(|e| EngineError::Upstream {
            status: if e.is_timeout() { 504 } else { 502 },
            message: format!("cannot count tokens at {url}: {e}"),
        })?;
    if !response.status().is_success() {
        return Ok(None);
    }
    Ok(response.json::<Value>().await.ok())
}

#[cfg(test)]
mod tests {
    use super::server_root;

    #[test]
    fn the_root_is_the_base_without_v1() {
        assert_eq!(server_root("http://gpu1:8000/v1"), "http://gpu1:8000");
        assert_eq!(server_root("http://gpu1:8000/v1/"), "http://gpu1:8000");
        assert_eq!(server_root("http://gpu1:8000"), "http://gpu1:8000");
    }
}
