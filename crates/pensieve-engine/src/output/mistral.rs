//! What follows Mistral's `[TOOL_CALLS]`: since tokenizer v11 a call's name, perhaps
//! `[CALL_ID]` and an id, then `[ARGS]` and the arguments object (one `[TOOL_CALLS]` per
//! call); before, a JSON array of call objects (read by `call`).

use super::call::Call;
use super::json::JsonScanner;
use super::{find_marker, is_tool_name, Found, Mode, OutputParser, Segment};
use super::{MISTRAL_ARGS, MISTRAL_CALLS};

/// How far a name may run without `[ARGS]` before the call is taken for text.
const MAX_HEAD: usize = 256;

impl OutputParser {
    pub(super) fn mistral_head(&mut self, out: &mut Vec<Segment>) -> bool {
        let trimmed = self.held.trim_start();
        if trimmed.is_empty() {
            return false;
        }
        // `[{...}, ...]`, or a lone object: call objects, read as bare ones.
        if trimmed.starts_with('{') || trimmed.starts_with('[') {
            let ws = self.held.len() - trimmed.len();
            let skip = if trimmed.starts_with('[') { ws + 1 } else { ws };
            self.held.drain(..skip);
            self.in_array = true;
            self.in_text = false;
            self.mode = Mode::Text;
            return true;
        }
        // The name runs to `[ARGS]` (or `[CALL_ID]`); some models go straight from the
        // name to its arguments' `{`.
        let name_end = self.held.find(['[', '{']).unwrap_or(self.held.len());
        let name = self.held[..name_end].trim();
        let name_so_far = name.is_empty() || is_tool_name(name);
        let (head, marker_len) = match find_marker(&self.held, &[MISTRAL_ARGS, "{"]) {
            Found::At(at, marker) if name_so_far && !name.is_empty() => (
                self.held[..at].to_owned(),
                if marker == "{" { 0 } else { marker.len() },
            ),
            Found::No { .. } if name_so_far && self.held.len() <= MAX_HEAD => return false,
            _ => {
                tracing::warn!(body = %self.held, "a tool call could not be parsed; returned as text");
                let text = format!("{MISTRAL_CALLS}{}", std::mem::take(&mut self.held));
                self.mode = Mode::Text;
                self.emit(out, Segment::Text(text));
                return false;
            }
        };
        let name = name.to_owned();
        self.held.drain(..head.len() + marker_len);
        self.in_text = false;
        out.push(Segment::CallStart { name });
        // The call is its arguments: it ends with them.
        self.mode = Mode::Call(Call::arguments_only(JsonScanner::default()));
        true
    }
}
