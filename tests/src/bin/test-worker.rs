//! The worker the fault tests run as a real process: the three-line template.
use jobs_tests as _; // links the test jobs
fn main() -> std::process::ExitCode {
    jobs_redis::cli::main()
}
