//! Where Pensieve keeps its own files (config, the MLX venv and worker, logs), by platform
//! convention.

use std::path::PathBuf;

/// `$PENSIEVE_DATA_DIR`, else the platform's data directory: `$XDG_DATA_HOME/pensieve` or
/// `~/.local/share/pensieve` on Linux, `~/Library/Application Support/pensieve` on macOS.
pub fn data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("PENSIEVE_DATA_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = home();
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

/// The platform's config directory for Pensieve: `$XDG_CONFIG_HOME/pensieve` or
/// `~/.config/pensieve` on Linux, `~/Library/Application Support/pensieve` on macOS,
/// `%APPDATA%\pensieve` on Windows.
pub fn config_dir() -> PathBuf {
    let home = home();
    if cfg!(target_os = "macos") {
        return home.join("Library/Application Support/pensieve");
    }
    if cfg!(windows) {
        if let Some(appdata) = std::env::var_os("APPDATA").filter(|d| !d.is_empty()) {
            return PathBuf::from(appdata).join("pensieve");
        }
    }
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|d| !d.is_empty())
        .map_or_else(|| home.join(".config"), PathBuf::from)
        .join("pensieve")
}

/// `~/x` -> `$HOME/x`; other paths unchanged.
pub fn expand_home(path: &std::path::Path) -> PathBuf {
    match path.strip_prefix("~") {
        Ok(rest) => home().join(rest),
        Err(_) => path.to_owned(),
    }
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .or_else(|| std::env::var_os("USERPROFILE"))
        .map_or_else(std::env::temp_dir, PathBuf::from)
}
