//! A worker binary at one step of `docs/EVOLVING_JOBS.md`: the job renamed with an alias.
//! Each step is its own binary, as each is its own deploy.

#[path = "../evolve/v4.rs"]
mod job;

fn main() -> std::process::ExitCode {
    jobs_redis::cli::main()
}
