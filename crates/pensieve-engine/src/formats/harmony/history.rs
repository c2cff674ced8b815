//! History as gpt-oss's template takes it.
//!
//! The template assumes the conversation is one the model wrote: one call per assistant
//! message (it renders `tool_calls[0]` and names each tool result after the last call),
//! a described tool, and an assistant message with calls holding reasoning or text but
//! not both. Clients send other shapes: Claude Code replays parallel calls as one turn
//! with several `tool_use` blocks and their results in one user turn, OpenAI clients
//! leave descriptions out, and a turn may carry thinking, a preamble and a call. Rendered
//! as they come, the second call vanishes and its result is filed under the first
//! call's name, or the template refuses the request. Here each call becomes its own
//! message followed by its own result, a missing description an empty one, and a
//! preamble joins the reasoning (both are analysis to the model).

use std::borrow::Cow;

use crate::request::{Message, Role, ToolSpec};

pub(super) fn history(conversation: &mut Vec<Message>, tools: &mut Cow<'_, [ToolSpec]>) {
    if tools.iter().any(|t| t.description.is_none()) {
        for tool in tools.to_mut() {
            tool.description.get_or_insert_with(String::new);
        }
    }
    if conversation.iter().any(needs_reshaping) {
        *conversation = reshape(std::mem::take(conversation));
    }
}

fn needs_reshaping(message: &Message) -> bool {
    message.role == Role::Assistant
        && (message.tool_calls.len() > 1
            || (!message.tool_calls.is_empty()
                && !message.content.is_empty()
                && message.reasoning.as_deref().is_some_and(|r| !r.is_empty())))
}

fn reshape(conversation: Vec<Message>) -> Vec<Message> {
    let mut out = Vec::with_capacity(conversation.len());
    let mut messages = conversation.into_iter().peekable();
    while let Some(mut message) = messages.next() {
        if message.role != Role::Assistant || message.tool_calls.is_empty() {
            out.push(message);
            continue;
        }
        if let Some(reasoning) = message.reasoning.as_mut().filter(|r| !r.is_empty()) {
            if !message.content.is_empty() {
                reasoning.push_str("\n\n");
                reasoning.push_str(&std::mem::take(&mut message.content));
            }
        }
        // The results that answer this turn's calls follow it.
        let mut results = Vec::new();
        while let Some(result) = messages.next_if(|m| m.role == Role::Tool) {
            results.push(Some(result));
        }
        let calls = std::mem::take(&mut message.tool_calls);
        let last = calls.len().saturating_sub(1);
        let mut head = Some(message);
        for (i, call) in calls.into_iter().enumerate() {
            let mut turn = head
                .take()
                .unwrap_or_else(|| Message::text(Role::Assistant, ""));
            let id = call.id.clone();
            turn.tool_calls.push(call);
            out.push(turn);
            // Its own result; a result that names no call of the turn stays in order
            // after the last call, where the template has always put it.
            out.extend(
                results
                    .iter_mut()
                    .filter(|r| {
                        r.as_ref()
                            .is_some_and(|r| r.tool_call_id.as_deref() == Some(&id))
                    })
                    .filter_map(Option::take),
            );
            if i == last {
                out.extend(results.iter_mut().filter_map(Option::take));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::request::ToolCall;

    fn call(id: &str, name: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: json!({}),
        }
    }

    fn result(id: &str, text: &str) -> Message {
        Message {
            tool_call_id: Some(id.into()),
            ..Message::text(Role::Tool, text)
        }
    }

    fn assistant(content: &str, reasoning: Option<&str>, calls: Vec<ToolCall>) -> Message {
        Message {
            reasoning: reasoning.map(Into::into),
            tool_calls: calls,
            ..Message::text(Role::Assistant, content)
        }
    }

    fn reshaped(mut conversation: Vec<Message>) -> Vec<Message> {
        history(&mut conversation, &mut Cow::Owned(Vec::new()));
        conversation
    }

    #[test]
    fn each_call_becomes_its_own_turn_followed_by_its_own_result() {
        let conversation = vec![
            Message::text(Role::User, "q"),
            assistant(
                "",
                Some("two things"),
                vec![call("a", "Read"), call("b", "Bash"), call("c", "Grep")],
            ),
            // Results in another order than the calls, as clients may send them.
            result("b", "rb"),
            result("a", "ra"),
            result("c", "rc"),
            Message::text(Role::User, "next"),
        ];
        let expected = vec![
            Message::text(Role::User, "q"),
            assistant("", Some("two things"), vec![call("a", "Read")]),
            result("a", "ra"),
            assistant("", None, vec![call("b", "Bash")]),
            result("b", "rb"),
            assistant("", None, vec![call("c", "Grep")]),
            result("c", "rc"),
            Message::text(Role::User, "next"),
        ];
        assert_eq!(reshaped(conversation), expected);
    }

    #[test]
    fn results_that_answer_no_call_stay_after_the_last_one() {
        let conversation = vec![
            assistant("", None, vec![call("a", "Read"), call("b", "Bash")]),
            result("x", "stray"),
            result("b", "rb"),
        ];
        let expected = vec![
            assistant("", None, vec![call("a", "Read")]),
            assistant("", None, vec![call("b", "Bash")]),
            result("b", "rb"),
            result("x", "stray"),
        ];
        assert_eq!(reshaped(conversation), expected);
    }

    #[test]
    fn a_preamble_joins_the_reasoning_of_its_call() {
        let conversation = vec![assistant(
            "Let me look.",
            Some("Need the listing."),
            vec![call("a", "Bash")],
        )];
        let expected = vec![assistant(
            "",
            Some("Need the listing.\n\nLet me look."),
            vec![call("a", "Bash")],
        )];
        assert_eq!(reshaped(conversation), expected);
        // Text alone, or reasoning alone, is what the template takes as it is.
        let alone = vec![assistant("Let me look.", None, vec![call("a", "Bash")])];
        assert_eq!(reshaped(alone.clone()), alone);
    }

    #[test]
    fn undescribed_tools_get_an_empty_description_and_described_ones_are_not_copied() {
        let tool = |description: Option<&str>| ToolSpec {
            name: "t".into(),
            description: description.map(Into::into),
            parameters: json!({"type": "object"}),
        };
        let described = [tool(Some("d"))];
        let mut tools = Cow::Borrowed(&described[..]);
        history(&mut Vec::new(), &mut tools);
        assert!(matches!(tools, Cow::Borrowed(_)));
        let mixed = [tool(Some("d")), tool(None)];
        let mut tools = Cow::Borrowed(&mixed[..]);
        history(&mut Vec::new(), &mut tools);
        assert_eq!(tools[0].description.as_deref(), Some("d"));
        assert_eq!(tools[1].description.as_deref(), Some(""));
    }
}
