//! A GGUF file's header and metadata as the hub reads them (`pensieve list`/`show`), and the
//! file-name parsing around it. The llama backend does no checks of its own before
//! llama.cpp opens the file, so this reader is all of Pensieve's that sees the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pensieve_hub::gguf;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = gguf::parse_bytes(data) {
        if let Some(ft) = info.file_type {
            let _ = gguf::file_type_name(ft);
        }
    }
    // The same bytes as a file name: the quant tag and split-part parsers.
    let name = String::from_utf8_lossy(data);
    let _ = gguf::quant_in_file_name(&name);
    let _ = gguf::split_part(&name);
});
