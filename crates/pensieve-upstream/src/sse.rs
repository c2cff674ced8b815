//! Server-sent events out of a response body, as its bytes arrive in pieces of any size
//! (the WHATWG `text/event-stream` rules that OpenAI-compatible servers use: `data:` lines
//! joined by newlines, `event:` names, `:` comments, events ended by a blank line, lines
//! ended by LF, CRLF or CR).

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; None for the default ("message").
    pub event: Option<String>,
    pub data: String,
}

/// Turns body bytes into events; keeps what a piece left unfinished.
#[derive(Debug, Default)]
pub struct SseDecoder {
    /// Bytes of a line not ended yet.
    line: Vec<u8>,
    /// A CR ended the last line: an LF right after it belongs to it.
    after_cr: bool,
    event: Option<String>,
    data: Vec<String>,
}

/// The most a line may grow to before the stream counts as malformed: a server that never
/// ends a line must not fill memory.
const MAX_LINE: usize = 16 << 20;

impl SseDecoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The events `bytes` completes. Err when a line outgrows [`MAX_LINE`].
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>, String> {
        let mut out = Vec::new();
        for &b in bytes {
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                continue;
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_done(&String::from_utf8_lossy(&line)) {
                        out.push(event);
                    }
                }
                _ if self.line.len() >= MAX_LINE => {
                    return Err(format!("a line of over {MAX_LINE} bytes"));
                }
                _ => self.line.push(b),
            }
        }
        Ok(out)
    }

    /// Whether the body stopped inside an event (data not yet ended by a blank line).
    pub fn has_partial_event(&self) -> bool {
        !self.line.is_empty() || !self.data.is_empty()
    }

    fn line_done(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            if self.data.is_empty() {
                self.event = None;
                return None;
            }
            return Some(SseEvent {
                event: self.event.take(),
                data: std::mem::take(&mut self.data).join("\n"),
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "data" => self.data.push(value.to_owned()),
            "event" => self.event = Some(value.to_owned()),
            // `id` and `retry` matter to reconnecting browsers, not here.
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(events: &[SseEvent]) -> Vec<&str> {
        events.iter().map(|e| e.data.as_str()).collect()
    }

    #[test]
    fn events_come_whole_however_the_bytes_are_cut() {
        let body = b": keep-alive\n\ndata: {\"a\":1}\n\ndata: {\"b\":\ndata: 2}\r\n\r\nevent: error\ndata: boom\r\rdata: [DONE]\n\n";
        let want = vec!["{\"a\":1}", "{\"b\":\n2}", "boom", "[DONE]"];
        for cut in 1..body.len() {
            let mut decoder = SseDecoder::new();
            let mut events = decoder.push(&body[..cut]).unwrap();
            events.extend(decoder.push(&body[cut..]).unwrap());
            assert_eq!(data(&events), want, "cut at {cut}");
            assert_eq!(events[2].event.as_deref(), Some("error"));
            assert_eq!(events[0].event, None);
            assert!(!decoder.has_partial_event());
        }
        // Byte by byte.
        let mut decoder = SseDecoder::new();
        let events: Vec<SseEvent> = body
            .iter()
            .flat_map(|b| decoder.push(&[*b]).unwrap())
            .collect();
        assert_eq!(data(&events), want);
    }

    #[test]
    fn a_body_that_stops_mid_event_says_so() {
        let mut decoder = SseDecoder::new();
        assert!(decoder.push(b"data: {\"a\":1}\n").unwrap().is_empty());
        assert!(decoder.has_partial_event());
        let mut decoder = SseDecoder::new();
        assert!(decoder.push(b"data: {\"a\"").unwrap().is_empty());
        assert!(decoder.has_partial_event());
    }

    #[test]
    fn fields_without_a_space_or_a_value_and_unknown_ones() {
        let mut decoder = SseDecoder::new();
        let events = decoder.push(b"id: 7\nretry: 10\ndata:x\ndata\n\n").unwrap();
        assert_eq!(data(&events), vec!["x\n"]);
    }
}
