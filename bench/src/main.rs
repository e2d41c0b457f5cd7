//! `jobs-bench`: measures `jobs` on Redis with the protocol of the peer
//! benchmarks in ../shared/peers, so `report.py` puts it in the same table,
//! and runs the whole suite of the performance issue with `all`.
//! See docs/BENCHMARKS.md.

mod child;
mod cli;
mod jobs;
mod probe;
mod proxy;
mod scenarios;
mod suite;

use std::process::ExitCode;

use clap::Parser;

/// Any error: a bench binary reports it and exits non-zero.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// A result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Returns an error built from a format string.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err(format!($($arg)*).into())
    };
}

/// Returns an error unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        let holds: bool = $cond;
        if !holds {
            $crate::bail!($($arg)*);
        }
    };
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = cli::Cli::parse();
    let runtime =
        tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("cannot start the tokio runtime");
    match runtime.block_on(cli::run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("jobs-bench: {error}");
            ExitCode::FAILURE
        }
    }
}
