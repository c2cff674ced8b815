use super::*;
use std::path::PathBuf;

/// Builds GGUF metadata in memory, the way llama.cpp's writer lays it out.
struct Writer(Vec<u8>);

impl Writer {
    fn new(version: u32, tensor_count: u64, kv_count: u64) -> Self {
        let mut w = Writer(b"GGUF".to_vec());
        w.u32(version).u64(tensor_count).u64(kv_count);
        w
    }
    fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn raw(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.extend_from_slice(bytes);
        self
    }
    fn str(&mut self, s: &str) -> &mut Self {
        self.u64(s.len() as u64).raw(s.as_bytes())
    }
    /// A key and its value type; the value follows.
    fn key(&mut self, key: &str, ty: u32) -> &mut Self {
        self.str(key).u32(ty)
    }
    fn kv_str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key, 8).str(value)
    }
    fn kv_u32(&mut self, key: &str, value: u32) -> &mut Self {
        self.key(key, 4).u32(value)
    }
    /// An array of strings: element type, count, strings.
    fn kv_str_array(&mut self, key: &str, items: &[String]) -> &mut Self {
        self.key(key, 9).u32(8).u64(items.len() as u64);
        for s in items {
            self.str(s);
        }
        self
    }
}

fn parse_bytes(bytes: &[u8]) -> Result<GgufInfo, Fault> {
    parse(bytes, bytes.len() as u64)
}

/// A small file with every value type, string and nested arrays, and the keys `GgufInfo` keeps.
fn sample(tokens: usize) -> Vec<u8> {
    let vocab: Vec<String> = (0..tokens).map(|i| format!("tok{i}")).collect();
    let mut w = Writer::new(3, 7, 20);
    w.kv_str("general.architecture", "llama")
        .kv_str("general.name", "Tiny Llama")
        .kv_str("general.size_label", "135M")
        .kv_u32("llama.context_length", 4096)
        .kv_u32("general.file_type", 15)
        .kv_str("tokenizer.chat_template", "{{ messages }}")
        .kv_str_array("tokenizer.ggml.tokens", &vocab)
        .key("llama.attention.sliding_window", 10)
        .u64(512)
        .key("split.count", 2)
        .raw(&3u16.to_le_bytes())
        .key("general.parameter_count", 11)
        .raw(&134_515_008i64.to_le_bytes())
        .key("u8", 0)
        .raw(&[7])
        .key("i8", 1)
        .raw(&[0xff])
        .key("i16", 3)
        .raw(&(-2i16).to_le_bytes())
        .key("i32", 5)
        .raw(&(-3i32).to_le_bytes())
        .key("f32", 6)
        .raw(&1.5f32.to_le_bytes())
        .key("bool", 7)
        .raw(&[1])
        .key("f64", 12)
        .raw(&2.5f64.to_le_bytes());
    // tokenizer.ggml.scores-like: 5 f32.
    w.key("scores", 9).u32(6).u64(5).raw(&[0u8; 20]);
    // Merges-like nested array: [[1, 2], [3]] of i32.
    w.key("nested", 9).u32(9).u64(2);
    w.u32(5).u64(2).u32(1).u32(2);
    w.u32(5).u64(1).u32(3);
    // An empty string array.
    w.kv_str_array("general.tags", &[]);
    w.0
}

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("pensieve-hub-{}-{name}", std::process::id()));
    std::fs::write(&path, bytes).expect("write temp file");
    path
}

#[test]
fn reads_synthetic_v3_file() {
    let path = temp_file("synthetic.gguf", &sample(150_000));
    let info = read_info(&path);
    let _ = std::fs::remove_file(&path);
    let info = info.expect("parse");
    assert_eq!(
        info,
        GgufInfo {
            version: 3,
            tensor_count: 7,
            architecture: Some("llama".into()),
            name: Some("Tiny Llama".into()),
            context_length: Some(4096),
            file_type: Some(15),
            parameter_count: Some(134_515_008),
            size_label: Some("135M".into()),
            chat_template: Some("{{ messages }}".into()),
            vocab_size: Some(150_000),
            split_count: Some(3),
            sliding_window: Some(512),
        }
    );
}

#[test]
fn reads_v2_and_absent_keys() {
    let mut w = Writer::new(2, 0, 1);
    w.kv_str("general.architecture", "qwen2");
    let info = parse_bytes(&w.0).expect("parse");
    assert_eq!(info.version, 2);
    assert_eq!(info.architecture.as_deref(), Some("qwen2"));
    assert_eq!(
        (info.context_length, info.vocab_size, info.split_count),
        (None, None, None)
    );
}

