//! `tsunagu`: run a node (`serve`), validate a configuration (`check-config`), ask a
//! running node how it sees its cluster (`cluster status`), have it retire a member
//! for good (`cluster forget`), or provision numbers from a CSV file (`numbers import`).

mod api_client;
mod cluster_cli;
mod numbers_cli;

use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tsunagu::{log_output, process, server};
use tsunagu_config::{Config, LogFormat};

/// mimalloc instead of glibc malloc: the call path allocates and frees many small
/// objects on several threads, where glibc spent a quarter of the CPU (measured).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage:
  tsunagu serve [--config FILE]     run a node (no FILE: built-in single-node defaults)
  tsunagu check-config FILE         validate FILE; every error with its key path; exit 2 on error
  tsunagu cluster status [--config FILE]
                                    the cluster as the node of FILE sees it (GET /v1/cluster);
                                    exit 0 all members up, 1 a member down, 2 node not reachable
  tsunagu cluster forget NAME [--config FILE]
                                    retire member NAME (down, decommissioned) for good, on every
                                    member; exit 0 retired, 1 refused (up, unknown), 2 not reachable
  tsunagu numbers import FILE.csv [--config FILE]
                                    create the numbers of FILE (columns number, advertiser_id,
                                    destinations, options) as the operator of TSUNAGU_API_KEY;
                                    all checked first, none created if a row is bad; exit 0 all
                                    created, 1 refused, 2 node not reachable
  tsunagu --version
  tsunagu help                      this text";

/// Files the node creates (the store and its WAL, recordings, uploaded prompts, the
/// generated admin token) hold call records, voices and secrets: nobody but the node's
/// user may read them. A process umask of 077 makes every file 0600 and every
/// directory 0700, including the ones SQLite creates itself (its -wal and -shm files).
fn restrict_new_files() {
    // SAFETY: umask(2) only sets the process's file mode mask; it cannot fail and
    // touches no memory.
    unsafe {
        libc::umask(0o077);
    }
}

