//! `hull`: run a container in its own microVM, no containerd needed. It uses the host
//! library the containerd shim is built on (hull-shim): templates, drive slots, shares.
//!
//! Built so far: `hull run` in the foreground with the built-in busybox image. Errors are
//! one line saying what is wrong and what to do, status 125 (as docker's); a container's
//! own status is passed through.

mod image;
mod oci;
mod paths;
mod run;
mod signals;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "hull",
    version,
    about = "Run containers in their own microVMs",
    after_help = "Examples:\n  hull run --rm busybox echo hello\n  hull run --rm -v /srv/data:/data:ro busybox ls /data"
)]
struct Cli {
    /// Log what happens (the shim library's and the VMM's log lines) on stderr.
    #[arg(long, global = true)]
    debug: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a command in a new container, in a sandbox VM of its own.
    #[command(
        after_help = "Examples:\n  hull run --rm busybox echo hello\n  hull run --rm -e GREETING=hi busybox sh -c 'echo $GREETING'\n  hull run --rm -v $PWD:/work -w /work busybox ls\n  echo data | hull run --rm -i busybox wc -c"
    )]
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Remove the container when it exits (always so for now: stopped containers are not
    /// kept yet).
    #[arg(long)]
    rm: bool,
    /// Run in the background (not built yet).
    #[arg(short = 'd', long)]
    detach: bool,
    /// Keep stdin open and pass it to the container.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the container a terminal (not built yet).
    #[arg(short = 't', long)]
    tty: bool,
    /// The container's name (and its hostname); a random one otherwise.
    #[arg(long)]
    name: Option<String>,
    /// vCPUs for the container (the sandbox VM gets them plus the configured overhead).
    #[arg(long)]
    cpus: Option<u32>,
    /// Memory limit: 512m, 1g, ... (the VM gets it plus the configured overhead).
    #[arg(short = 'm', long)]
    memory: Option<String>,
    /// Environment variable KEY=VALUE; repeatable.
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// Volume HOST:CONTAINER[:ro|:rw]: read-only ones are copied in, read-write
    /// directories shared live; repeatable.
    #[arg(short = 'v', long = "volume")]
    volumes: Vec<String>,
    /// Working directory in the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// User: UID, UID:GID or root.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// The image: busybox (built in).
    image: String,
    /// The command and its arguments (default: sh).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// docker's status for "the run itself failed".
const FAILED: i32 = 125;

fn config_path() -> PathBuf {
    std::env::var_os("HULL_CONFIG")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(hull_shim::config::DEFAULT_PATH))
}

fn main() {
    signals::block();
    let cli = Cli::parse();
    env_logger::Builder::new()
        .filter_level(if cli.debug {
            log::LevelFilter::Debug
        } else {
            log::LevelFilter::Warn
        })
        .format_target(false)
        .init();
    let code = match cli.command {
        Command::Run(a) => {
            let opts = run::RunOptions {
                name: a.name,
                detach: a.detach,
                interactive: a.interactive,
                tty: a.tty,
                cpus: a.cpus,
                memory: a.memory,
                volumes: a.volumes,
                process: oci::Process {
                    args: a.command,
                    env: a.env,
                    cwd: a.workdir,
                    user: a.user,
                    terminal: a.tty,
                },
                image: a.image,
            };
            let _ = a.rm;
            match hull_shim::config::HostConfig::load(&config_path()) {
                Err(e) => {
                    eprintln!(
                        "hull: the hull configuration: {}",
                        hull_vmm::error_chain(&e)
                    );
                    FAILED
                }
                Ok(config) => match run::run(&opts, &config) {
                    Ok(status) => status,
                    Err(e) => {
                        eprintln!("hull: {}", hull_vmm::error_chain(&e));
                        FAILED
                    }
                },
            }
        }
    };
    std::process::exit(code);
}
