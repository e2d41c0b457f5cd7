//! A worker binary at one step of `docs/EVOLVING_JOBS.md`: a parameter added with a default.
//! Each step is its own binary, as each is its own deploy.

#[path = "../evolve/v2.rs"]
mod job;

fn main() -> std::process::ExitCode {
    jobs_redis::cli::main()
}
