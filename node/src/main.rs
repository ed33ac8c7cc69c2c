//! `tsunagu`: run a node (`serve`) or validate a configuration (`check-config`).

use std::path::PathBuf;
use std::process::ExitCode;
use tsunagu::server;
use tsunagu_config::{Config, LogFormat};

const USAGE: &str = "usage:
  tsunagu serve [--config FILE]     run a node (no FILE: built-in single-node defaults)
  tsunagu check-config FILE         validate FILE; every error with its key path; exit 2 on error
  tsunagu --version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["serve"] => serve(None),
        ["serve", "--config", file] | ["serve", "-c", file] => serve(Some(PathBuf::from(file))),
        ["check-config", file] => check_config(file),
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
        Ok(_) => {
            println!("{file}: ok");
            ExitCode::SUCCESS
        }
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

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
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
    init_tracing(&config);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::run(config, shutdown_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tsunagu: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
