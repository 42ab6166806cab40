//! `hull`: run a container in its own microVM, no containerd needed. It uses the host
//! library the containerd shim is built on (hull-shim): templates, drive slots, shares.
//!
//! Built so far: `hull run` (foreground or `-d`), `exec`, `ps`, `logs`, `stop`, `kill`,
//! `rm` and `inspect`, with the built-in busybox image. Errors are one line saying what is
//! wrong and what to do, status 125 (as docker's); a container's own status is passed
//! through.

use hull_cli::{check, lifecycle, oci, paths, run, signals, store};

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
    /// Run a command in a running container.
    #[command(after_help = "Examples:\n  hull exec web ps\n  hull exec -it web sh")]
    Exec(ExecArgs),
    /// List containers (running ones; -a for all).
    #[command(after_help = "Examples:\n  hull ps\n  hull ps -a")]
    Ps {
        #[arg(short = 'a', long)]
        all: bool,
    },
    /// Show a detached container's output.
    #[command(after_help = "Examples:\n  hull logs web\n  hull logs -f web")]
    Logs {
        /// Keep printing until the container exits.
        #[arg(short = 'f', long)]
        follow: bool,
        name: String,
    },
    /// Stop a container: SIGTERM, then SIGKILL after the grace period.
    #[command(after_help = "Examples:\n  hull stop web\n  hull stop -t 2 web")]
    Stop {
        /// Seconds between SIGTERM and SIGKILL.
        #[arg(short = 't', long, default_value_t = 10)]
        time: u64,
        name: String,
    },
    /// Send a signal to a container's main process.
    #[command(after_help = "Examples:\n  hull kill web\n  hull kill -s HUP web")]
    Kill {
        /// A signal name (TERM, KILL, HUP, ...) or number.
        #[arg(short = 's', long, default_value = "KILL")]
        signal: String,
        name: String,
    },
    /// Remove containers (-f: running ones too, killing them).
    #[command(after_help = "Examples:\n  hull rm web\n  hull rm -f web db")]
    Rm {
        #[arg(short = 'f', long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// A container's record as JSON.
    #[command(after_help = "Examples:\n  hull inspect web")]
    Inspect { name: String },
    /// Manage images.
    #[command(subcommand)]
    Image(ImageCommand),
    /// List images.
    #[command(after_help = "Examples:\n  hull images")]
    Images,
    /// What this host offers hull and what is missing, each with its fix.
    #[command(after_help = "Examples:\n  hull check")]
    Check,
    /// Housekeeping.
    #[command(subcommand)]
    System(SystemCommand),
    /// The supervisor of a detached container (started by hull run -d).
    #[command(name = "__supervise", hide = true)]
    Supervise { name: String },
}

#[derive(Subcommand)]
enum SystemCommand {
    /// Remove stopped containers, images no running container uses, and stale templates.
    #[command(after_help = "Examples:\n  hull system prune")]
    Prune,
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Import an OCI image layout tarball or a docker save archive.
    #[command(
        after_help = "Examples:\n  hull image import --name tools:1 tools-oci.tar\n  docker save alpine:3.20 -o alpine.tar && hull image import alpine.tar"
    )]
    Import {
        /// The name to file it under (default: the name the archive gives, else the file's).
        #[arg(long)]
        name: Option<String>,
        file: PathBuf,
    },
    /// List images.
    #[command(after_help = "Examples:\n  hull image ls")]
    Ls,
    /// Remove images by name.
    #[command(after_help = "Examples:\n  hull image rm alpine:3.20")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

fn images() -> i32 {
    let refs = store::refs(&paths::images());
    println!("{:<40}   {:<19}   SIZE", "NAME", "DIGEST");
    for r in refs.values() {
        let short: String = r
            .digest
            .trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect();
        println!(
            "{:<40}   sha256:{short}   {:.1} MiB",
            r.name,
            r.size as f64 / f64::from(1u32 << 20)
        );
    }
    println!("{:<40}   {:<19}   (built in)", "busybox:latest", "-");
    0
}

fn image_command(c: ImageCommand) -> i32 {
    match c {
        ImageCommand::Import { name, file } => {
            let limits = match config() {
                Ok(c) => c.images,
                Err(e) => return fail(&e),
            };
            match store::import(&paths::images(), &file, name.as_deref(), limits) {
                Ok(names) => {
                    for n in names {
                        println!("{n}");
                    }
                    0
                }
                Err(e) => fail(&e),
            }
        }
        ImageCommand::Ls => images(),
        ImageCommand::Rm { names } => {
            let mut code = 0;
            for n in names {
                match store::remove(&paths::images(), &n) {
                    Ok(true) => {}
                    Ok(false) => code = fail(&store::StoreError::NotFound(n)),
                    Err(e) => code = fail(&e),
                }
            }
            code
        }
    }
}

#[derive(Args)]
struct ExecArgs {
    /// Keep stdin open and pass it to the process.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the process a terminal.
    #[arg(short = 't', long)]
    tty: bool,
    /// Environment variable KEY=VALUE; repeatable.
    #[arg(short = 'e', long = "env")]
    env: Vec<String>,
    /// Working directory.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// User: UID, UID:GID or root.
    #[arg(short = 'u', long)]
    user: Option<String>,
    name: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Args)]
