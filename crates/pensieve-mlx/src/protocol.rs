//! The worker protocol, version 1 (`python/pensieve_mlx/PROTOCOL.md`): frames, ops, and
//! the encoding of each request and response. Pure: no I/O here.

use pensieve_engine::{BatchToken, SeqId, TokenId};

pub const VERSION: u32 = 1;

/// Request ops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Hello = 1,
    StartSampling = 2,
    Decode = 3,
    Sample = 4,
    Logprobs = 5,
    Truncate = 6,
    Release = 7,
    Save = 8,
    Restore = 9,
    Share = 10,
    Shutdown = 11,
    DecodeMedia = 12,
}

/// A malformed response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed worker response: {0}")]
pub struct Malformed(pub String);

/// A request payload: the op, then its body.
pub fn request(op: Op, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(1 + body.len());
    payload.push(op as u8);
    payload.extend_from_slice(body);
    payload
}

/// A whole frame: the payload's length, then the payload.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// A response payload split into the op's result, or the worker's error message.
pub fn response(payload: &[u8]) -> Result<Result<&[u8], String>, Malformed> {
    match payload.split_first() {
        Some((0, body)) => Ok(Ok(body)),
        Some((1, message)) => Ok(Err(String::from_utf8_lossy(message).into_owned())),
        Some((s, _)) => Err(Malformed(format!("status {s}"))),
        None => Err(Malformed("empty response".into())),
    }
}

pub fn hello(model: &str, sequences: usize, context: u32) -> Vec<u8> {
    let mut body = VERSION.to_le_bytes().to_vec();
    let json = serde_json::json!({"model": model, "sequences": sequences, "context": context});
    body.extend_from_slice(json.to_string().as_bytes());
    body
}

/// What the worker says about the loaded model.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Hello {
    pub version: u32,
    pub vocab_size: usize,
    pub can_truncate: bool,
    pub kv_bytes_per_token: u64,
    pub model_type: String,
    #[serde(default)]
    pub mlx: String,
    #[serde(default)]
    pub mlx_lm: String,
    /// A vision model's image layout (mlx-vlm loaded it); absent for a text model.
    #[serde(default)]
    pub vision: Option<HelloVision>,
}

/// How an image sits in a prompt, as mlx-vlm's processor expands the model's placeholder:
/// the text `before`, the image token `positions` times, the text `after`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct HelloVision {
    pub image_token_id: TokenId,
    /// The image token's text (`<image>`), a special token of the tokenizer.
    pub image_token: String,
    pub positions: usize,
    #[serde(default)]
    pub before: String,
    #[serde(default)]
    pub after: String,
    #[serde(default)]
    pub mlx_vlm: String,
}

pub fn parse_hello(body: &[u8]) -> Result<Hello, Malformed> {
    serde_json::from_slice(body).map_err(|e| Malformed(format!("HELLO: {e}")))
}

pub fn seq_json(seq: SeqId, json: &serde_json::Value) -> Vec<u8> {
    let mut body = seq.to_le_bytes().to_vec();
    body.extend_from_slice(json.to_string().as_bytes());
    body
}

pub fn decode(batch: &[BatchToken]) -> Vec<u8> {
    let mut body = Vec::with_capacity(4 + batch.len() * 13);
    body.extend_from_slice(&(batch.len() as u32).to_le_bytes());
    for t in batch {
        body.extend_from_slice(&t.seq.to_le_bytes());
        body.extend_from_slice(&t.token.to_le_bytes());
        body.extend_from_slice(&t.pos.to_le_bytes());
        body.push(u8::from(t.logits));
    }
    body
}

/// DECODE's answer: `(batch index, sampled token)` of each entry that kept its logits.
pub fn parse_decode(body: &[u8]) -> Result<Vec<(usize, TokenId)>, Malformed> {
    let mut r = Reader(body);
    let n = r.u32()? as usize;
    let mut out = Vec::with_capacity(n.min(body.len() / 8));
    for _ in 0..n {
        out.push((r.u32()? as usize, r.i32()?));
    }
    r.end()?;
    Ok(out)
}

