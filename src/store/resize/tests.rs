//! The move's state as lockers read it: a page marked moved in a file whose state goes from
//! *migrating* to *moved* under them is always found moved, and its mark kept.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::*;
use crate::store::{LockError, LockKind, OpenRequest, lock_kinds, open_shared};

const PAGE: u32 = 1;
const TIMEOUT: Option<Duration> = Some(Duration::from_secs(10));
/// How long each locker keeps trying (the race it guards against lies between two loads).
const HAMMER: Duration = Duration::from_millis(400);

fn open(path: &Path, kind: LockKind) -> Arc<SharedFile> {
    open_shared(&OpenRequest::native(path, kind, 4, 4096)).expect("open")
}

/// Runs `lock` on a marked page for [`HAMMER`] while another thread flips the file's state
/// between *migrating* and *moved* (both mean the mark is real): every attempt must find the
/// page moved, and the mark must stay.
fn hammer(file: &Arc<SharedFile>, lock: impl Fn(&SharedFile) -> Result<(), LockError>) {
    file.set_resize_word(header::STATE_OFFSET, u64::from(header::STATE_MIGRATING));
    file.row(PAGE)
        .expect("row")
        .moved
        .store(1, Ordering::Release);
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let (file, stop) = (Arc::clone(file), Arc::clone(&stop));
        std::thread::spawn(move || {
            let states = [header::STATE_MOVED, header::STATE_MIGRATING];
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                file.set_resize_word(header::STATE_OFFSET, u64::from(states[i % 2]));
                i += 1;
            }
        })
    };
    let start = Instant::now();
    let mut attempts = 0u64;
    let mut wrong = None;
    while start.elapsed() < HAMMER {
        attempts += 1;
        match lock(file) {
            Err(LockError::Moved) if file.moved(PAGE) => {}
            other => {
                wrong = Some(format!(
                    "attempt {attempts}: {:?}, mark {}",
                    other.map(|()| "locked"),
                    file.moved(PAGE)
                ));
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    flipper.join().expect("flipper");
    assert_eq!(wrong, None, "after {attempts} attempts");
}

#[test]
fn a_marked_page_stays_moved_while_the_move_finishes() {
    for kind in lock_kinds() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = open(&dir.path().join("cache"), kind);
        hammer(&file, |f| f.lock(PAGE, TIMEOUT).map(drop));
        hammer(&file, |f| f.lock_shared(PAGE, TIMEOUT).map(drop));
        hammer(&file, |f| {
            f.lock_write_back(PAGE, super::super::write_back_lock::Wait::Up(TIMEOUT))
                .map(drop)
        });
    }
}
