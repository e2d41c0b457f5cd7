//! The example jobs stay compatible with their committed lock file
//! (`examples/jobs.lock.json`): the test `docs/EVOLVING_JOBS.md` asks every
//! crate that holds jobs to have.

use examples as _; // link the crate whose #[job]s are checked

#[test]
fn jobs_stay_compatible_with_the_lock_file() {
    jobs_core::schema::assert_compatible("jobs.lock.json");
}

#[test]
fn a_breaking_change_fails_the_test_with_the_report() {
    let path = std::env::temp_dir().join(format!("jobs-lock-{}.json", std::process::id()));
    let mut lock = jobs_core::schema::Schema::read("jobs.lock.json").unwrap();
    // The lock file remembers a job the code no longer has.
    let mut gone = lock.jobs[0].clone();
    gone.name = "send_fax".into();
    gone.aliases.clear();
    lock.jobs.push(gone);
    lock.write(&path).unwrap();

    let panic = std::panic::catch_unwind(|| jobs_core::schema::assert_compatible(&path)).unwrap_err();
    std::fs::remove_file(&path).unwrap();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(message.contains("breaking: send_fax: job `send_fax` is gone"), "{message}");
    assert!(message.contains("error: 1 breaking change against"), "{message}");
}

#[test]
fn a_missing_lock_file_says_how_to_write_one() {
    let panic = std::panic::catch_unwind(|| jobs_core::schema::assert_compatible("no-such.lock.json")).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();
    assert!(message.contains("schema --write no-such.lock.json"), "{message}");
}