pub fn sample(seq: SeqId, index: usize, mask: &[u32]) -> Vec<u8> {
    let mut body = Vec::with_capacity(12 + mask.len() * 4);
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(&(index as u32).to_le_bytes());
    body.extend_from_slice(&(mask.len() as u32).to_le_bytes());
    for w in mask {
        body.extend_from_slice(&w.to_le_bytes());
    }
    body
}

pub fn parse_token(body: &[u8]) -> Result<TokenId, Malformed> {
    let mut r = Reader(body);
    let t = r.i32()?;
    r.end()?;
    Ok(t)
}

pub fn logprobs(index: usize, token: TokenId, top: usize) -> Vec<u8> {
    let mut body = (index as u32).to_le_bytes().to_vec();
    body.extend_from_slice(&token.to_le_bytes());
    body.extend_from_slice(&(top as u32).to_le_bytes());
    body
}

pub fn parse_logprobs(body: &[u8]) -> Result<(f32, Vec<(TokenId, f32)>), Malformed> {
    let mut r = Reader(body);
    let logprob = r.f32()?;
    let k = r.u32()? as usize;
    let mut top = Vec::with_capacity(k.min(body.len() / 8));
    for _ in 0..k {
        top.push((r.i32()?, r.f32()?));
    }
    r.end()?;
    Ok((logprob, top))
}

/// A body of `u32` fields (TRUNCATE, RELEASE, SAVE, SHARE).
pub fn words(fields: &[u32]) -> Vec<u8> {
    fields.iter().flat_map(|f| f.to_le_bytes()).collect()
}

/// DECODE_MEDIA: one image (its encoded bytes) into `seq` at `pos..pos + len`.
pub fn decode_media(seq: SeqId, pos: u32, len: u32, image: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(12 + image.len());
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(&pos.to_le_bytes());
    body.extend_from_slice(&len.to_le_bytes());
    body.extend_from_slice(image);
    body
}

pub fn restore(seq: SeqId, snapshot: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(4 + snapshot.len());
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(snapshot);
    body
}

