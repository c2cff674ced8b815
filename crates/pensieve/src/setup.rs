//! `pensieve setup mlx`: a venv under Pensieve's data directory with pinned `mlx` and
//! `mlx-lm` (and the platform's MLX backend), for the `mlx` engine's worker, `mlx-vlm` and
//! Pillow for vision models, and `gguf` for the GGUF -> MLX converter. It prints the venv's
//! Python last.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};

use crate::paths;

/// The versions the worker is tested with.
const MLX_VERSION: &str = "0.32.4";
const MLX_LM_VERSION: &str = "0.32.2";
const GGUF_VERSION: &str = "0.19.0";
const MLX_VLM_VERSION: &str = "0.7.10";
const PILLOW_VERSION: &str = "13.0.0";

#[derive(Debug, Args)]
pub struct SetupArgs {
    #[command(subcommand)]
    what: Setup,
}

#[derive(Debug, Subcommand)]
enum Setup {
    /// Install MLX, mlx-lm and mlx-vlm for `--engine mlx` into a venv of Pensieve's own.
    Mlx(MlxArgs),
}

#[derive(Debug, Args)]
struct MlxArgs {
    /// The Python that creates the venv (3.10 or later).
    #[arg(long, default_value = "python3", value_name = "PATH")]
    python: PathBuf,
    /// MLX backend on Linux [default: cpu]; macOS always uses Metal.
    #[arg(long, value_enum, default_value_t = Backend::Cpu)]
    backend: Backend,
    /// Make the venv again from scratch.
    #[arg(long)]
    force: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Backend {
    Cpu,
    Cuda,
}

pub fn run(args: SetupArgs) -> anyhow::Result<()> {
    match args.what {
        Setup::Mlx(a) => setup_mlx(&a),
    }
}

fn setup_mlx(args: &MlxArgs) -> anyhow::Result<()> {
    let venv = paths::mlx_venv();
    let python = paths::mlx_python();
    if args.force && venv.exists() {
        std::fs::remove_dir_all(&venv)
            .with_context(|| format!("cannot remove {}", venv.display()))?;
    }
    if !python.exists() {
        if let Some(parent) = venv.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        eprintln!("creating {}", venv.display());
        run_step(
            Command::new(&args.python).arg("-m").arg("venv").arg(&venv),
            &format!(
                "cannot create a venv with {} (is Python 3 installed, with its venv module: \
                 apt-get install python3-venv?)",
                args.python.display()
            ),
        )?;
    }
    let mut packages = vec![
        format!("mlx=={MLX_VERSION}"),
        format!("mlx-lm=={MLX_LM_VERSION}"),
        // GGUF reading, for python/pensieve_mlx/convert.py.
        format!("gguf=={GGUF_VERSION}"),
        // Image decoding, for vision models (with mlx-vlm, below).
        format!("pillow=={PILLOW_VERSION}"),
    ];
    if !cfg!(target_os = "macos") {
        packages.push(match args.backend {
            Backend::Cpu => format!("mlx-cpu=={MLX_VERSION}"),
            Backend::Cuda => format!("mlx-cuda=={MLX_VERSION}"),
        });
    }
    eprintln!("installing {}", packages.join(" "));
    run_step(
        Command::new(&python)
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .args(&packages),
        "pip could not install MLX",
    )?;
    // Without its dependencies: mlx-vlm lists a server, audio, video and training stacks
    // (and unpinned mlx, mlx-lm and transformers, which pip would move) that the worker never
    // imports; what it does import (mlx, mlx-lm, transformers, Pillow, numpy) is above.
    let vlm = format!("mlx-vlm=={MLX_VLM_VERSION}");
    eprintln!("installing {vlm} (without its dependencies)");
    run_step(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-deps",
            ])
            .arg(&vlm),
        "pip could not install mlx-vlm",
    )?;
    run_step(
        Command::new(&python).args([
            "-c",
            "import mlx.core as mx, mlx_lm, mlx_vlm, PIL; \
             print('mlx', mx.__version__, 'on', mx.default_device(), '; mlx-vlm', mlx_vlm.__version__)",
        ]),
        "MLX was installed but does not import",
    )?;
    println!("{}", python.display());
    Ok(())
}

fn run_step(command: &mut Command, failure: &str) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("{failure}: cannot run {:?}", command.get_program()))?;
    if !status.success() {
        bail!("{failure} ({status})");
    }
    Ok(())
}