#[test]
fn every_truncation_is_an_error() {
    let full = sample(50);
    assert!(parse_bytes(&full).is_ok());
    for n in 0..full.len() {
        match parse_bytes(&full[..n]) {
            Err(Fault::Truncated) => {}
            other => panic!("prefix of {n} bytes: {other:?}"),
        }
    }
}

#[test]
fn truncated_file_reports_path() {
    let full = sample(150_000);
    let path = temp_file("truncated.gguf", &full[..full.len() / 2]);
    let result = read_info(&path);
    let _ = std::fs::remove_file(&path);
    match result {
        Err(e @ GgufError::Truncated { .. }) => assert!(e.to_string().contains("truncated.gguf")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn absurd_lengths_are_refused_without_allocating() {
    // A key claiming u64::MAX bytes.
    let mut w = Writer::new(3, 0, 1);
    w.u64(u64::MAX).raw(&[0; 16]);
    assert!(matches!(parse_bytes(&w.0), Err(Fault::Corrupt(_))));
    // A string value claiming more than the file holds.
    let mut w = Writer::new(3, 0, 1);
    w.key("k", 8).u64(1 << 40).raw(b"abc");
    assert!(matches!(parse_bytes(&w.0), Err(Fault::Corrupt(_))));
    let mut w = Writer::new(3, 0, 1);
    w.key("k", 8).u64(1000).raw(b"abc");
    assert!(matches!(parse_bytes(&w.0), Err(Fault::Truncated)));
    // Arrays whose count cannot fit, and one whose byte size overflows u64.
    for elem in [8, 9, 4, 12] {
        let mut w = Writer::new(3, 0, 1);
        w.key("k", 9).u32(elem).u64(u64::MAX / 2);
        assert!(
            matches!(parse_bytes(&w.0), Err(Fault::Truncated)),
            "element type {elem}"
        );
    }
    // A kv count no file of this size could hold.
    assert!(matches!(
        parse_bytes(&Writer::new(3, 0, u64::MAX).0),
        Err(Fault::Truncated)
    ));
    // Even when the reader's stated length lies, short data ends in an error.
    let mut w = Writer::new(3, 0, 1);
    w.key("k", 9).u32(8).u64(1 << 40).str("only one");
    assert!(matches!(parse(&w.0[..], u64::MAX), Err(Fault::Truncated)));
}

#[test]
fn bad_headers_and_types() {
    assert!(matches!(
        parse_bytes(b"GGML\x03\0\0\0"),
        Err(Fault::NotGguf)
    ));
    assert!(matches!(
        parse_bytes(&Writer::new(1, 0, 0).0),
        Err(Fault::Version(1))
    ));
    // A big-endian file reads as a huge version.
    let mut be = b"GGUF".to_vec();
    be.extend_from_slice(&3u32.to_be_bytes());
    assert!(matches!(parse_bytes(&be), Err(Fault::Version(_))));
    let mut w = Writer::new(3, 0, 1);
    w.key("k", 13).u32(0);
    assert!(matches!(parse_bytes(&w.0), Err(Fault::Corrupt(_))));
    let mut w = Writer::new(3, 0, 1);
    w.key("k", 9).u32(42).u64(1).u32(0);
    assert!(matches!(parse_bytes(&w.0), Err(Fault::Corrupt(_))));
    // Arrays nested deeper than any real file, which would otherwise recurse without bound.
    let mut w = Writer::new(3, 0, 1);
    w.key("k", 9);
    for _ in 0..1000 {
        w.u32(9).u64(1);
    }
    w.u32(0).u64(0);
    assert!(matches!(parse_bytes(&w.0), Err(Fault::Corrupt(_))));
}

#[test]
fn missing_file_is_io_error() {
    let err = read_info(Path::new("/nonexistent/model.gguf")).expect_err("missing");
    assert!(matches!(err, GgufError::Io { .. }));
}

#[test]
fn file_type_names() {
    assert_eq!(file_type_name(0), Some("F32"));
    assert_eq!(file_type_name(3), Some("Q4_1"));
    assert_eq!(file_type_name(15), Some("Q4_K_M"));
    assert_eq!(file_type_name(30), Some("IQ4_XS"));
    assert_eq!(file_type_name(32), Some("BF16"));
    assert_eq!(file_type_name(38), Some("MXFP4"));
    // Removed from llama.cpp: Q4_1_SOME_F16, Q4_2, Q4_3 and the ARM repacks.
    for gone in [4, 5, 6, 33, 34, 35, 1024] {
        assert_eq!(file_type_name(gone), None, "{gone}");
    }
}

#[test]
fn quant_tags_in_file_names() {
    let cases = [
        (
            "qwen2.5-coder-7b-instruct-q4_k_m-00001-of-00002.gguf",
            Some("Q4_K_M"),
        ),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", Some("Q4_1")),
        ("model-f16.gguf", Some("F16")),
        ("model-BF16.gguf", Some("BF16")),
        ("ggml-model-IQ4_XS.gguf", Some("IQ4_XS")),
        ("Qwen3-30B-A3B-UD-Q4_K_XL.gguf", Some("Q4_K_XL")),
        ("gemma-3-270m-q4_k_m.gguf", Some("Q4_K_M")),
        ("Meta-Llama-3-8B-Instruct-Q4_0_4_4.gguf", Some("Q4_0_4_4")),
        ("model_Q8_0.gguf", Some("Q8_0")),
        ("Q6_K.gguf", Some("Q6_K")),
        ("Llama-3.2-1B-Instruct-IQ3_XXS.gguf", Some("IQ3_XXS")),
        ("gpt-oss-20b-MXFP4.gguf", Some("MXFP4")),
        ("x-TQ1_0.gguf", Some("TQ1_0")),
        ("/models/Q8_0/model.gguf", None),
        ("model.gguf", None),
        ("Qwen2.5-Coder-0.5B-Instruct.gguf", None),
        // Tag-like text inside a word is not a tag.
        ("xq4_0y.gguf", None),
        ("modelF16.gguf", None),
    ];
    for (name, want) in cases {
        assert_eq!(quant_in_file_name(name).as_deref(), want, "{name}");
    }
}

#[test]
fn split_parts() {
    assert_eq!(split_part("name-00001-of-00003.gguf"), Some((1, 3)));
    assert_eq!(
        split_part("Qwen2.5-7B-Q4_K_M-00002-of-00002.GGUF"),
        Some((2, 2))
    );
    assert_eq!(split_part("name-00004-of-00003.gguf"), None);
    assert_eq!(split_part("name-00000-of-00003.gguf"), None);
    assert_eq!(split_part("name-99999-of-99999.gguf"), None); // beyond u16
    assert_eq!(split_part("name-of-00003.gguf"), None);
    assert_eq!(split_part("name-00001-of-00003.bin"), None);
    assert_eq!(split_part("model.gguf"), None);
}

/// The real test models, or `None` (with a note) where they are not installed.
fn test_model(file: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("PENSIEVE_TEST_MODELS")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/pensieve/test-models"))
        })?;
    let path = dir.join(file);
    if path.is_file() {
        Some(path)
    } else {
        eprintln!("skipping: {} not found", path.display());
        None
    }
}

#[test]
fn real_smollm2() {
    let Some(path) = test_model("SmolLM2-135M-Instruct.Q4_1.gguf") else {
        return;
    };
    let info = read_info(&path).expect("parse");
    assert_eq!(info.version, 3);
    assert_eq!(info.tensor_count, 272);
    assert_eq!(info.architecture.as_deref(), Some("llama"));
    assert_eq!(info.context_length, Some(8192));
    assert_eq!(info.file_type, Some(3));
    assert_eq!(info.file_type.and_then(file_type_name), Some("Q4_1"));
    assert_eq!(info.size_label.as_deref(), Some("135M"));
    assert_eq!(info.vocab_size, Some(49152));
    assert!(info
        .chat_template
        .is_some_and(|t| t.contains("<|im_start|>")));
    assert_eq!((info.split_count, info.sliding_window), (None, None));
}

#[test]
fn real_qwen2() {
    let Some(path) = test_model("Qwen2.5-Coder-0.5B-Instruct.gguf") else {
        return;
    };
    let info = read_info(&path).expect("parse");
    assert_eq!(info.architecture.as_deref(), Some("qwen2"));
    assert_eq!(info.context_length, Some(32768));
    assert_eq!(info.file_type.and_then(file_type_name), Some("Q4_K_M"));
    assert_eq!(info.vocab_size, Some(151_936));
    assert!(info.chat_template.is_some());
}

#[test]
fn real_gemma3() {
    let Some(path) = test_model("gemma-3-270m-q4_k_m.gguf") else {
        return;
    };
    let info = read_info(&path).expect("parse");
    assert_eq!(info.architecture.as_deref(), Some("gemma3"));
    assert_eq!(info.context_length, Some(32768));
    assert_eq!(info.sliding_window, Some(512));
    assert_eq!(info.vocab_size, Some(262_144));
    assert_eq!(info.file_type.and_then(file_type_name), Some("Q4_K_M"));
}
