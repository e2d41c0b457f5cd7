//! A loopback TCP proxy that delays every chunk by a fixed time in each
//! direction, as a network hop would, without limiting throughput: chunks
//! keep flowing (pipelining is preserved), each only arrives `delay` late.
//!
//! It runs as a child process (`jobs-bench proxy`) so its CPU is not counted
//! as the client's. Plain threads and `thread::sleep` keep the delay precise
//! (tokio's timer wheel rounds up to whole milliseconds).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Listens on a free loopback port and forwards every connection to
/// `upstream` with `delay` each way; returns the port. Serves until the
/// process exits.
pub fn start(upstream: SocketAddr, delay: Duration) -> std::io::Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0))?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            match client {
                Ok(client) => {
                    std::thread::spawn(move || {
                        if let Err(error) = connect(client, upstream, delay) {
                            eprintln!("jobs-bench proxy: {error}");
                        }
                    });
                }
                Err(error) => eprintln!("jobs-bench proxy: accept failed: {error}"),
            }
        }
    });
    Ok(port)
}

fn connect(client: TcpStream, upstream: SocketAddr, delay: Duration) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream)?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    pipe(client.try_clone()?, server.try_clone()?, delay);
    pipe(server, client, delay);
    Ok(())
}

/// Copies `from` → `to`, each chunk written `delay` after it was read.
fn pipe(mut from: TcpStream, mut to: TcpStream, delay: Duration) {
    let (tx, rx) = mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now() + delay, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = from.shutdown(Shutdown::Read);
    });
    std::thread::spawn(move || {
        for (due, chunk) in rx {
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&chunk).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Write);
    });
}
