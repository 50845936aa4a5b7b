//! Opening a file that another user may have planted at its name.
//!
//! In a directory others can write (`/tmp`, `/dev/shm`), anything may wait at a name before
//! we open it: a FIFO, whose read-only open blocks until someone writes to it; a device or a
//! socket; a symbolic link to somebody else's file; another user's file. Every file the crate
//! opens by name goes through [`open_checked`]: the open itself never blocks (`O_NONBLOCK`),
//! never follows a link unless asked, never gains a controlling terminal and never leaks into
//! a child (`O_CLOEXEC`), and the descriptor's own `fstat` (not a second look at the name) must
//! show a regular file with an owner the caller trusts before anything is read or written.

#![allow(unsafe_code)]

use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// How to open the file.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Access {
    /// Open for writing too.
    pub write: bool,
    /// Create the file (with this mode, masked by the umask) if the name is free.
    pub create: Option<u32>,
    /// Follow a symbolic link at the last component of the path.
    pub follow_symlinks: bool,
}

#[cfg(test)]
impl Access {
    /// Reading only, not following a link at the name.
    pub(crate) const READ: Access = Access {
        write: false,
        create: None,
        follow_symlinks: false,
    };
}

/// Why a file was not opened.
#[derive(Debug)]
pub(crate) enum Refusal {
    /// The open (or the `fstat` after it) failed: no such file, permission denied, a link at
    /// the name when links are not followed (`ELOOP`), …
    Io(io::Error),
    /// Something other than a regular file is at the name: what it is ("a FIFO (named
    /// pipe)", "a socket", "a directory", …).
    NotRegular(&'static str),
    /// A symbolic link at the name, which was not to be followed.
    Symlink,
    /// A regular file owned by a user the caller does not trust: its owner.
    Owner(u32),
}

/// What a file type is, in words, for anything that is not a regular file.
fn not_regular(md: &Metadata) -> Option<&'static str> {
    let t = md.file_type();
    Some(if t.is_file() {
        return None;
    } else if t.is_fifo() {
        "a FIFO (named pipe)"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    })
}

/// Opens `path` as `access` says, then checks with `fstat` that it is a regular file whose
/// owner `trusted` accepts; returns the file and that `fstat`.
///
/// The open never waits (a FIFO opens at once and is then refused); once the file is known to
/// be regular, `O_NONBLOCK` is cleared again.
pub(crate) fn open_checked(
    path: &Path,
    access: Access,
    trusted: impl FnOnce(u32) -> bool,
) -> Result<(File, Metadata), Refusal> {
    let mut flags = libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    if !access.follow_symlinks {
        flags |= libc::O_NOFOLLOW;
    }
    let mut opts = OpenOptions::new();
    opts.read(true).write(access.write).custom_flags(flags);
    if let Some(mode) = access.create {
        opts.create(true).mode(mode);
    }
    let file = match opts.open(path) {
        Ok(file) => file,
        Err(e) => return Err(refusal(path, access, e)),
    };
    let md = file.metadata().map_err(Refusal::Io)?;
    if let Some(what) = not_regular(&md) {
        return Err(Refusal::NotRegular(what));
    }
    if !trusted(md.uid()) {
        return Err(Refusal::Owner(md.uid()));
    }
    clear_nonblock(&file).map_err(Refusal::Io)?;
    Ok((file, md))
}

/// Opens `path` for reading (and writing, with `write`), creating it with `create_mode`
/// (masked by the umask; only with `write`) if the name is free. The open never blocks,
/// never follows a symbolic link at the name, never gains a controlling terminal and never
/// leaks into a child; then the descriptor's own `fstat`, not a second look at the name,
/// must show a regular file owned by the user `owner`. Returns the file and that `fstat`.
///
/// # Errors
/// The open's own error (`NotFound` for a free name without `create_mode`, ...);
/// `InvalidInput` for something other than a regular file (the message says what: "a FIFO
/// (named pipe), not a regular file", "a symbolic link, which is not followed") or for
/// `create_mode` without `write`; `PermissionDenied` for a file of another owner ("owned by
/// uid 65534, not by uid 1000").
///
/// ```
/// use std::os::unix::fs::MetadataExt;
///
/// let dir = tempfile::tempdir()?;
/// let me = std::fs::metadata(dir.path())?.uid();
/// let path = dir.path().join("state");
/// let (_file, md) = fastmmap::fs::open_owned(&path, me, true, Some(0o600))?;
/// assert!(md.is_file());
/// let e = fastmmap::fs::open_owned(&path, me + 1, false, None).unwrap_err();
/// assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied);
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn open_owned(
    path: &Path,
    owner: u32,
    write: bool,
    create_mode: Option<u32>,
) -> io::Result<(File, Metadata)> {
    if create_mode.is_some() && !write {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a file is created only when it is opened for writing",
        ));
    }
    let access = Access {
        write,
        create: create_mode,
        follow_symlinks: false,
    };
    open_checked(path, access, |uid| uid == owner).map_err(|refusal| match refusal {
        Refusal::Io(e) => e,
        Refusal::NotRegular(what) => io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}, not a regular file"),
        ),
        Refusal::Symlink => io::Error::new(
            io::ErrorKind::InvalidInput,
            "a symbolic link, which is not followed",
        ),
        Refusal::Owner(uid) => io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("owned by uid {uid}, not by uid {owner}"),
        ),
    })
}

