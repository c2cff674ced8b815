//! Where the client's cache breakpoints fall in the rendered prompt.
//!
//! A breakpoint names a place in the conversation (after a message's text, or after the
//! system prompt and the tools); the prefix cache needs a place in the prompt text. So
//! each one becomes a mark of private-use characters (`\u{E000}2\u{E001}` for the third)
//! in the conversation, the template renders it where it renders the text around it,
//! and the marks are cut out again. A mark goes before a message's trailing white space
//! (templates often trim it) and after the preamble's parts that are the same for every
//! session ([`super::stable`]). The prompt must come out exactly as it does without the
//! marks (a template that treats the text in some other way, or drops it, loses the
//! breakpoint, never changes the prompt): the caller compares the two.

use crate::request::{Breakpoint, Message, Role};

const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

/// The mark of the `index`th breakpoint.
pub(crate) fn mark(index: usize) -> String {
    format!("{OPEN}{index}{CLOSE}")
}

/// The conversation with a mark at each `After` breakpoint of a message with text (a
/// breakpoint on one without text is dropped); `None` when the conversation
/// already holds the characters marks are made of.
pub(crate) fn place(messages: &[Message], breakpoints: &[Breakpoint]) -> Option<Vec<Message>> {
    if messages.iter().any(|m| m.content.contains([OPEN, CLOSE])) {
        return None;
    }
    let mut out = messages.to_vec();
    for (i, point) in breakpoints.iter().enumerate() {
        if let Breakpoint::After(at) = *point {
            // Text where there was none would change how templates write the turn.
            if let Some(message) = out.get_mut(at).filter(|m| !m.content.trim().is_empty()) {
                let end = message.content.trim_end().len();
                message.content.insert_str(end, &mark(i));
            }
        }
    }
    Some(out)
}

/// Put the preamble's mark at the start of the first turn after the system prompt (after
/// its leading white space), unless [`super::stable`] placed it already.
pub(crate) fn place_preamble(conversation: &mut [Message], mark: &str) {
    if conversation.iter().any(|m| m.content.contains(mark)) {
        return;
    }
    if let Some(first) = conversation.iter_mut().find(|m| m.role != Role::System) {
        let start = first.content.len() - first.content.trim_start().len();
        first.content.insert_str(start, mark);
    }
}

/// The prompt without its marks, and the byte offset in it of each breakpoint's first
/// mark, by the breakpoint's index.
pub(crate) fn strip(marked: &str) -> (String, Vec<(usize, usize)>) {
    let mut clean = String::with_capacity(marked.len());
    let mut found: Vec<(usize, usize)> = Vec::new();
    let mut rest = marked;
    while let Some(open) = rest.find(OPEN) {
        clean.push_str(&rest[..open]);
        let after = &rest[open + OPEN.len_utf8()..];
        let index = after
            .find(CLOSE)
            .and_then(|close| Some((after[..close].parse::<usize>().ok()?, close)));
        match index {
            Some((index, close)) => {
                if !found.iter().any(|(i, _)| *i == index) {
                    found.push((index, clean.len()));
                }
                rest = &after[close + CLOSE.len_utf8()..];
            }
            None => {
                // Not one of ours: keep it, and the caller's comparison fails.
                clean.push(OPEN);
                rest = after;
            }
        }
    }
    clean.push_str(rest);
    (clean, found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_go_before_trailing_space_and_come_out_again() {
        let messages = vec![
            Message::text(Role::System, "be brief\n"),
            Message::text(Role::User, "hi"),
        ];
        let marked = place(&messages, &[Breakpoint::After(0), Breakpoint::After(1)]).unwrap();
        assert_eq!(marked[0].content, format!("be brief{}\n", mark(0)));
        let rendered = format!(
            "<s>{}</s><u>{}</u>",
            marked[0].content.trim(),
            marked[1].content
        );
        let (clean, found) = strip(&rendered);
        assert_eq!(clean, "<s>be brief</s><u>hi</u>");
        assert_eq!(
            found,
            vec![(0, "<s>be brief".len()), (1, "<s>be brief</s><u>hi".len())]
        );
    }

    #[test]
    fn the_preamble_mark_opens_the_first_turn_after_the_system_prompt() {
        let mut conversation = vec![
            Message::text(Role::System, "rules"),
            Message::text(Role::User, "\n\nquestion"),
        ];
        place_preamble(&mut conversation, &mark(3));
        assert_eq!(conversation[1].content, format!("\n\n{}question", mark(3)));
    }

    #[test]
    fn a_conversation_holding_mark_characters_gets_no_marks() {
        let messages = vec![Message::text(Role::User, "odd \u{E000} text")];
        assert!(place(&messages, &[Breakpoint::After(0)]).is_none());
        // A stray character in a rendered prompt is kept (the comparison then fails).
        assert_eq!(strip("a\u{E000}b").0, "a\u{E000}b");
    }
}
