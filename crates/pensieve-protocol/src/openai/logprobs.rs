//! `logprobs.content`: each generated token with its log-probability and the most
//! likely alternatives, as OpenAI reports them.

use pensieve_engine::TokenLogprob;
use serde::Serialize;

/// JSON has no infinity: OpenAI's stand-in for a token the model rules out.
const FLOOR: f32 = -9999.0;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogprobEntry {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

fn finite(logprob: f32) -> f32 {
    if logprob.is_finite() {
        logprob.max(FLOOR)
    } else {
        FLOOR
    }
}

impl From<&TokenLogprob> for LogprobEntry {
    fn from(t: &TokenLogprob) -> Self {
        LogprobEntry {
            token: String::from_utf8_lossy(&t.token).into_owned(),
            logprob: finite(t.logprob),
            bytes: t.token.clone(),
            top_logprobs: t
                .top
                .iter()
                .map(|(bytes, logprob)| TopLogprob {
                    token: String::from_utf8_lossy(bytes).into_owned(),
                    logprob: finite(*logprob),
                    bytes: bytes.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_entry_has_text_bytes_and_finite_numbers() {
        let t = TokenLogprob {
            token: b" hi".to_vec(),
            logprob: -0.5,
            top: vec![
                (b" hi".to_vec(), -0.5),
                (vec![0xE2, 0x82], f32::NEG_INFINITY),
            ],
        };
        let v = serde_json::to_value(LogprobEntry::from(&t)).unwrap();
        assert_eq!(v["token"], " hi");
        assert_eq!(v["bytes"], json!([32, 104, 105]));
        assert_eq!(v["top_logprobs"][1]["logprob"], json!(-9999.0));
        assert_eq!(v["top_logprobs"][1]["bytes"], json!([0xE2, 0x82]));
    }
}