pub fn parse_flag(body: &[u8]) -> Result<bool, Malformed> {
    match body {
        [0] => Ok(false),
        [1] => Ok(true),
        _ => Err(Malformed("expected one flag byte".into())),
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take4(&mut self) -> Result<[u8; 4], Malformed> {
        let (head, rest) = self
            .0
            .split_first_chunk::<4>()
            .ok_or_else(|| Malformed("truncated".into()))?;
        self.0 = rest;
        Ok(*head)
    }

    fn u32(&mut self) -> Result<u32, Malformed> {
        self.take4().map(u32::from_le_bytes)
    }

    fn i32(&mut self) -> Result<i32, Malformed> {
        self.take4().map(i32::from_le_bytes)
    }

    fn f32(&mut self) -> Result<f32, Malformed> {
        self.take4().map(f32::from_le_bytes)
    }

    fn end(&self) -> Result<(), Malformed> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Malformed(format!("{} bytes left over", self.0.len())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_request_layout() {
        let batch = [
            BatchToken {
                seq: 2,
                token: 7,
                pos: 0,
                logits: false,
            },
            BatchToken {
                seq: 2,
                token: -1,
                pos: 1,
                logits: true,
            },
        ];
        let body = decode(&batch);
        assert_eq!(body.len(), 4 + 2 * 13);
        assert_eq!(&body[..4], &2u32.to_le_bytes());
        assert_eq!(&body[4..8], &2u32.to_le_bytes());
        assert_eq!(&body[8..12], &7i32.to_le_bytes());
        assert_eq!(&body[12..16], &0u32.to_le_bytes());
        assert_eq!(body[16], 0);
        assert_eq!(&body[21..25], &(-1i32).to_le_bytes());
        assert_eq!(body[29], 1);
    }

    #[test]
    fn frames_and_statuses() {
        let payload = request(Op::Release, &words(&[3]));
        assert_eq!(payload, vec![7, 3, 0, 0, 0]);
        assert_eq!(frame(&payload), vec![5, 0, 0, 0, 7, 3, 0, 0, 0]);
        assert_eq!(response(&[0, 9]), Ok(Ok(&[9u8][..])));
        assert_eq!(response(b"\x01bad pos"), Ok(Err("bad pos".into())));
        assert!(response(&[]).is_err());
        assert!(response(&[2]).is_err());
    }

    #[test]
    fn responses_parse_and_reject_leftovers() {
        let mut body = 2u32.to_le_bytes().to_vec();
        for (i, t) in [(1u32, 42i32), (3, 7)] {
            body.extend_from_slice(&i.to_le_bytes());
            body.extend_from_slice(&t.to_le_bytes());
        }
        assert_eq!(parse_decode(&body), Ok(vec![(1, 42), (3, 7)]));
        body.push(0);
        assert!(parse_decode(&body).is_err());
        assert!(parse_decode(&body[..10]).is_err());

        let mut lp = (-0.5f32).to_le_bytes().to_vec();
        lp.extend_from_slice(&1u32.to_le_bytes());
        lp.extend_from_slice(&5i32.to_le_bytes());
        lp.extend_from_slice(&(-0.25f32).to_le_bytes());
        assert_eq!(parse_logprobs(&lp), Ok((-0.5, vec![(5, -0.25)])));
        assert_eq!(parse_flag(&[1]), Ok(true));
        assert!(parse_flag(&[]).is_err());
    }

    #[test]
    fn hello_carries_the_version_first() {
        let body = hello("/m", 4, 8192);
        assert_eq!(&body[..4], &1u32.to_le_bytes());
        let json: serde_json::Value = serde_json::from_slice(&body[4..]).unwrap();
        assert_eq!(json["sequences"], 4);
        let h = parse_hello(
            br#"{"version":1,"vocab_size":10,"can_truncate":true,"kv_bytes_per_token":8,"model_type":"llama"}"#,
        )
        .unwrap();
        assert_eq!(h.vocab_size, 10);
        assert_eq!(h.vision, None);
    }

    #[test]
    fn hello_of_a_vision_model() {
        let h = parse_hello(
            br#"{"version":1,"vocab_size":10,"can_truncate":false,"kv_bytes_per_token":8,
                "model_type":"gemma3","vision":{"image_token_id":7,"image_token":"<img>",
                "positions":16,"before":"\n\n<boi>","after":"<eoi>\n\n","mlx_vlm":"0.7.10"}}"#,
        )
        .unwrap();
        let v = h.vision.unwrap();
        assert_eq!((v.image_token_id, v.positions), (7, 16));
        assert_eq!(
            (v.before.as_str(), v.after.as_str()),
            ("\n\n<boi>", "<eoi>\n\n")
        );
        // A vision object without its token is malformed, not a text model.
        assert!(parse_hello(
            br#"{"version":1,"vocab_size":10,"can_truncate":false,"kv_bytes_per_token":8,
                "model_type":"llava","vision":{"positions":16}}"#
        )
        .is_err());
    }

    #[test]
    fn decode_media_request_layout() {
        let payload = request(Op::DecodeMedia, &decode_media(3, 17, 64, b"\x89PNG"));
        assert_eq!(payload[0], 12);
        assert_eq!(&payload[1..5], &3u32.to_le_bytes());
        assert_eq!(&payload[5..9], &17u32.to_le_bytes());
        assert_eq!(&payload[9..13], &64u32.to_le_bytes());
        assert_eq!(&payload[13..], b"\x89PNG");
    }
}
