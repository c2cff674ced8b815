//! The model `pensieve serve` picks when none is named: a coding model with tool calling
//! and at least 32k context (what Claude Code needs), sized to the machine's memory, in
//! the format of the engine the platform runs best.

use crate::paths;

/// `$PENSIEVE_RECOMMENDED_MODEL` (to pin it), else [`for_memory`] of this machine: MLX
/// 4-bit on Apple Silicon once `pensieve setup mlx` has run, GGUF elsewhere.
pub fn recommended_model() -> String {
    if let Some(pinned) = std::env::var("PENSIEVE_RECOMMENDED_MODEL")
        .ok()
        .filter(|m| !m.trim().is_empty())
    {
        return pinned;
    }
    let gib = total_memory().map_or(16, |b| b >> 30);
    let mlx =
        cfg!(all(target_os = "macos", target_arch = "aarch64")) && paths::mlx_python().exists();
    for_memory(gib, mlx).to_owned()
}

/// Today's tool-calling coding models by memory (GiB the system reports: a 24 GB machine
/// says 23), each with room left for Claude Code's 32k-token context and the system:
/// - 22 GiB and more: Qwen3-Coder-30B-A3B (an 18.6 GB Q4_K_M, 3B active parameters, so
///   it decodes fast on a CPU too), the model the Ollama, LM Studio and Unsloth Claude
///   Code guides all name for 24-32 GB;
/// - 14 to 21: gpt-oss-20b (11.6 GB), the 16 GB model of those guides;
/// - 7 to 13: Qwen3.5-9B (5.7 GB); below that Qwen3.5-4B (2.7 GB): the small Qwen3.5
///   models call tools in the same XML as Qwen3-Coder.
///
/// Unsloth's repositories hold the GGUF quants of all four (and, for Qwen3.5, the only
/// ones); mlx-community's the MLX 4-bit conversions.
pub fn for_memory(gib: u64, mlx: bool) -> &'static str {
    match (gib, mlx) {
        (22.., false) => "unsloth/Qwen3-Coder-30B-A3B-Instruct-GGUF:Q4_K_M",
        (14..=21, false) => "unsloth/gpt-oss-20b-GGUF:Q4_K_M",
        (7..=13, false) => "unsloth/Qwen3.5-9B-GGUF:Q4_K_M",
        (_, false) => "unsloth/Qwen3.5-4B-GGUF:Q4_K_M",
        (22.., true) => "mlx-community/Qwen3-Coder-30B-A3B-Instruct-4bit",
        (14..=21, true) => "mlx-community/gpt-oss-20b-MXFP4-Q4",
        (7..=13, true) => "mlx-community/Qwen3.5-9B-4bit",
        (_, true) => "mlx-community/Qwen3.5-2B-MLX-4bit",
    }
}

/// Physical memory in bytes.
fn total_memory() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }
    #[cfg(target_os = "macos")]
    {
        let mut bytes: u64 = 0;
        let mut len = std::mem::size_of::<u64>();
        // SAFETY: hw.memsize is a u64; `bytes` and `len` describe a buffer of that size.
        let rc = unsafe {
            libc::sysctlbyname(
                c"hw.memsize".as_ptr(),
                (&mut bytes as *mut u64).cast(),
                &mut len,
                std::ptr::null_mut(),
                0,
            )
        };
        (rc == 0).then_some(bytes)
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::for_memory;

    #[test]
    fn bigger_machines_get_bigger_models() {
        assert_eq!(
            for_memory(23, false),
            "unsloth/Qwen3-Coder-30B-A3B-Instruct-GGUF:Q4_K_M"
        );
        assert_eq!(for_memory(15, false), "unsloth/gpt-oss-20b-GGUF:Q4_K_M");
        assert_eq!(for_memory(7, false), "unsloth/Qwen3.5-9B-GGUF:Q4_K_M");
        assert_eq!(for_memory(3, false), "unsloth/Qwen3.5-4B-GGUF:Q4_K_M");
        assert_eq!(
            for_memory(64, true),
            "mlx-community/Qwen3-Coder-30B-A3B-Instruct-4bit"
        );
        // Every tier is a model whose tool calls Pensieve parses: GGUF names carry a
        // quant, MLX ones are whole repositories.
        for gib in [1, 8, 16, 32] {
            assert!(for_memory(gib, false).ends_with(":Q4_K_M"));
            assert!(!for_memory(gib, true).contains(':'));
        }
    }
}
