//! The prefix cache's file reader (`--cache-dir`) over arbitrary bytes: whatever a crash,
//! a bad disk or another program left in a file, reading it is an error or a snapshot
//! whose checksum held, never a panic or an allocation its length fields alone ask for.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pensieve_engine::cache::read_snapshot_file(data, "fuzz-model");
});
