//! The Lua scripts, loaded once and called by SHA (`EVALSHA`); `redis`
//! reloads a script transparently when the server answers `NOSCRIPT`.
//! `lua/common.lua` (the clock, the lease checks and bookkeeping, pending cancellation
//! requests) goes in front of every script.

use deadpool_redis::redis::Script;

/// Every script the backend uses.
pub(crate) struct Scripts {
    pub push: Script,
    pub fetch: Script,
    pub complete: Script,
    pub settle: Script,
    pub put_back: Script,
    pub extend: Script,
    pub rescue: Script,
    pub promote: Script,
    pub requeue: Script,
    pub record: Script,
    pub release: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            push: Script::new(concat!(include_str!("lua/common.lua"), include_str!("lua/push.lua"))),
            fetch: Script::new(concat!(include_str!("lua/common.lua"), include_str!("lua/fetch.lua"))),
            complete: Script::new(concat!(include_str!("lua/common.lua"), include_str!("lua/complete.lua"))),
            settle: Script::new(concat!(include_str!("lua/common.lua"), include_str!("lua/settle.lua"))),
            put_back: Script::new(concat!(include_str!("lua/common.lua"), include_str!("lua/put_back.lua"))),
            extend: Script::new(concat!(include_str!("lua/common.lua"), include_str!("lua/extend.lua"))),
            rescue: Script::new(concat!(include_str!("lua/common.lua"), include_str!("lua/rescue.lua"))),
            promote: Script::new(concat!(include_str!("lua/common.lua"), include_str!("lua/promote.lua"))),
            requeue: Script::new(concat!(include_str!("lua/common.lua"), include_str!("lua/requeue.lua"))),
            record: Script::new(concat!(include_str!("lua/common.lua"), include_str!("lua/record.lua"))),
            release: Script::new(include_str!("lua/release.lua")),
        }
    }

    /// Every script with its name, for loading and for the docs test.
    pub fn all(&self) -> [(&'static str, &Script); 11] {
        [
            ("push", &self.push),
            ("fetch", &self.fetch),
            ("complete", &self.complete),
            ("settle", &self.settle),
            ("put_back", &self.put_back),
            ("extend", &self.extend),
            ("rescue", &self.rescue),
            ("promote", &self.promote),
            ("requeue", &self.requeue),
            ("record", &self.record),
            ("release", &self.release),
        ]
    }
}
