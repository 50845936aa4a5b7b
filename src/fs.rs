//! Opening a file by name in a directory other users can write (`/tmp`, `/dev/shm`), where
//! anything may wait at the name: a FIFO whose open would block, a device, a socket, a
//! symbolic link to somebody else's file, another user's file. The crate opens its own files
//! this way; [`open_owned`] is the same open for tiers and tools built on the public API (the
//! Redis tier's state file).

pub use crate::store::untrusted::open_owned;
