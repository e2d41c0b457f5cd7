//! Child processes of this binary (`latency-worker`, `drain-part`, …) and the
//! line protocol with them: the child prints `READY`, reads `GO`/`STOP` on
//! stdin, and reports one `KEYWORD {json}` line; `RESULT` lines are collected.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tokio::time::Instant;

use crate::{Result, bail};

/// A running child of this binary; killed on drop if it is still running.
pub struct ChildProc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: UnboundedReceiver<String>,
    results: Vec<Value>,
}

impl ChildProc {
    /// Starts `jobs-bench ARGS…` with extra environment `envs`.
    pub fn spawn(args: &[String], envs: &[(String, String)]) -> Result<Self> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
        let name = args.join(" ");
        let mut command = Command::new(exe);
        // The suite sets each run's knobs itself; the caller's must not leak into all of them.
        for knob in crate::scenarios::KNOBS {
            command.env_remove(knob);
        }
        let mut child = command
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start `jobs-bench {name}`: {e}"))?;
        let stdout = child.stdout.take().ok_or("the child has no stdout pipe")?;
        let stdin = child.stdin.take();
        Ok(Self { name, child, stdin, lines: forward_lines(stdout), results: Vec::new() })
    }

    /// The child's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line, `None` at end of output; an error after `deadline`.
    async fn next_line(&mut self, deadline: Instant) -> Result<Option<String>> {
        match tokio::time::timeout_at(deadline, self.lines.recv()).await {
            Ok(line) => Ok(line),
            Err(_) => bail!("`jobs-bench {}` timed out", self.name),
        }
    }

    fn other_line(&mut self, line: &str) {
        match line.strip_prefix("RESULT ").map(serde_json::from_str::<Value>) {
            Some(Ok(value)) => self.results.push(value),
            _ => eprintln!("  [{}] {line}", self.name),
        }
    }

    /// Waits for a line `PREFIX rest` and returns `rest`.
    pub async fn expect(&mut self, prefix: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_line(deadline).await? {
                Some(line) => match line.strip_prefix(prefix) {
                    Some(rest) if rest.is_empty() || rest.starts_with(' ') => return Ok(rest.trim().to_owned()),
                    _ => self.other_line(&line),
                },
                None => {
                    let status = self.wait_exit(Duration::from_secs(5)).await;
                    bail!("`jobs-bench {}` ended before it printed {prefix} ({})", self.name, describe(status));
                }
            }
        }
    }

    /// Waits for `PREFIX {json}` and decodes the json.
    pub async fn expect_json<T: serde::de::DeserializeOwned>(&mut self, prefix: &str, timeout: Duration) -> Result<T> {
        let text = self.expect(prefix, timeout).await?;
        serde_json::from_str(&text).map_err(|e| format!("`jobs-bench {}`: bad {prefix} line: {e}", self.name).into())
    }

    /// Writes one line to the child's stdin.
    pub fn send(&mut self, line: &str) -> Result<()> {
        let Some(stdin) = self.stdin.as_mut() else { bail!("stdin of `jobs-bench {}` is closed", self.name) };
        writeln!(stdin, "{line}").and_then(|()| stdin.flush())?;
        Ok(())
    }

    /// Closes the child's stdin (it reads end of input).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    async fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return Some(status),
                Ok(None) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(5)).await,
                _ => return None,
            }
        }
    }

    /// Reads the rest of the output, waits for a successful exit and returns the RESULT lines.
    pub async fn finish(&mut self, timeout: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        self.close_stdin();
        while let Some(line) = self.next_line(deadline).await? {
            self.other_line(&line);
        }
        let status =
            self.wait_exit(deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(5))).await;
        match status {
            Some(status) if status.success() => Ok(std::mem::take(&mut self.results)),
            other => bail!("`jobs-bench {}` failed ({})", self.name, describe(other)),
        }
    }
}

fn describe(status: Option<ExitStatus>) -> String {
    status.map_or_else(|| "still running".to_owned(), |s| s.to_string())
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Lines of a reader, forwarded by a thread into a channel.
fn forward_lines(reader: impl std::io::Read + Send + 'static) -> UnboundedReceiver<String> {
    let (tx, rx) = unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The child side: this process's stdin, line by line.
pub fn stdin_lines() -> UnboundedReceiver<String> {
    forward_lines(std::io::stdin())
}

/// Waits for the line `expected` on `lines`; end of input or a timeout is an error.
pub async fn wait_for(lines: &mut UnboundedReceiver<String>, expected: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, lines.recv()).await {
            Ok(Some(line)) if line.split_whitespace().next() == Some(expected) => return Ok(line),
            Ok(Some(_)) => {}
            Ok(None) => bail!("stdin closed before {expected}"),
            Err(_) => bail!("no {expected} on stdin within {timeout:?}"),
        }
    }
}

/// Prints a protocol line and flushes it.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}