struct RunArgs {
    /// Remove the container when it exits (otherwise hull ps -a lists it until hull rm).
    #[arg(long)]
    rm: bool,
    /// Run in the background; prints the name (hull logs, exec, stop, rm act on it).
    #[arg(short = 'd', long)]
    detach: bool,
    /// Keep stdin open and pass it to the container.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Give the container a terminal (with -i: this one, in raw mode, resized with it).
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
    /// Mount the container's root read-only (writes go to volumes or fail).
    #[arg(long)]
    read_only: bool,
    /// Working directory in the container.
    #[arg(short = 'w', long)]
    workdir: Option<String>,
    /// User: UID, UID:GID or root.
    #[arg(short = 'u', long)]
    user: Option<String>,
    /// The image: an imported one (hull images), or the built-in busybox.
    image: String,
    /// The command and its arguments (default: sh).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// docker's status for "the run itself failed".
const FAILED: i32 = 125;

fn fail(e: &dyn std::error::Error) -> i32 {
    eprintln!("hull: {}", hull_vmm_api::error_chain(e));
    FAILED
}

fn config() -> Result<hull_host::config::HostConfig, hull_host::config::ConfigError> {
    hull_host::config::HostConfig::load(&hull_host::config::HostConfig::path())
}

fn run_command(a: RunArgs) -> i32 {
    let opts = run::RunOptions {
        name: a.name,
        rm: a.rm,
        detach: a.detach,
        interactive: a.interactive,
        tty: a.tty,
        cpus: a.cpus,
        memory: a.memory,
        volumes: a.volumes,
        read_only: a.read_only,
        process: oci::Process {
            args: a.command,
            env: a.env,
            cwd: a.workdir,
            user: a.user,
            terminal: a.tty,
        },
        image: a.image,
    };
    let config = match config() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    if opts.detach {
        return match run::run_detached(&opts, &config) {
            Ok(name) => {
                println!("{name}");
                0
            }
            Err(e) => fail(&e),
        };
    }
    match run::run(&opts, &config) {
        Ok(status) => status,
        Err(e) => fail(&e),
    }
}

fn done(r: Result<(), lifecycle::LifecycleError>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => fail(&e),
    }
}

fn main() {
    hull_host::private::restrict_umask();
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
    std::process::exit(dispatch(cli.command));
}

/// Runs one command; returns the process's exit status.
fn dispatch(command: Command) -> i32 {
    match command {
        Command::Run(a) => run_command(a),
        Command::Exec(a) => exec_command(a),
        Command::Ps { all } => {
            print!("{}", lifecycle::ps(all));
            0
        }
        Command::Logs { follow, name } => {
            done(lifecycle::logs(&name, follow, &mut std::io::stdout()))
        }
        Command::Stop { time, name } => {
            done(lifecycle::stop(&name, std::time::Duration::from_secs(time)))
        }
        Command::Kill { signal, name } => {
            done(lifecycle::parse_signal(&signal).and_then(|s| lifecycle::kill(&name, s)))
        }
        Command::Rm { force, names } => {
            let mut code = 0;
            for n in names {
                if let Err(e) = lifecycle::rm(&n, force) {
                    code = fail(&e);
                }
            }
            code
        }
        Command::Inspect { name } => match lifecycle::inspect(&name) {
            Ok(json) => {
                println!("{json}");
                0
            }
            Err(e) => fail(&e),
        },
        Command::Image(c) => image_command(c),
        Command::Check => with_config(|c| i32::from(!check::print(&check::check(c)))),
        Command::System(SystemCommand::Prune) => with_config(prune_command),
        Command::Images => images(),
        Command::Supervise { name } => with_config(|c| match run::supervise(&name, c) {
            Ok(status) => status,
            Err(e) => fail(&e),
        }),
    }
}

/// `f` with the host configuration, or the reason there is none.
fn with_config(f: impl FnOnce(&hull_host::config::HostConfig) -> i32) -> i32 {
    match config() {
        Ok(c) => f(&c),
        Err(e) => fail(&e),
    }
}

fn exec_command(a: ExecArgs) -> i32 {
    let p = oci::Process {
        args: a.command,
        env: a.env,
        cwd: a.workdir,
        user: a.user,
        terminal: a.tty,
    };
    match lifecycle::exec(&a.name, &p, a.interactive) {
        Ok(status) => status,
        Err(e) => fail(&e),
    }
}

fn prune_command(c: &hull_host::config::HostConfig) -> i32 {
    let p = check::prune(c);
    let named = |names: &[String]| {
        if names.is_empty() {
            String::new()
        } else {
            format!(" ({})", names.join(", "))
        }
    };
    println!(
        "removed {} stopped container(s){}, {} image(s){}, {} stale template(s)",
        p.containers.len(),
        named(&p.containers),
        p.images.len(),
        named(&p.images),
        p.templates
    );
    0
}
