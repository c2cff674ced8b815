//! Reshaping a conversation into what chat templates accept.
//!
//! Clients send shapes many templates reject: two user turns in a row (an
//! Anthropic user turn split around tool results), a `system` turn in the middle
//! (Claude Code sends one right after the first user message), an empty assistant
//! turn at the end. These functions are pure and run before every render, so the
//! same request always renders to the same prompt.

use crate::request::{Message, Role};

/// Puts what names the project or the day after what every session sends alike
/// ([`super::stable::stable_first`]), then merges consecutive messages of the same
/// role, never tool results: each tool result answers its own call. Texts are joined
/// with a blank line and assistant tool calls are concatenated, so leading system
/// messages become one as well.
pub(crate) fn normalize(messages: &[Message]) -> Vec<Message> {
    normalize_marked(messages, None)
}

/// [`normalize`], with a cache breakpoint's mark where the preamble ends (see
/// [`super::breakpoints`]).
pub(crate) fn normalize_marked(messages: &[Message], preamble_mark: Option<&str>) -> Vec<Message> {
    let reordered = super::stable::stable_first(messages, preamble_mark);
    let messages = reordered.as_deref().unwrap_or(messages);
    let mut out: Vec<Message> = Vec::with_capacity(messages.len());
    for message in &hoist_system_above_user(messages) {
        match out.last_mut() {
            Some(last) if last.role == message.role && message.role != Role::Tool => {
                merge_into(last, message);
            }
            _ => out.push(message.clone()),
        }
    }
    // An empty assistant turn at the end has nothing to continue; rendering it
    // would close an empty turn and then open another.
    if out.last().is_some_and(|m| {
        m.role == Role::Assistant && m.content.is_empty() && m.tool_calls.is_empty()
    }) {
        out.pop();
    }
    if let Some(mark) = preamble_mark {
        super::breakpoints::place_preamble(&mut out, mark);
    }
    out
}

/// Claude Code sends its environment description as a `system` turn right after the
/// user's prompt. Rendered there it is the last thing the model reads, and small models
/// answer it instead of the user. So a system turn that follows user turns moves ahead
/// of them, as the start of the user's turn when a system prompt comes first. It is not
/// merged into that system prompt: the environment (working directory, date) differs
/// between sessions, while the system prompt and the tool schemas rendered after it do
/// not, and they must stay one shared prefix for the prefix cache. Later requests of
/// the conversation keep the moved turn in the same place, so they share it too.
fn hoist_system_above_user(messages: &[Message]) -> Vec<Message> {
    let mut out: Vec<Message> = Vec::with_capacity(messages.len());
    for message in messages {
        let mut at = out.len();
        let mut message = message.clone();
        if message.role == Role::System {
            while at > 0 && out[at - 1].role == Role::User {
                at -= 1;
            }
            if at < out.len() && at > 0 {
                message.role = Role::User;
            }
        }
        out.insert(at, message);
    }
    out
}

fn merge_into(target: &mut Message, next: &Message) {
    target.content = join_text(&target.content, &next.content);
    target.reasoning = match (target.reasoning.take(), next.reasoning.as_deref()) {
        (Some(first), Some(second)) => Some(join_text(&first, second)),
        (first, second) => first.or_else(|| second.map(str::to_owned)),
    };
    target.tool_calls.extend(next.tool_calls.iter().cloned());
}

/// Joins two texts with a blank line, skipping empty ones.
fn join_text(first: &str, second: &str) -> String {
    match (first.is_empty(), second.is_empty()) {
        (_, true) => first.to_owned(),
        (true, false) => second.to_owned(),
        (false, false) => format!("{first}\n\n{second}"),
    }
}

/// The fallback for templates that refuse a system turn after the first message:
/// each such turn becomes user text, merged into the neighbouring user turn
/// (appended to the one before it, or prepended to the one after it). `None` when
/// the conversation has no mid-conversation system turn, so there is nothing to retry.
pub(crate) fn fold_mid_system(messages: &[Message]) -> Option<Vec<Message>> {
    let has_mid_system = messages.iter().skip(1).any(|m| m.role == Role::System);
    if !has_mid_system {
        return None;
    }
    let folded: Vec<Message> = messages
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut m = m.clone();
            if i > 0 && m.role == Role::System {
                m.role = Role::User;
            }
            m
        })
        .collect();
    Some(normalize(&folded))
}

/// The conversation with every call's arguments as JSON text, as OpenAI clients send
/// them: some templates (DeepSeek V3.1's own) append the arguments to a string, which
/// fails on the object templates usually get. `None` when no turn has a call.
pub(crate) fn arguments_as_text(messages: &[Message]) -> Option<Vec<Message>> {
    if messages.iter().all(|m| m.tool_calls.is_empty()) {
        return None;
    }
    let mut out = messages.to_vec();
    for call in out.iter_mut().flat_map(|m| m.tool_calls.iter_mut()) {
        if !call.arguments.is_string() {
            call.arguments = serde_json::Value::String(call.arguments.to_string());
        }
    }
    Some(out)
}

/// Moves each assistant turn's calls into its text, after what it says, as `text`
/// writes them (for templates that render only a turn's text). The last turn keeps its
/// calls: as text it would read as a prefill to continue. A format without such text
/// leaves the calls where they are.
pub(crate) fn calls_into_text(
    messages: &mut [Message],
    text: impl Fn(&[crate::request::ToolCall]) -> Option<String>,
) {
    let last = messages.len().saturating_sub(1);
    for message in &mut messages[..last] {
        if message.role != Role::Assistant || message.tool_calls.is_empty() {
            continue;
        }
        if let Some(calls) = text(&message.tool_calls) {
            message.content.push_str(&calls);
            message.tool_calls.clear();
        }
    }
}

