//! The two-process harness shared by the benchmarks that time a forked child beside the parent:
//! `benches/cache.rs` (group `*/get_hit_procs`) and `compare/benches/peers.rs` (group
//! `peers_threads`), which includes this file with `#[path]` so that the `compare/` crate stays
//! out of the main build. Not a bench target of its own: cargo finds benches only at
//! `benches/*.rs` and `benches/*/main.rs`.

use std::time::{Duration, Instant};

/// Raw pipe ends, closed on drop.
struct Pipe {
    read: libc::c_int,
    write: libc::c_int,
}

impl Pipe {
    fn new() -> Pipe {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` is a valid, writable array of two ints, as pipe(2) requires.
        let rc = unsafe { libc::pipe(fds.as_mut_ptr()) };
        assert_eq!(rc, 0, "pipe: {}", std::io::Error::last_os_error());
        Pipe {
            read: fds[0],
            write: fds[1],
        }
    }

    /// Writes one byte (async-signal-safe: usable in a forked child).
    fn signal(&self) -> bool {
        let byte = 1u8;
        // SAFETY: `self.write` is this pipe's open write end and `byte` is a valid one-byte
        // buffer that outlives the call.
        unsafe { libc::write(self.write, (&raw const byte).cast(), 1) == 1 }
    }

    /// Blocks until one byte arrives (async-signal-safe: usable in a forked child).
    fn wait(&self) -> bool {
        let mut byte = 0u8;
        loop {
            // SAFETY: `self.read` is this pipe's open read end and `byte` is a valid, writable
            // one-byte buffer that outlives the call.
            let n = unsafe { libc::read(self.read, (&raw mut byte).cast(), 1) };
            if n == 1 {
                return true;
            }
            if n == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return false;
            }
        }
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        // SAFETY: both descriptors were returned by pipe(2), are owned by this value and are
        // closed exactly once, here.
        unsafe {
            libc::close(self.read);
            libc::close(self.write);
        }
    }
}

/// Runs `child` in a forked child and `parent` here, both released together, and returns the
/// wall time from their release until both are done. Panics if the child fails: `child`
/// returned `false`, or the child could not start.
///
/// # Safety
/// The process must be single-threaded when this is called (benches run their thread groups
/// before, or join every worker first), so that no lock — malloc's, a cache's page mutexes — is
/// held by a thread the child would lack. `child` runs in the child, which then leaves with
/// `_exit`: it must not rely on destructors or `atexit` handlers running there.
pub unsafe fn two_processes(parent: impl FnOnce(), child: impl FnOnce() -> bool) -> Duration {
    let ready = Pipe::new();
    let go = Pipe::new();
    // SAFETY: the caller guarantees this process is single-threaded (see # Safety). The child
    // runs only `child` and leaves with `_exit`, never returning or unwinding into the
    // parent's code.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        let ok = ready.signal() && go.wait() && child();
        // SAFETY: `_exit` ends the child at once without running the parent's destructors or
        // atexit handlers (which would, e.g., remove the temp dir); always sound to call.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    assert!(ready.wait(), "the forked child did not start");
    let start = Instant::now();
    assert!(go.signal(), "cannot release the forked child");
    parent();
    let mut status = 0;
    // SAFETY: `pid` is our own child and `status` a valid, writable int.
    let rc = unsafe { libc::waitpid(pid, &raw mut status, 0) };
    let elapsed = start.elapsed();
    assert_eq!(rc, pid, "waitpid: {}", std::io::Error::last_os_error());
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the forked child failed: status {status}"
    );
    elapsed
}
