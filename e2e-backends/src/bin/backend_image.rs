//! `backend-image`: builds a LocalAI backend image `FROM scratch` from worker binaries, a
//! `run.sh` and the shared libraries `ldd` finds, through the local Docker engine (bollard).
//! Nothing is pulled. Prints what went in and the image's size.
//!
//! ```sh
//! backend-image --tag localai-rs/llama-cpp:latest --run-sh backend-llamacpp/run.sh \
//!   --binary target/release/backend-llamacpp=backend-llamacpp-avx2 --shell /bin/busybox
//! ```
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use e2e_backends::image::{RootFs, build, engine};

/// Build a FROM-scratch backend image.
#[derive(Parser, Debug)]
#[command(name = "backend-image")]
struct Args {
    /// The image's name and tag.
    #[arg(long)]
    tag: String,
    /// The script LocalAI runs (`/run.sh` in the image).
    #[arg(long)]
    run_sh: PathBuf,
    /// A worker binary, `PATH` or `PATH=NAME` (its name at `/` in the image); repeatable.
    #[arg(long = "binary", required = true)]
    binaries: Vec<String>,
    /// A static shell (busybox-static) installed as `/bin/sh`, so the image also runs as a
    /// container; LocalAI itself runs `run.sh` with the host's shell.
    #[arg(long)]
    shell: Option<PathBuf>,
    /// Keep symbols in the binaries.
    #[arg(long)]
    no_strip: bool,
    /// Also write the build context (`Dockerfile`, `rootfs/`) to this folder, for builders
    /// such as `docker buildx` in CI; its contents are replaced.
    #[arg(long)]
    context_dir: Option<PathBuf>,
    /// Only assemble (and write the context); do not build with the engine.
    #[arg(long)]
    no_build: bool,
    /// Warn when the image is larger than this many MB.
    #[arg(long, default_value_t = 30)]
    budget_mb: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("backend-image: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let mut root = RootFs::new();
    root.add_file("run.sh", &args.run_sh, 0o755)?;
    for spec in &args.binaries {
        let (path, name) = match spec.split_once('=') {
            Some((path, name)) => (PathBuf::from(path), name.to_string()),
            None => {
                let path = PathBuf::from(spec);
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .ok_or_else(|| anyhow::anyhow!("{spec}: not a file path"))?;
                (path, name)
            }
        };
        root.add_binary(&path, &name, !args.no_strip)?;
    }
    if let Some(shell) = &args.shell {
        root.add_shell(shell)?;
    }
    for path in root.paths() {
        let size = root.file(path).map_or(0, <[u8]>::len);
        println!("  /{path:<40} {:>8.2} MB", size as f64 / 1e6);
    }
    println!("  {:<41} {:>8.2} MB", "(files)", root.size() as f64 / 1e6);
    if let Some(dir) = &args.context_dir {
        root.write_context(dir)?;
        println!("build context in {}", dir.display());
    }
    if args.no_build {
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let size = runtime.block_on(async {
        let docker = engine().await?;
        build(&docker, &root, &args.tag).await
    })?;
    let mb = size as f64 / 1e6;
    println!("{} {mb:.1} MB", args.tag);
    if mb > args.budget_mb as f64 {
        println!(
            "warning: {} is larger than the {} MB budget",
            args.tag, args.budget_mb
        );
    }
    Ok(())
}
