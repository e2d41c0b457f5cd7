//! The thumbnail web app (`examples/src/web.rs`): a page that enqueues a job
//! and follows it to its result over server-sent events.
//!
//! - No server: `cargo run -p examples --bin web` runs on the embedded
//!   backend with a worker in this process.
//! - On Redis: `JOBS_REDIS_URL=redis://127.0.0.1:6379 cargo run -p examples --bin web`,
//!   and a worker beside it: `cargo run -p examples --bin worker -- work --events -q images`.

use std::net::{Ipv4Addr, SocketAddr};

use clap::Parser;
use jobs_core::{Client, MemoryBackend, Worker, shutdown_signal};
use tracing_subscriber::EnvFilter;

/// Serves the thumbnail demo: enqueue a job, watch it run, see its result.
#[derive(Debug, Parser)]
struct Args {
    /// The port to listen on (0 picks a free one).
    #[arg(long, default_value_t = 3000)]
    port: u16,
    /// The Redis to use; without it, jobs run on the embedded backend, in this process.
    #[arg(long, env = "JOBS_REDIS_URL")]
    redis_url: Option<String>,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();

    let listener = tokio::net::TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, args.port))).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut embedded_worker = None;
    let client = match &args.redis_url {
        Some(url) => {
            let backend = jobs_redis::RedisBackend::connect(url).await?;
            println!("jobs go to Redis; run a worker beside this app:");
            println!("  JOBS_REDIS_URL={url} cargo run -p examples --bin worker -- work --events -q images");
            Client::new(backend)
        }
        None => {
            let backend = MemoryBackend::new();
            let worker = Worker::builder(backend.clone()).queue("images", 1).events(true).build()?;
            let mut stopped = stopped.clone();
            let stop_worker = async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            };
            embedded_worker = Some(tokio::spawn(async move { worker.run_until(stop_worker).await }));
            println!("jobs run in this process, on the embedded backend (set JOBS_REDIS_URL to use Redis)");
            Client::new(backend)
        }
    };
    let app = examples::web::app(client.with_events(true));
    println!("open http://{}/", listener.local_addr()?);

    let mut stopped_server = stopped.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = stopped_server.wait_for(|stop| *stop).await;
    });
    let server = tokio::spawn(async move { server.await });
    shutdown_signal().await;
    let _ = stop.send(true);
    // Open event streams end at their job's outcome; past a few seconds they are cut.
    if tokio::time::timeout(std::time::Duration::from_secs(5), server).await.is_err() {
        tracing::warn!("event streams still open after 5 s; closing them");
    }
    if let Some(worker) = embedded_worker {
        let report = worker.await??;
        tracing::info!(succeeded = report.succeeded, "embedded worker stopped");
    }
    Ok(())
}
