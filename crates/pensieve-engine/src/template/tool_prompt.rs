//! Tool definitions for templates that have no place for them.
//!
//! Some chat templates ignore the `tools` variable (SmolLM2's). The model must still see
//! the tools it may call, and `count_tokens` must count them, so they are written into
//! the system prompt: as the model's format documents it, where it does (DeepSeek V3.1's
//! templates leave tools to the caller), else in the `<tool_call>` convention the
//! built-in templates also use.

use crate::formats::ToolFormat;
use crate::request::{Message, Role, ToolSpec};

use super::{python, TemplateError, TemplateTool};

/// The conversation with a system turn describing `tools` at its start (merged with
/// the conversation's own leading system turn when rendering).
pub(super) fn with_tool_system_prompt(
    messages: &[Message],
    tools: &[ToolSpec],
    format: Option<ToolFormat>,
) -> Result<Vec<Message>, TemplateError> {
    let text = match format.and_then(|f| f.tool_prompt(tools)) {
        Some(text) => text,
        None => tool_call_prompt(tools)?,
    };
    let mut out = Vec::with_capacity(messages.len() + 1);
    let leading_system = messages.first().filter(|m| m.role == Role::System);
    match leading_system {
        // The client's system prompt first, then the tools, as templates with tool
        // support usually order them.
        Some(system) => {
            out.push(system.clone());
            out.push(Message::text(Role::System, text));
            out.extend_from_slice(&messages[1..]);
        }
        None => {
            out.push(Message::text(Role::System, text));
            out.extend_from_slice(messages);
        }
    }
    Ok(out)
}

/// The tools in the `<tool_call>` convention.
fn tool_call_prompt(tools: &[ToolSpec]) -> Result<String, TemplateError> {
    let mut text = String::from(
        "# Tools\n\nThese functions are available. Each is described by a JSON schema:\n<tools>\n",
    );
    for tool in tools {
        // Printed as the templates' `tojson` would, so prompts match HF's byte for byte.
        let value = minijinja::Value::from_serialize(TemplateTool::new(tool));
        let json =
            python::compact_json(&value).map_err(|e| TemplateError::Render(e.to_string()))?;
        text.push_str(&json);
        text.push('\n');
    }
    text.push_str(
        "</tools>\n\nTo call a function, reply with its name and arguments as a JSON object \
         inside <tool_call></tool_call> tags:\n<tool_call>\n\
         {\"name\": \"<function name>\", \"arguments\": {<arguments as JSON>}}\n</tool_call>",
    );
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tool(name: &str) -> ToolSpec {
        ToolSpec {
            name: name.into(),
            description: Some("does things".into()),
            parameters: json!({"type": "object", "properties": {"path": {"type": "string"}}}),
        }
    }

    #[test]
    fn tools_follow_the_clients_system_prompt() {
        let messages = [
            Message::text(Role::System, "Be brief."),
            Message::text(Role::User, "hi"),
        ];
        let out = with_tool_system_prompt(&messages, &[tool("Read"), tool("Write")], None).unwrap();
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].content, "Be brief.");
        assert_eq!(out[1].role, Role::System);
        assert!(out[1].content.contains(
            r#"{"type":"function","function":{"name":"Read","description":"does things","parameters":{"type":"object","properties":{"path":{"type":"string"}}}}}"#
        ));
        assert!(out[1].content.contains("\"name\":\"Write\""));
        assert_eq!(out[2].content, "hi");
    }

    #[test]
    fn without_a_system_prompt_the_tools_come_first() {
        let out =
            with_tool_system_prompt(&[Message::text(Role::User, "hi")], &[tool("Read")], None)
                .unwrap();
        assert_eq!(out[0].role, Role::System);
        assert_eq!(out[1].content, "hi");
    }
}
