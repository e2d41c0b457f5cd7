//! The quickstart, run as a user runs it: its output must show the SMS ahead
//! of the bulk mail and the version-1 payload running with the default.

use std::process::Command;

#[test]
fn quickstart_shows_priority_and_migration() {
    let output = Command::new(env!("CARGO_BIN_EXE_quickstart")).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let ran: Vec<&str> = stdout.lines().filter(|l| l.contains(". send_")).collect();
    assert_eq!(ran.len(), 7, "{stdout}");
    assert!(ran[..3].iter().all(|l| l.contains("send_confirmation_sms")), "{stdout}");
    assert!(ran[3..].iter().all(|l| l.contains("send_promotional_mail")), "{stdout}");
    assert!(ran[2].contains("user_id=9 locale=pt-BR") && ran[2].contains("(payload v1)"), "{stdout}");
    assert!(stdout.contains("7 succeeded, 0 retried, 0 dead."), "{stdout}");
    assert!(stdout.contains("The SMS, enqueued last, jumped ahead of the bulk mail enqueued first."), "{stdout}");
    assert!(stdout.contains("ran with locale pt-BR (the default)"), "{stdout}");
}
