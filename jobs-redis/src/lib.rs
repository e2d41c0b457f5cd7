//! The Redis backend of `jobs`: [`RedisBackend`], the production broker, and
//! [`cli`], the registered-worker command line.
//!
//! Key layout, scripts and delivery guarantees are in `docs/PROTOCOL.md`.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use jobs_core::{Client, Worker};
//! use jobs_redis::RedisBackend;
//!
//! let backend = RedisBackend::connect("redis://127.0.0.1:6379").await?;
//! let client = Client::new(backend.clone());
//! let worker = Worker::builder(backend).queue("critical", 10).queue("default", 3).concurrency(20).build()?;
//! worker.run_until(jobs_core::shutdown_signal()).await?;
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(missing_docs)]

mod backend;
pub mod cli;
mod cluster;
mod keys;
mod scripts;
#[cfg(feature = "test-util")]
#[allow(clippy::expect_used)]
pub mod testing;

pub use backend::{MIN_REDIS_VERSION, RedisBackend, RedisConfig, ServerCheck};
pub use deadpool_redis;
