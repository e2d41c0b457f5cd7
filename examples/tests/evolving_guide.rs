//! Runs every command of `docs/EVOLVING_JOBS.md`, in order, against a private
//! Redis, and checks that each prints exactly the output the guide shows.
//!
//! A `console` block holds `$ command` lines, each followed by its output.
//! Commands run through `sh` in a fresh directory; `cargo run -q -p examples
//! --bin NAME --` runs the already built binary NAME. Job ids (24 hex digits)
//! differ from run to run and are compared as `<id>`. Only stdout is compared;
//! every command must exit 0 (the guide writes `|| echo …` where one fails).
//!
//! After changing the guide or the output of the CLI, rewrite the outputs
//! from a real run with `JOBS_BLESS=1 cargo test -p examples --test evolving_guide`.

use std::path::{Path, PathBuf};
use std::process::Command;

use jobs_redis::testing::RedisServer;

const CARGO_RUN: &str = "cargo run -q -p examples --bin ";

fn binary(name: &str) -> &'static str {
    match name {
        "evolve_v1" => env!("CARGO_BIN_EXE_evolve_v1"),
        "evolve_v2" => env!("CARGO_BIN_EXE_evolve_v2"),
        "evolve_v2_no_default" => env!("CARGO_BIN_EXE_evolve_v2_no_default"),
        "evolve_v3" => env!("CARGO_BIN_EXE_evolve_v3"),
        "evolve_v4" => env!("CARGO_BIN_EXE_evolve_v4"),
        "evolve_v5" => env!("CARGO_BIN_EXE_evolve_v5"),
        other => panic!("the guide runs `{other}`, which this test does not know: add it to `binary`"),
    }
}

/// `cargo run -q -p examples --bin NAME -- ARGS` → `'/path/to/NAME' ARGS`.
fn resolve(command: &str) -> String {
    let mut out = String::new();
    let mut rest = command;
    while let Some(at) = rest.find(CARGO_RUN) {
        out.push_str(&rest[..at]);
        let after = &rest[at + CARGO_RUN.len()..];
        let (name, tail) = after.split_once(" --").unwrap_or((after, ""));
        out.push_str(&format!("'{}'", binary(name.trim())));
        rest = tail;
    }
    out.push_str(rest);
    out
}

/// One command of the guide: the line index of its first output line, the
/// number of output lines shown, the command and the output shown.
struct Step {
    first_line: usize,
    shown_lines: usize,
    command: String,
    shown: String,
}

fn steps(guide: &str) -> Vec<Step> {
    let lines: Vec<&str> = guide.lines().collect();
    let mut steps: Vec<Step> = Vec::new();
    let mut in_console = false;
    for (index, line) in lines.iter().enumerate() {
        if !in_console {
            in_console = line.trim_end() == "```console";
            continue;
        }
        assert!(
            !line.starts_with("```") || line.trim_end() == "```",
            "line {}: a fence inside a console block",
            index + 1
        );
        if line.trim_end() == "```" {
            in_console = false;
        } else if let Some(command) = line.strip_prefix("$ ") {
            steps.push(Step {
                first_line: index + 1,
                shown_lines: 0,
                command: command.to_owned(),
                shown: String::new(),
            });
        } else {
            let step = steps.last_mut().expect("output before the first `$ ` line of a console block");
            step.shown_lines += 1;
            step.shown.push_str(line);
            step.shown.push('\n');
        }
    }
    steps
}

fn mask_ids(text: &str) -> String {
    let mut out = String::new();
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.len() == 24 && word.chars().all(|c| c.is_ascii_hexdigit()) {
            out.push_str("<id>");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

fn guide_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/EVOLVING_JOBS.md")
}

#[test]
fn every_command_of_the_evolving_jobs_guide_prints_what_the_guide_shows() {
    let guide = std::fs::read_to_string(guide_path()).unwrap();
    let steps = steps(&guide);
    assert!(steps.len() >= 10, "the guide should walk through its commands; found {}", steps.len());

    let server = RedisServer::start();
    let dir = std::env::temp_dir().join(format!("jobs-evolving-guide-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();

    let bless = std::env::var_os("JOBS_BLESS").is_some();
    let mut actual_outputs = Vec::new();
    let mut mismatches = Vec::new();
    for step in &steps {
        let output = Command::new("sh")
            .arg("-c")
            .arg(resolve(&step.command))
            .current_dir(&dir)
            .env("JOBS_REDIS_URL", server.url())
            .env("RUST_LOG", "off")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "`{}` exited with {}:\n{stdout}{}",
            step.command,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        if mask_ids(&stdout) != mask_ids(&step.shown) {
            mismatches
                .push(format!("$ {}\n--- the guide shows:\n{}--- it printed:\n{stdout}", step.command, step.shown));
        }
        actual_outputs.push(stdout);
    }
    std::fs::remove_dir_all(&dir).unwrap();

    if bless {
        let mut lines: Vec<String> = guide.lines().map(str::to_owned).collect();
        for (step, actual) in steps.iter().zip(&actual_outputs).rev() {
            let replacement: Vec<String> = actual.lines().map(str::to_owned).collect();
            lines.splice(step.first_line..step.first_line + step.shown_lines, replacement);
        }
        std::fs::write(guide_path(), lines.join("\n") + "\n").unwrap();
        return;
    }
    assert!(
        mismatches.is_empty(),
        "{} commands of docs/EVOLVING_JOBS.md print something else (rewrite the guide's outputs with JOBS_BLESS=1):\n\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
}

#[test]
fn the_harness_reads_console_blocks_and_masks_ids() {
    let guide = "text\n```console\n$ echo a\na\n$ true\n```\n```rust\n$ not a command\n```\n";
    let steps = steps(guide);
    assert_eq!(steps.len(), 2);
    assert_eq!((steps[0].command.as_str(), steps[0].shown.as_str(), steps[0].first_line), ("echo a", "a\n", 3));
    assert_eq!((steps[1].command.as_str(), steps[1].shown_lines), ("true", 0));
    assert_eq!(mask_ids("enqueued: 516866a5dab195540c7a72fb."), "enqueued: <id>.");
    assert_eq!(resolve("cargo run -q -p examples --bin evolve_v1 -- list"), format!("'{}' list", binary("evolve_v1")));
}
