//! A worker binary at one step of `docs/EVOLVING_JOBS.md`: the mistake: a parameter added without a default.
//! Each step is its own binary, as each is its own deploy.

#[path = "../evolve/v2_no_default.rs"]
mod job;

fn main() -> std::process::ExitCode {
    jobs_redis::cli::main()
}
