//! Stop sequences matched on generated text, across token boundaries.
//!
//! Text that might be the start of a stop sequence is held back until it is known
//! either to complete one (then it is cut) or not to (then it is released).

/// Incremental matcher over the generated text of one request.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// The result of feeding text to a [`StopMatcher`].
#[derive(Debug, PartialEq, Eq)]
pub enum StopOutcome {
    /// No stop sequence yet; this text can be sent.
    Continue(String),
    /// A stop sequence matched: send `text`, then end with `sequence`.
    Stopped { text: String, sequence: String },
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Feed newly generated text.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Continue(text.to_owned());
        }
        self.held.push_str(text);
        // The earliest match wins; on a tie the longer sequence does.
        let found = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|at| (at, s)))
            .min_by(|(a, s), (b, t)| a.cmp(b).then(t.len().cmp(&s.len())));
        if let Some((at, sequence)) = found {
            let sequence = sequence.clone();
            let text = self.held[..at].to_owned();
            self.held.clear();
            return StopOutcome::Stopped { text, sequence };
        }
        let keep = self.longest_partial_suffix();
        let release = self.held.len() - keep;
        let out = self.held[..release].to_owned();
        self.held.drain(..release);
        StopOutcome::Continue(out)
    }

    /// Release whatever is still held back (generation ended without a match).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length in bytes of the longest suffix of the held text that begins some stop sequence.
    fn longest_partial_suffix(&self) -> usize {
        let held = self.held.as_str();
        let mut best = 0;
        for stop in &self.stops {
            let max = stop.len().saturating_sub(1).min(held.len());
            for len in (best + 1..=max).rev() {
                let start = held.len() - len;
                if held.is_char_boundary(start) && stop.starts_with(&held[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<String>) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut m = StopMatcher::new(&stops);
        let mut out = String::new();
        for p in pieces {
            match m.push(p) {
                StopOutcome::Continue(t) => out.push_str(&t),
                StopOutcome::Stopped { text, sequence } => {
                    out.push_str(&text);
                    return (out, Some(sequence));
                }
            }
        }
        out.push_str(&m.finish());
        (out, None)
    }

    #[test]
    fn no_stops_passes_everything() {
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), None));
    }

    #[test]
    fn match_inside_one_piece_is_cut() {
        assert_eq!(
            run(&["STOP"], &["helloSTOPworld"]),
            ("hello".into(), Some("STOP".into()))
        );
    }

    #[test]
    fn match_across_token_boundaries() {
        assert_eq!(
            run(&["</answer>"], &["42<", "/ans", "wer", ">tail"]),
            ("42".into(), Some("</answer>".into()))
        );
    }

    #[test]
    fn partial_match_is_released_when_it_fails() {
        let stops = vec!["abc".to_string()];
        let mut m = StopMatcher::new(&stops);
        assert_eq!(m.push("xa"), StopOutcome::Continue("x".into()));
        assert_eq!(m.push("b"), StopOutcome::Continue("".into()));
        assert_eq!(m.push("d"), StopOutcome::Continue("abd".into()));
    }

    #[test]
    fn held_text_is_flushed_at_the_end() {
        assert_eq!(run(&["abc"], &["1ab"]), ("1ab".into(), None));
    }

    #[test]
    fn earliest_of_several_wins() {
        assert_eq!(
            run(&["world", "lo"], &["hello world"]),
            ("hel".into(), Some("lo".into()))
        );
    }

    #[test]
    fn multibyte_text_is_never_split_inside_a_character() {
        assert_eq!(run(&["é!"], &["café", "é", "?"]), ("caféé?".into(), None));
        assert_eq!(
            run(&["日本語"], &["こ日", "本", "語x"]),
            ("こ".into(), Some("日本語".into()))
        );
    }

    #[test]
    fn empty_stop_sequences_are_ignored() {
        assert_eq!(run(&[""], &["abc"]), ("abc".into(), None));
    }
}
