//! [`Listener`]: one per host; removes from the cache file the keys changed in Redis.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use redis::Connection;

use super::RedisError;
use super::conn::connect;
use super::options::RedisOptions;
use super::state::{StateWriter, state_path};
use crate::Cache;

/// The channel Redis publishes invalidations on (RESP2 redirect mode).
const INVALIDATE_CHANNEL: &str = "__redis__:invalidate";
/// How long the listener waits for a message before it beats its heartbeat again.
const POLL: Duration = Duration::from_millis(100);
/// How often it pings Redis on an otherwise quiet connection.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Backoff between reconnection attempts: from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Where a [`Listener`] is. Not comparable with `==`: two failures are not equal in any
/// useful sense (errors have no equality), so ask with `matches!` or
/// [`is_trusted`](Self::is_trusted).
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum ListenerStatus {
    /// Not subscribed (yet, or any more): the host does not trust its file. The last error,
    /// if there was one, with its cause (`std::error::Error::source`).
    Down(Option<Arc<RedisError>>),
    /// Subscribed: the host trusts its file.
    Trusted,
    /// Stopped.
    Stopped,
}

impl ListenerStatus {
    /// Whether the listener is subscribed: the host trusts its file.
    pub fn is_trusted(&self) -> bool {
        matches!(self, ListenerStatus::Trusted)
    }
}

struct Shared {
    stop: AtomicBool,
    status: Mutex<ListenerStatus>,
    invalidations: AtomicU64,
    connections: AtomicU64,
}

impl Shared {
    fn set(&self, s: ListenerStatus) {
        *self.status.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }
}

