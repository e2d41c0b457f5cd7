//! The Redis backend of `jobs` (work in progress: see issue "Redis backend").
//!
//! Until it lands, [`jobs_core::MemoryBackend`] is the only backend.

pub use jobs_core;