fn main() -> ExitCode {
    restrict_new_files();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve"] => serve(None),
        ["serve", "--config", file] | ["serve", "-c", file] => serve(Some(PathBuf::from(file))),
        ["check-config", file] | ["check-config", "--config" | "-c", file] => check_config(file),
        ["cluster", "status"] => cluster_cli::status(None),
        ["cluster", "status", "--config", file] | ["cluster", "status", "-c", file] => {
            cluster_cli::status(Some(PathBuf::from(file)))
        }
        // A name is never an option: `forget --config` alone is a mistake, not a member.
        ["cluster", "forget", name] if !name.starts_with('-') => cluster_cli::forget(None, name),
        ["cluster", "forget", name, "--config" | "-c", file]
        | ["cluster", "forget", "--config" | "-c", file, name]
            if !name.starts_with('-') && !file.starts_with('-') =>
        {
            cluster_cli::forget(Some(PathBuf::from(file)), name)
        }
        ["numbers", "import", csv] if !csv.starts_with('-') => {
            numbers_cli::import(std::path::Path::new(csv), None)
        }
        ["numbers", "import", csv, "--config" | "-c", file]
        | ["numbers", "import", "--config" | "-c", file, csv]
            if !csv.starts_with('-') && !file.starts_with('-') =>
        {
            numbers_cli::import(std::path::Path::new(csv), Some(PathBuf::from(file)))
        }
        ["--version"] | ["version"] => {
            println!("tsunagu {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        ["--help"] | ["-h"] | ["help"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn check_config(file: &str) -> ExitCode {
    match Config::load(std::path::Path::new(file)) {
        // What `serve` would refuse, refused here too, in the same words.
        Ok(config) => match server::store_unavailable_in_this_build(&config) {
            Some(problem) => {
                eprintln!("{file}: {problem}");
                ExitCode::from(2)
            }
            None => {
                println!("{file}: ok");
                ExitCode::SUCCESS
            }
        },
        Err(tsunagu_config::LoadError::Invalid(errors)) => {
            for e in &errors.0 {
                eprintln!("{file}: {e}");
            }
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` or `log.level` (a `target=level` list such as
/// `info,tsunagu_sip=debug`; regex-based filters are not supported, to keep the build lean).
/// Logs go through the log writer thread (`log.queue_kib`, see `log_output`), or
/// straight to stderr with `log.queue_kib = 0`; the writer, if any, is returned to be
/// dropped at exit (which writes out what is queued).
fn init_tracing(config: &Config) -> Option<log_output::Output> {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let spec = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| config.log.level.clone());
    let filter: Targets = spec.parse().unwrap_or_else(|e| {
        eprintln!("log filter `{spec}` is not valid ({e}); logging at info");
        Targets::new().with_default(tracing::Level::INFO)
    });
    let capacity = config.log.queue_kib as usize * 1024;
    let queued = match capacity {
        0 => None,
        c => match log_output::start(c) {
            Ok(q) => Some(q),
            Err(e) => {
                eprintln!("cannot start the log writer thread ({e}); logging directly");
                None
            }
        },
    };
    let (writer, output) = match queued {
        Some((w, o)) => (BoxMakeWriter::new(w), Some(o)),
        None => (BoxMakeWriter::new(std::io::stderr), None),
    };
    // Colours only for a terminal: a log file or a journal gets plain text (escape
    // codes in files are noise for every reader and cost formatting).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer);
    match config.log.format {
        LogFormat::Json => tracing_subscriber::registry()
            .with(layer.json())
            .with(filter)
            .init(),
        LogFormat::Text => tracing_subscriber::registry()
            .with(layer)
            .with(filter)
            .init(),
    }
    output
}

fn serve(file: Option<PathBuf>) -> ExitCode {
    let loaded = match &file {
        Some(f) => Config::load(f).map_err(|e| e.to_string()),
        None => Config::embedded_default().map_err(|e| e.to_string()),
    };
    let config = match loaded {
        Ok(c) => c,
        Err(e) => {
            eprintln!("configuration error:\n{e}");
            return ExitCode::from(2);
        }
    };
    // Before the runtime's (and the log writer's) threads exist: see `process`.
    let limit = process::raise_descriptor_limit();
    let needed = process::descriptors_needed(&config);
    let presized = match &limit {
        Ok(l) => process::presize_descriptor_table(needed, l.now),
        Err(_) => Ok(None), // the limit unknown: reported below
    };
    let huge_pages =
        (!config.node.transparent_huge_pages).then(process::disable_transparent_huge_pages);
    let log_output = init_tracing(&config);
    let code = run_node(config, limit, needed, presized, huge_pages);
    drop(log_output); // what is queued is written before the process exits
    code
}

/// The node on its runtime, once logging is set up.
fn run_node(
    config: Config,
    limit: std::io::Result<process::DescriptorLimit>,
    needed: usize,
    presized: std::io::Result<Option<usize>>,
    huge_pages: Option<std::io::Result<()>>,
) -> ExitCode {
    match limit {
        Ok(l) if l.now != l.was => {
            tracing::info!(from = l.was, to = l.now, "open descriptor limit raised")
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read the open descriptor limit"),
    }
    match presized {
        Ok(Some(top)) => tracing::debug!(descriptors = top + 1, "descriptor table sized"),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, needed, "cannot size the descriptor table"),
    }
    if let Some(Err(e)) = huge_pages {
        tracing::warn!(error = %e, "cannot turn transparent huge pages off");
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    let env_override = std::env::var_os("TOKIO_WORKER_THREADS").is_some();
    if let Some(n) = process::runtime_workers(
        config.node.worker_threads,
        tsunagu_sip::shard::usable_cpus(),
        env_override,
    ) {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let run = async {
        // Registered before anything serves: a SIGTERM that came between the API
        // answering /healthz and the first look at the signal killed the process
        // outright, without its drain (a full test run, under load).
        let signal = match shutdown_signal() {
            Ok(signal) => signal,
            Err(e) => {
                return Err(server::NodeError::Io(format!(
                    "cannot watch for SIGTERM: {e}"
                )))
            }
        };
        server::run(config, signal).await
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ server::NodeError::Superseded(_)) => {
            tracing::error!("{e}");
            eprintln!("tsunagu: {e}");
            ExitCode::from(server::EXIT_SUPERSEDED)
        }
        Err(e) => {
            eprintln!("tsunagu: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves at SIGTERM or SIGINT; both are watched from the moment it is called
/// (within the runtime), not from its first poll.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
