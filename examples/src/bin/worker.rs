//! The registered worker: runs every demo job. `cargo run -p examples --bin worker -- --help`
use examples as _; // link the crate that holds the #[job]s, or the registry is empty
fn main() -> std::process::ExitCode {
    jobs_redis::cli::main()
}
