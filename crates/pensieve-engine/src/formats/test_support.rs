//! What the format modules' tests share: the fixture folder, the calls a parse made,
//! and driving a grammar over the byte tokenizer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::constrain::{Constraint, Grammars};
use crate::model::{TokenMask, Tokenizer};
use crate::output::Segment;
use crate::request::ToolSpec;
use crate::testing::ByteTokenizer;

/// The template fixtures' folder.
pub(crate) fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/template/fixtures")
}

pub(crate) fn tool(name: &str, parameters: Value) -> ToolSpec {
    ToolSpec {
        name: name.into(),
        description: None,
        parameters,
    }
}

/// The calls in `segments`: name and arguments (which must parse).
pub(crate) fn calls_in(segments: &[Segment]) -> Vec<(String, Value)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for s in segments {
        match s {
            Segment::CallStart { name } => out.push((name.clone(), String::new())),
            Segment::CallArguments(a) => {
                let last = out.last_mut().expect("arguments follow a call's start");
                last.1.push_str(a);
            }
            _ => {}
        }
    }
    out.into_iter()
        .map(|(name, args)| {
            let args = serde_json::from_str(&args).unwrap_or_else(|e| panic!("{args}: {e}"));
            (name, args)
        })
        .collect()
}

/// Feeds `text` to the grammar; whether it took every byte.
pub(crate) fn takes(c: &mut Constraint, text: &str) -> bool {
    ByteTokenizer.encode(text).into_iter().all(|t| {
        let ok = c.mask().is_some_and(|m| TokenMask(m.as_slice()).allows(t));
        if ok {
            c.accept(t);
        }
        ok
    })
}

/// Grammars over the byte tokenizer, no marker tokens.
pub(crate) fn grammars() -> Grammars {
    Grammars::new(&ByteTokenizer, &HashMap::new()).expect("the byte vocabulary compiles")
}
