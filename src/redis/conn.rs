//! Connections to Redis, opened lazily in each process and kept for reuse by its threads.
//!
//! A pool made in a parent is inherited by forked children: a child sees that the pool's
//! connections belong to another process and opens its own (two processes must never talk
//! over one socket).

use std::sync::{Mutex, TryLockError};
use std::time::{Duration, Instant};

use redis::Connection;

use super::{RedisError, RedisOptions};

/// A connection, and how many replies to commands sent without waiting are still to be
/// read from it (read before its next command).
struct Conn {
    conn: Connection,
    unread: usize,
}

/// Idle connections of one process.
struct Idle {
    pid: u32,
    conns: Vec<Conn>,
}

/// At most this many idle connections are kept per process.
const MAX_IDLE: usize = 16;
/// How long to wait for the pool's mutex before opening a connection of one's own (a fork
/// from a thread that held it leaves it locked in the child forever).
const POOL_WAIT: Duration = Duration::from_millis(2);

/// A per-process pool of connections to one server.
pub(crate) struct Pool {
    pub(crate) options: RedisOptions,
    idle: Mutex<Idle>,
}

impl Pool {
    pub(crate) fn new(options: RedisOptions) -> Pool {
        Pool {
            options,
            idle: Mutex::new(Idle {
                pid: std::process::id(),
                conns: Vec::new(),
            }),
        }
    }

    /// Runs `f` on a connection of this process; `op` names it in an error. The whole of it
    /// — taking or opening a connection, then `f` — has one deadline,
    /// [`RedisOptions::timeout`] from now: `f` must make one request with one reply (a
    /// single command or an `EVAL`), since the redis crate reads each reply of a pipeline
    /// with the whole socket timeout, even after one of them timed out. A connection on
    /// which anything failed is closed, not reused.
    pub(crate) fn with<T>(
        &self,
        op: &'static str,
        f: impl FnOnce(&mut Connection) -> redis::RedisResult<T>,
    ) -> Result<T, RedisError> {
        let options = &self.options;
        let deadline = options.deadline();
        let mut conn = self.ready(deadline)?;
        let left = options.remaining(op, deadline)?;
        conn.conn
            .set_read_timeout(Some(left))
            .and_then(|()| conn.conn.set_write_timeout(Some(left)))
            .map_err(|e| options.failed(op, e))?;
        match f(&mut conn.conn) {
            Ok(v) => {
                self.put(conn);
                Ok(v)
            }
            Err(e) => Err(options.failed(op, e)),
        }
    }

    #[cfg(feature = "session")]
    /// Sends `cmd` without waiting for its reply (read before the connection's next
    /// command). Redis runs it all the same; its reply is not looked at.
    pub(crate) fn send(&self, op: &'static str, cmd: &redis::Cmd) -> Result<(), RedisError> {
        let options = &self.options;
        let deadline = options.deadline();
        let mut conn = self.ready(deadline)?;
        let left = options.remaining(op, deadline)?;
        conn.conn
            .set_write_timeout(Some(left))
            .and_then(|()| conn.conn.send_packed_command(&cmd.get_packed_command()))
            .map_err(|e| options.failed(op, e))?;
        conn.unread += 1;
        self.put(conn);
        Ok(())
    }

    /// A connection with no reply left unread: an idle one (its unread replies read by
    /// `deadline`), else a new one.
    fn ready(&self, deadline: Instant) -> Result<Conn, RedisError> {
        while let Some(mut conn) = self.take() {
            if conn.unread == 0 {
                return Ok(conn);
            }
            let Ok(left) = self.options.remaining("read an earlier reply", deadline) else {
                break;
            };
            let drained = conn.conn.set_read_timeout(Some(left)).and_then(|()| {
                (0..conn.unread).try_for_each(|_| conn.conn.recv_response().map(drop))
            });
            if drained.is_ok() {
                conn.unread = 0;
                return Ok(conn);
            }
        }
        Ok(Conn {
            conn: connect(&self.options, deadline)?,
            unread: 0,
        })
    }

    fn lock(&self) -> Option<std::sync::MutexGuard<'_, Idle>> {
        let start = Instant::now();
        loop {
            match self.idle.try_lock() {
                Ok(guard) => return Some(guard),
                Err(TryLockError::Poisoned(p)) => return Some(p.into_inner()),
                Err(TryLockError::WouldBlock) if start.elapsed() < POOL_WAIT => {
                    std::thread::yield_now();
                }
                Err(TryLockError::WouldBlock) => return None,
            }
        }
    }

    fn take(&self) -> Option<Conn> {
        let mut idle = self.lock()?;
        let pid = std::process::id();
        if idle.pid != pid {
            // Inherited from the parent: its sockets are the parent's. Forget them without
            // a word on the wire (dropping only closes this process's descriptors).
            idle.conns.clear();
            idle.pid = pid;
        }
        idle.conns.pop()
    }

    fn put(&self, conn: Conn) {
        if let Some(mut idle) = self.lock()
            && idle.pid == std::process::id()
            && idle.conns.len() < MAX_IDLE
        {
            idle.conns.push(conn);
        }
    }
}

/// A new connection, connected (and its database selected) by `deadline`; its reads and
/// writes then time out after [`RedisOptions::timeout`].
pub(crate) fn connect(options: &RedisOptions, deadline: Instant) -> Result<Connection, RedisError> {
    let left = options.remaining("connect", deadline)?;
    let mut conn = options
        .client
        .get_connection_with_timeout(left)
        .map_err(|e| options.failed("connect", e))?;
    if options.db != 0 {
        let left = options.remaining("SELECT", deadline)?;
        conn.set_read_timeout(Some(left))
            .and_then(|()| conn.set_write_timeout(Some(left)))
            .and_then(|()| redis::cmd("SELECT").arg(options.db).query::<()>(&mut conn))
            .map_err(|e| options.failed("SELECT", e))?;
    }
    conn.set_read_timeout(Some(options.timeout))
        .and_then(|()| conn.set_write_timeout(Some(options.timeout)))
        .map_err(|e| options.failed("connect", e))?;
    Ok(conn)
}
