//! Where Pensieve keeps its own files (the MLX venv and worker), by platform convention.

use std::path::PathBuf;

/// `$PENSIEVE_DATA_DIR`, else the platform's data directory: `$XDG_DATA_HOME/pensieve` or
/// `~/.local/share/pensieve` on Linux, `~/Library/Application Support/pensieve` on macOS.
pub fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PENSIEVE_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(std::env::temp_dir, PathBuf::from);
    if cfg!(target_os = "macos") {
        return home.join("Library/Application Support/pensieve");
    }
    std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map_or_else(|| home.join(".local/share"), PathBuf::from)
        .join("pensieve")
}

/// The venv `pensieve setup mlx` creates.
pub fn mlx_venv() -> PathBuf {
    data_dir().join("mlx-venv")
}

/// Its Python.
pub fn mlx_python() -> PathBuf {
    let venv = mlx_venv();
    if cfg!(windows) {
        venv.join("Scripts").join("python.exe")
    } else {
        venv.join("bin").join("python")
    }
}