/// The invalidation listener of one host (one cache file): a background thread that keeps
/// the file in step with Redis. Start one per host, in one process — the parent of the
/// workers — with the options the host's [`RedisBacking`](super::RedisBacking) (or session
/// store) uses. It stops when dropped, leaving the host distrusted. See the
/// [module docs](crate::redis) for the exact sequence it follows.
pub struct Listener {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    pid: u32,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Listener {
    /// Marks the host distrusted, clears the cache file and starts the listener thread,
    /// which connects (and reconnects) by itself.
    ///
    /// # Errors
    /// [`Error::Io`](crate::Error::Io) if the state file beside the cache file
    /// (`<path>.redis`) cannot be created or written; an error opening a second handle on
    /// the cache file or clearing it.
    pub fn start(options: RedisOptions, cache: &Cache) -> crate::Result<Listener> {
        let path = cache.path().to_path_buf();
        let io_error = |source| crate::Error::Io {
            path: state_path(&path),
            op: "open the Redis state file",
            source,
        };
        // A handle without the backing store: removing a key must not delete it in Redis.
        let local = Cache::builder()
            .path(&path)
            .layout(cache.layout())
            .lock_kind(cache.lock_kind())
            .num_pages(cache.num_pages())
            .page_size(cache.page_size())
            .start_slots(cache.start_slots())
            .open()?;
        let state = StateWriter::open(&path).map_err(io_error)?;
        local.clear()?;
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            status: Mutex::new(ListenerStatus::Down(None)),
            invalidations: AtomicU64::new(0),
            connections: AtomicU64::new(0),
        });
        let mut worker = Worker {
            options,
            local,
            state,
            path,
            shared: Arc::clone(&shared),
        };
        let thread = std::thread::Builder::new()
            .name("fastmmap-redis-listener".into())
            .spawn(move || worker.run())
            .map_err(|source| crate::Error::Io {
                path: cache.path().to_path_buf(),
                op: "start the Redis listener thread",
                source,
            })?;
        Ok(Listener {
            shared,
            thread: Some(thread),
            pid: std::process::id(),
        })
    }

    /// Where the listener is now. In a forked child the listener's thread does not exist
    /// (it lives in the parent): `Stopped`, without touching the status lock, which a fork
    /// may have copied while the thread held it.
    pub fn status(&self) -> ListenerStatus {
        if self.pid != std::process::id() {
            return ListenerStatus::Stopped;
        }
        self.shared
            .status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until the host trusts its file again (subscribed), at most `timeout`; whether
    /// it does.
    pub fn wait_trusted(&self, timeout: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.status().is_trusted() {
                return true;
            }
            if start.elapsed() >= timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Keys removed from the file so far because Redis said they changed.
    pub fn invalidations(&self) -> u64 {
        self.shared.invalidations.load(Ordering::Relaxed)
    }

    /// How many times the listener has subscribed (1 after the first connection; each
    /// reconnection adds one).
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if self.pid != std::process::id() {
            // A forked child's copy: the thread lives in the parent only.
            std::mem::forget(thread);
            return;
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = thread.join();
    }
}

/// The listener thread's own state.
struct Worker {
    options: RedisOptions,
    local: Cache,
    state: StateWriter,
    path: PathBuf,
    shared: Arc<Shared>,
}

impl Worker {
    fn stopping(&self) -> bool {
        self.shared.stop.load(Ordering::Relaxed)
    }

    fn run(&mut self) {
        let mut backoff = BACKOFF_FIRST;
        // A failure to connect again, after the first one reported, is reported quietly.
        let mut again = false;
        while !self.stopping() {
            let outcome = self.session();
            let was_trusted = self.shared.status.lock().is_ok_and(|s| s.is_trusted());
            // Whatever happened, nothing is trusted until subscribed again.
            self.distrust();
            let error = outcome.err().map(Arc::new);
            if self.stopping() {
                break;
            }
            again &= !was_trusted;
            super::events::redis_down(&self.path, self.options.server(), error.as_deref(), again);
            again = true;
            if was_trusted {
                backoff = BACKOFF_FIRST;
            }
            self.shared.set(ListenerStatus::Down(error));
            let until = Instant::now() + backoff;
            while Instant::now() < until && !self.stopping() {
                let _ = self.state.heartbeat();
                std::thread::sleep(POLL.min(until.saturating_duration_since(Instant::now())));
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.distrust();
        self.shared.set(ListenerStatus::Stopped);
    }

    /// Marks the host distrusted and clears the file, retrying until both are done (a copy
    /// left in the file would be served unchecked) or the listener is stopped.
    fn distrust(&mut self) {
        let mut reported = false;
        loop {
            // Both are tried, in this order, whether or not the first fails.
            let error = match (self.state.distrust(), self.local.clear()) {
                (Ok(()), Ok(())) => return,
                (Err(e), _) => self.options.error("write the state file", e),
                (Ok(()), Err(e)) => self.local_error("clear the cache file", e),
            };
            let error = Some(Arc::new(error));
            if !std::mem::replace(&mut reported, true) {
                super::events::redis_distrust_failed(&self.path, error.as_deref());
            }
            self.shared.set(ListenerStatus::Down(error));
            if self.stopping() {
                return;
            }
            std::thread::sleep(POLL);
        }
    }

    fn local_error(&self, op: &'static str, e: crate::Error) -> RedisError {
        RedisError {
            server: self.path.display().to_string(),
            op,
            source: Box::new(e),
        }
    }

    /// One connection: subscribe, flush, trust, then apply invalidations until it fails.
    fn session(&mut self) -> Result<(), RedisError> {
        let o = &self.options;
        let mut conn: Connection = connect(o, o.deadline())?;
        let id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query(&mut conn)
            .map_err(|e| o.failed("CLIENT ID", e))?;
        redis::cmd("CLIENT")
            .arg("TRACKING")
            .arg("on")
            .arg("REDIRECT")
            .arg(id)
            .arg("BCAST")
            .arg("PREFIX")
            .arg(&o.namespace)
            .query::<()>(&mut conn)
            .map_err(|e| o.failed("CLIENT TRACKING", e))?;
        let mut pubsub = conn.as_pubsub();
        pubsub
            .subscribe(INVALIDATE_CHANNEL)
            .map_err(|e| o.failed("SUBSCRIBE", e))?;
        // Subscribed: from here on every change under the namespace reaches us. Whatever the
        // file holds from before may be stale.
        self.local
            .clear()
            .map_err(|e| self.local_error("clear the cache file", e))?;
        self.state
            .trust()
            .map_err(|e| o.error("write the state file", e))?;
        let connections = self.shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
        super::events::redis_trusted(&self.path, o.server(), connections);
        self.shared.set(ListenerStatus::Trusted);
        pubsub
            .set_read_timeout(Some(POLL))
            .map_err(|e| o.failed("set a read timeout", e))?;
        let mut last_ping = Instant::now();
        loop {
            if self.stopping() {
                return Ok(());
            }
            self.state
                .heartbeat()
                .map_err(|e| o.error("write the state file", e))?;
            if last_ping.elapsed() >= PING_EVERY {
                pubsub
                    .set_read_timeout(Some(o.timeout))
                    .and_then(|()| pubsub.ping::<redis::Value>())
                    .and_then(|_| pubsub.set_read_timeout(Some(POLL)))
                    .map_err(|e| o.failed("PING", e))?;
                last_ping = Instant::now();
            }
            let msg = match pubsub.get_message() {
                Ok(msg) => msg,
                Err(e) if e.is_timeout() => continue,
                Err(e) => return Err(o.failed("receive invalidations", e)),
            };
            if msg.get_channel_name() != INVALIDATE_CHANNEL {
                continue;
            }
            match msg.get_payload::<Option<Vec<Vec<u8>>>>() {
                Ok(Some(keys)) => {
                    for rkey in keys {
                        let Some(key) = rkey.strip_prefix(o.namespace.as_slice()) else {
                            continue;
                        };
                        self.state
                            .bump(key)
                            .map_err(|e| o.error("write the state file", e))?;
                        self.local
                            .remove(key)
                            .map_err(|e| self.local_error("remove an invalidated key", e))?;
                        self.shared.invalidations.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // Redis flushed its keys: so do we.
                Ok(None) => {
                    self.state
                        .bump_all()
                        .map_err(|e| o.error("write the state file", e))?;
                    self.local
                        .clear()
                        .map_err(|e| self.local_error("clear the cache file", e))?;
                }
                Err(e) => return Err(o.failed("read an invalidation", e)),
            }
        }
    }
}