/// Why the open of `path` failed with `e`: what is at the name when that is the reason.
fn refusal(path: &Path, access: Access, e: io::Error) -> Refusal {
    let errno = e.raw_os_error().unwrap_or(0);
    if errno == libc::ELOOP && !access.follow_symlinks {
        let link = std::fs::symlink_metadata(path).is_ok_and(|md| md.file_type().is_symlink());
        return if link {
            Refusal::Symlink
        } else {
            Refusal::Io(e)
        };
    }
    // A socket (ENXIO), a device without a driver (ENODEV), a directory opened for writing
    // (EISDIR): say what is there rather than how the open failed.
    if ![libc::ENXIO, libc::ENODEV, libc::EISDIR].contains(&errno) {
        return Refusal::Io(e);
    }
    let md = if access.follow_symlinks {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    };
    match md.ok().as_ref().and_then(not_regular) {
        Some(what) => Refusal::NotRegular(what),
        None => Refusal::Io(e),
    }
}

/// Clears `O_NONBLOCK` (meaningless for a regular file today, but not left behind).
fn clear_nonblock(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: `fd` is a descriptor `file` owns for the whole call; F_GETFL reads its flags.
    let fl = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if fl < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above; F_SETFL changes only the status flags of this open file description.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, fl & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Why a directory is not private to this user, if it is not: it must be a directory (not a
/// link to one unless `follow_symlinks`), owned by `user`, with no permission bits for group
/// or others.
pub(crate) fn check_private_dir(
    dir: &Path,
    user: u32,
    follow_symlinks: bool,
) -> Result<(), String> {
    let mut flags = libc::O_DIRECTORY | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC;
    if !follow_symlinks {
        flags |= libc::O_NOFOLLOW;
    }
    let opened = OpenOptions::new().read(true).custom_flags(flags).open(dir);
    let md = match opened.and_then(|d| d.metadata()) {
        Ok(md) => md,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => return Err("a symbolic link".into()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            let what = std::fs::symlink_metadata(dir)
                .ok()
                .and_then(|md| not_regular(&md))
                .unwrap_or("a regular file");
            return Err(format!("{what}, not a directory"));
        }
        Err(e) => return Err(format!("cannot be opened: {e}")),
    };
    if md.uid() != user {
        return Err(format!(
            "owned by uid {}, not by this user (uid {user})",
            md.uid()
        ));
    }
    let mode = md.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode {mode:04o} lets other users in (it must be 0700 or stricter)"
        ));
    }
    Ok(())
}

/// Why [`private_dir`] cannot give a directory.
#[derive(Debug)]
pub(crate) enum DirProblem {
    /// It exists but is not private: why.
    NotPrivate(String),
    /// It does not exist and cannot be created.
    Create(io::Error),
}

/// A directory only `user` can reach, for default files: `dir` itself once it is checked by
/// [`check_private_dir`], created with mode 0700 if it does not exist. A directory another
/// user made first, or one open to others, is refused with the reason, never used or changed.
pub(crate) fn private_dir(dir: &Path, user: u32) -> Result<(), DirProblem> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(DirProblem::Create(e)),
    }
    check_private_dir(dir, user, false).map_err(DirProblem::NotPrivate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;

    fn mkfifo(path: &Path) {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        mkfifo(&path);
        for access in [
            Access::READ,
            Access {
                write: true,
                create: Some(0o600),
                follow_symlinks: false,
            },
        ] {
            match open_checked(&path, access, |_| true) {
                Err(Refusal::NotRegular(what)) => assert!(what.contains("FIFO"), "{what}"),
                other => panic!("expected NotRegular, got {other:?}"),
            }
        }
    }

    #[test]
    fn links_owners_and_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"x").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert!(matches!(
            open_checked(&link, Access::READ, |_| true),
            Err(Refusal::Symlink)
        ));
        let follow = Access {
            follow_symlinks: true,
            ..Access::READ
        };
        assert!(open_checked(&link, follow, |_| true).is_ok());
        assert!(matches!(
            open_checked(&path, Access::READ, |_| false),
            Err(Refusal::Owner(_))
        ));
        let write = Access {
            write: true,
            ..Access::READ
        };
        for access in [Access::READ, write] {
            assert!(matches!(
                open_checked(dir.path(), access, |_| true),
                Err(Refusal::NotRegular("a directory"))
            ));
        }
        let socket = dir.path().join("s");
        drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
        assert!(matches!(
            open_checked(&socket, Access::READ, |_| true),
            Err(Refusal::NotRegular("a socket"))
        ));
        let (file, md) = open_checked(&path, Access::READ, |_| true).unwrap();
        assert_eq!(md.len(), 1);
        // SAFETY: the descriptor is owned by `file`.
        let fl = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
        assert_eq!(fl & libc::O_NONBLOCK, 0);
    }

    #[test]
    fn open_owned_says_what_it_refused() {
        let dir = tempfile::tempdir().unwrap();
        let me = std::fs::metadata(dir.path()).unwrap().uid();
        let path = dir.path().join("f");
        let (_, md) = open_owned(&path, me, true, Some(0o600)).unwrap();
        assert_eq!((md.len(), md.mode() & 0o777), (0, 0o600));
        let e = open_owned(&path, me + 1, false, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(
            e.to_string(),
            format!("owned by uid {me}, not by uid {}", me + 1)
        );
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = open_owned(&link, me, false, None).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let e = open_owned(dir.path(), me, false, None).unwrap_err();
        assert_eq!(e.to_string(), "a directory, not a regular file");
        let e = open_owned(&dir.path().join("none"), me, false, Some(0o600)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let e = open_owned(&dir.path().join("none"), me, false, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
