//! The model `pensieve serve` picks when none is named: a coding model with tool calling
//! and at least 32k context (what Claude Code needs), sized to the machine's memory, in
//! the format of the engine the platform runs best.

use crate::paths;

/// `$PENSIEVE_RECOMMENDED_MODEL` (to pin it), else by memory: Qwen2.5-Coder 7B with 16 GiB
/// or more, 3B with 8 GiB or more, 1.5B below; MLX 4-bit on Apple Silicon once `pensieve
/// setup mlx` has run, GGUF Q4_K_M elsewhere.
pub fn recommended_model() -> String {
    if let Some(pinned) = std::env::var("PENSIEVE_RECOMMENDED_MODEL")
        .ok()
        .filter(|m| !m.trim().is_empty())
    {
        return pinned;
    }
    let gib = total_memory().map_or(16, |b| b >> 30);
    let size = match gib {
        16.. => "7B",
        8..=15 => "3B",
        _ => "1.5B",
    };
    let mlx =
        cfg!(all(target_os = "macos", target_arch = "aarch64")) && paths::mlx_python().exists();
    if mlx {
        format!("mlx-community/Qwen2.5-Coder-{size}-Instruct-4bit")
    } else {
        format!("Qwen/Qwen2.5-Coder-{size}-Instruct-GGUF:Q4_K_M")
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
