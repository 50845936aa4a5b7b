//! More than one host: Redis behind the cache and the sessions (feature `redis`).
//!
//! Each host keeps its cache file as a near cache in front of one Redis server, which is the
//! shared tier (and, for sessions, the source of truth):
//!
//! - [`RedisBacking`] is a [`Backing`](crate::Backing): a miss reads through from Redis, a
//!   `set` writes through to Redis before it changes the file, a `remove` deletes in Redis
//!   first. Keys live in Redis under a namespace ([`RedisOptions::namespace`]).
//! - [`Listener`]: one per host (per cache file), in any one process of it — typically the
//!   parent of the forked workers. It asks Redis for invalidations of every key under the
//!   namespace (server-assisted client-side caching, `CLIENT TRACKING ... BCAST PREFIX`) and
//!   removes from the file each key that any client changed, this host's own writes
//!   included. While its connection is down the host does not trust its file: the file is
//!   cleared and nothing new is kept in it until the listener is subscribed again.
//! - Sessions: `SessionStoreBuilder::redis`
//!   (features `redis` and `session`) keeps every session in Redis, saved atomically, with
//!   the file as the near cache of reads.
//!
//! # The staleness bound
//!
//! A host serves a value from its file only while its listener is connected, and every
//! change of a key in Redis removes the key from the file as soon as the invalidation
//! arrives. So a read on host B, after a write on host A returned, sees the old value only
//! until Redis's invalidation message has reached B's listener and been applied: one Redis
//! push plus one local remove (measured on loopback: see the README, "More than one host").
//! If the listener's connection drops, the file is cleared and the host goes to Redis for
//! everything until the listener is back.
//!
//! # Expiry
//!
//! Redis tells the listeners of an expired key only when it evicts the key, which with many
//! keys that have a time to live can be minutes after the expiry. So a copy a host keeps
//! carries the key's expiry itself: a read-through reads the value and its time to live in
//! one script ([`Backing::load_with_expiry`](crate::Backing::load_with_expiry)), and the
//! copy expires at the last whole second at least 50 ms before Redis's expiry; a write sends
//! its expiry as `PXAT` of the whole second the file keeps. No host serves a value after
//! Redis has expired it.
//!
//! # Timeouts
//!
//! [`RedisOptions::timeout`] bounds each round trip, connecting included, and a call that
//! runs out of it fails with a [`RedisError`] that says it timed out
//! ([`RedisError::is_timeout`]). Every request is one command or one script with one reply:
//! the redis crate reads each reply of a pipeline with the whole socket timeout, so a
//! pipeline of three to a hung server would wait three times as long.
//!
//! # How a host keeps trust (the exact sequence)
//!
//! Every host shares a small *state file* beside the cache file (`<cache file>.redis`, mode
//! 0600, not followed if it is a symbolic link, and ignored unless it has the cache file's
//! owner): a trust word (odd: distrusted) and a table of per-key-hash invalidation counters.
//! The listener:
//!
//! 1. marks the host distrusted and clears the cache file;
//! 2. connects, turns on tracking for the namespace with itself as the redirect target,
//!    and subscribes to `__redis__:invalidate` — from here on no change is missed;
//! 3. clears the cache file again (it may hold copies made before step 2) and marks the
//!    host trusted;
//! 4. for each invalidated key: bumps the key's counter, then removes the key from the file;
//!    for a "flush everything" message (`FLUSHALL`/`FLUSHDB`): bumps the trust word and
//!    clears the file;
//! 5. when the connection fails (or a ping every second goes unanswered): back to 1, with a
//!    backoff of at most a second between attempts.
//!
//! The cache ([`Backing::fence`](crate::Backing::fence)) reads the trust word and the key's
//! counter before it loads or writes a key through and again after it has put the value in
//! its file; if either changed (or the host was distrusted), it drops the value again. So a
//! value read from Redis just before another host changed it cannot outlive the
//! invalidation that follows, however the two race.
//!
//! A host's own writes come back as invalidations too (tracking in broadcast mode cannot
//! tell them apart), so a written value is dropped from the file once its invalidation
//! arrives and the next read fetches it once from Redis. This costs one round trip per
//! written key and keeps the rule simple: the file only holds what Redis held after the last
//! invalidation the host has seen.
//!
//! The listener also writes a heartbeat into the state file every 100 ms; while it is more
//! than two seconds old (the listener's process died or hangs), nothing new is kept in the
//! file, and a `get` does not serve the copies already there: it drops its key's copy and
//! reads Redis ([`Backing::trusts_cached`](crate::Backing::trusts_cached); each process reads
//! the state file for this at most every 20 ms, so a hit costs a clock read). Start the
//! listener in the process that outlives the workers (the parent).

mod backing;
mod conn;
mod error;
mod events;
mod listener;
mod options;
#[cfg(feature = "session")]
pub(crate) mod session_tier;
mod state;

pub use backing::RedisBacking;
pub use error::RedisError;
pub use listener::{Listener, ListenerStatus};
pub use options::{DEFAULT_NAMESPACE, RedisOptions};
