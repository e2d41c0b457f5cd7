//! The embedded walk-through of `docs/EVOLVING_JOBS.md`, run as a user runs
//! it: every payload of every version runs once, under the right code.

use std::process::Command;

#[test]
fn the_evolving_example_runs_every_payload_under_the_right_version() {
    let output = Command::new(env!("CARGO_BIN_EXE_evolving")).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let ran: Vec<&str> = stdout.lines().filter(|line| line.starts_with('v')).collect();
    assert_eq!(
        ran,
        [
            "v1 welcome mail: user 1",
            "v1 welcome mail: user 2",
            "v2 welcome mail: user 4, locale en",
            "v2 welcome mail: user 3, locale pt-BR",
            "v3 welcome message: user 5, locale de",
            "v4 welcome message: user 6, language pt, region BR",
            "v4 welcome message: user 7, language fr, region -",
        ],
        "{stdout}"
    );
    assert!(stdout.contains("worker drained: 2 succeeded, 0 dead, 1 deferred for a newer worker"), "{stdout}");
    assert!(stdout.contains("breaking: send_welcome_email: parameter `locale` lost its default"), "{stdout}");
    assert_eq!(stdout.matches("breaking:").count(), 1, "{stdout}");
    assert!(stdout.contains("the rename and the split passed, and no payload of any version was lost."), "{stdout}");
}
