//! What both APIs share in checking fields: tool-name rules and the paths of JSON type
//! errors, written as each API writes them (Anthropic `messages.0.role`, OpenAI
//! `messages[0].role`).

use serde_path_to_error::{Path, Segment};

/// Whether `name` matches `^[a-zA-Z0-9_-]{1,max}$`, the tool-name rule of both APIs.
pub(crate) fn is_tool_name(name: &str, max: usize) -> bool {
    (1..=max).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// A path in Anthropic's style: `messages.0.content.1.text`.
pub(crate) fn dotted(path: &Path) -> String {
    let mut out = String::new();
    for segment in path.iter() {
        let part = match segment {
            Segment::Seq { index } => index.to_string(),
            Segment::Map { key } => key.clone(),
            Segment::Enum { variant } => variant.clone(),
            Segment::Unknown => continue,
        };
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&part);
    }
    out
}

/// A path in OpenAI's `param` style: `messages[0].content[1].text`.
pub(crate) fn bracketed(path: &Path) -> String {
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {}
        }
    }
    out
}

/// serde's message for a value that fits none of an untagged enum's shapes names the
/// Rust type; say which JSON shapes the field takes instead.
pub(crate) fn shape_message(serde_message: &str) -> Option<&'static str> {
    let rest = serde_message.strip_prefix("data did not match any variant of untagged enum ")?;
    // serde_json may add " at line 1 column 9" after the name.
    Some(match rest.split_whitespace().next().unwrap_or_default() {
        "SystemPrompt" | "Content" => "expected a string or an array of content blocks",
        "ChatContent" => "expected a string or an array of content parts",
        "Stop" => "expected a string or an array of strings",
        "PromptParam" => "expected a string, an array of strings, or token ids",
        _ => "the value has an unexpected type or shape",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_names() {
        for (name, max, ok) in [
            ("get_weather", 64, true),
            ("mcp__server-1__tool", 64, true),
            ("", 64, false),
            ("has space", 64, false),
            ("dotted.name", 64, false),
            ("é", 64, false),
        ] {
            assert_eq!(is_tool_name(name, max), ok, "{name:?}");
        }
        assert!(is_tool_name(&"a".repeat(64), 64));
        assert!(!is_tool_name(&"a".repeat(65), 64));
    }

    #[test]
    fn paths_in_each_apis_style() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Body {
            messages: Vec<Msg>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Msg {
            role: String,
        }
        let body = br#"{"messages": [{"role": "user"}, {"role": 5}]}"#;
        let de = &mut serde_json::Deserializer::from_slice(body);
        let err = serde_path_to_error::deserialize::<_, Body>(de).unwrap_err();
        assert_eq!(dotted(err.path()), "messages.1.role");
        assert_eq!(bracketed(err.path()), "messages[1].role");
    }
}