/// The text the model should continue: a final assistant turn with text and no
/// tool calls is a prefill, not a finished turn.
pub(crate) fn prefill(messages: &[Message]) -> Option<&str> {
    messages
        .last()
        .filter(|m| m.role == Role::Assistant && !m.content.is_empty() && m.tool_calls.is_empty())
        .map(|m| m.content.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::ToolCall;
    use serde_json::json;

    fn msg(role: Role, content: &str) -> Message {
        Message::text(role, content)
    }

    fn call(id: &str) -> ToolCall {
        ToolCall {
            id: id.to_owned(),
            name: "f".to_owned(),
            arguments: json!({}),
        }
    }

    fn tool_result(id: &str, content: &str) -> Message {
        Message {
            tool_call_id: Some(id.to_owned()),
            ..msg(Role::Tool, content)
        }
    }

    #[test]
    fn a_system_turn_after_the_user_moves_above_it() {
        // Claude Code's first request, then its second one: the same prefix either way.
        let first = normalize(&[
            msg(Role::System, "main"),
            msg(Role::User, "prompt"),
            msg(Role::System, "env"),
        ]);
        let roles: Vec<_> = first.iter().map(|m| (m.role, m.content.as_str())).collect();
        assert_eq!(
            roles,
            vec![(Role::System, "main"), (Role::User, "env\n\nprompt")]
        );
        let second = normalize(&[
            msg(Role::System, "main"),
            msg(Role::User, "prompt"),
            msg(Role::System, "env"),
            msg(Role::Assistant, "calling"),
            msg(Role::User, "more"),
        ]);
        assert_eq!(second[..2], first[..]);
        // After an assistant turn a system turn stays where it is.
        let later = normalize(&[
            msg(Role::User, "q"),
            msg(Role::Assistant, "a"),
            msg(Role::System, "note"),
            msg(Role::User, "q2"),
        ]);
        assert_eq!(later[2].role, Role::System);
    }

    #[test]
    fn merges_consecutive_same_role_turns_with_a_blank_line() {
        let merged = normalize(&[
            msg(Role::System, "a"),
            msg(Role::System, "b"),
            msg(Role::User, "q1"),
            msg(Role::User, ""),
            msg(Role::User, "q2"),
            msg(Role::Assistant, "x"),
            msg(Role::Assistant, "y"),
        ]);
        assert_eq!(
            merged,
            vec![
                msg(Role::System, "a\n\nb"),
                msg(Role::User, "q1\n\nq2"),
                msg(Role::Assistant, "x\n\ny"),
            ]
        );
    }

    #[test]
    fn concatenates_assistant_tool_calls_and_reasoning() {
        let first = Message {
            reasoning: Some("think 1".into()),
            tool_calls: vec![call("a")],
            ..msg(Role::Assistant, "")
        };
        let second = Message {
            reasoning: Some("think 2".into()),
            tool_calls: vec![call("b")],
            ..msg(Role::Assistant, "then")
        };
        let merged = normalize(&[msg(Role::User, "q"), first, second]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[1].content, "then");
        assert_eq!(merged[1].reasoning.as_deref(), Some("think 1\n\nthink 2"));
        let ids: Vec<&str> = merged[1].tool_calls.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
    }

    #[test]
    fn never_merges_tool_results() {
        let conversation = [
            msg(Role::User, "q"),
            Message {
                tool_calls: vec![call("a"), call("b")],
                ..msg(Role::Assistant, "")
            },
            tool_result("a", "1"),
            tool_result("b", "2"),
        ];
        assert_eq!(normalize(&conversation), conversation.to_vec());
    }

    #[test]
    fn drops_a_trailing_empty_assistant_turn() {
        let merged = normalize(&[msg(Role::User, "q"), msg(Role::Assistant, "")]);
        assert_eq!(merged, vec![msg(Role::User, "q")]);
    }

    #[test]
    fn folds_mid_system_into_the_previous_user_turn_when_last() {
        let conversation = [
            msg(Role::System, "sys"),
            msg(Role::User, "q"),
            msg(Role::Assistant, "a"),
            msg(Role::System, "reminder"),
        ];
        assert_eq!(
            fold_mid_system(&conversation),
            Some(vec![
                msg(Role::System, "sys"),
                msg(Role::User, "q"),
                msg(Role::Assistant, "a"),
                msg(Role::User, "reminder")
            ])
        );
    }

    #[test]
    fn folds_mid_system_into_the_next_user_turn() {
        let conversation = [
            msg(Role::User, "q"),
            msg(Role::Assistant, "a"),
            msg(Role::System, "reminder"),
            msg(Role::User, "q2"),
        ];
        assert_eq!(
            fold_mid_system(&conversation),
            Some(vec![
                msg(Role::User, "q"),
                msg(Role::Assistant, "a"),
                msg(Role::User, "reminder\n\nq2"),
            ])
        );
    }

    #[test]
    fn nothing_to_fold_without_a_mid_system_turn() {
        let conversation = [msg(Role::System, "s"), msg(Role::User, "q")];
        assert_eq!(fold_mid_system(&conversation), None);
    }

    #[test]
    fn prefill_is_a_final_assistant_text_without_tool_calls() {
        let user = msg(Role::User, "q");
        assert_eq!(
            prefill(&[user.clone(), msg(Role::Assistant, "Sure")]),
            Some("Sure")
        );
        assert_eq!(prefill(std::slice::from_ref(&user)), None);
        let calling = Message {
            tool_calls: vec![call("a")],
            ..msg(Role::Assistant, "Let me check")
        };
        assert_eq!(prefill(&[user, calling]), None);
    }
}
