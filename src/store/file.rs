//! Creating and opening cache files, race-free, and mapping them.
//!
//! A new file is built completely under a temporary name in the target directory and then
//! published with `link(2)`, which fails if the name already exists: concurrent openers see
//! either no file or a complete one, and all of them end up on the same inode. The loser of a
//! race removes its temporary file and opens the winner's. An existing file that does not
//! match what was asked for is reported and left untouched.

#![allow(unsafe_code)]

use std::fs::{self, File, Metadata, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use memmap2::MmapRaw;

use super::header::{self, FileHeader, HeaderError, OVERFLOW_BLOCK_SIZE, OverflowGeometry};
use super::layout::HASH_XXH3;
use super::layout::{Layout, LockKind};
use super::untrusted::{Access, Refusal, open_checked};
use super::{Geometry, Requested};
use crate::page::consts::{NUM_SLOTS_OFFSET, PAGE_MAGIC};
use crate::page::{PageHeader, PageMut};
use crate::{Error, Result};

/// What the builder asks for.
#[derive(Clone, Debug)]
pub(crate) struct OpenRequest {
    pub path: PathBuf,
    pub layout: Layout,
    /// `None`: the kind an existing native file records; for a new file the platform's
    /// default (`LockKind::default`, fcntl for the FastMmap layout).
    pub lock_kind: Option<LockKind>,
    pub requested: Requested,
    pub permissions: u32,
    /// Follow a symbolic link at the last component of the path.
    pub follow_symlinks: bool,
    /// Owners trusted besides this user and root.
    pub allowed_owners: Vec<u32>,
    /// Open for reading only: never create, write or take write locks.
    pub read_only: bool,
    /// The caller declares the file a cache (`reset`, `verify`): a FastMmap-layout file whose
    /// page 0 is unreadable is opened anyway, to be overwritten.
    pub trust_contents: bool,
    /// Open an existing file only, never create one (following a resized file).
    pub must_exist: bool,
    /// The overflow area asked for (native layout).
    pub overflow: OverflowRequest,
    /// A new native file gets a journal region (for `PageGuard::change_journaled`; see
    /// `journal.rs`). An existing file is opened with whatever its header says.
    pub journal: bool,
    /// A new file's owner and group (a resize's successor keeps its old file's): the group
    /// is set, and the owner too when we are root. `None`: ours, and the directory's group.
    pub owner: Option<(u32, u32)>,
    /// How long opening a file with robust locks waits for its openers lock (held
    /// exclusively by a process opening the file first, while it reinitialises the locks):
    /// the opening handle's lock timeout. `None`: as long as it takes.
    pub lock_timeout: Option<Duration>,
}

/// The overflow area's settings the builder set explicitly.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct OverflowRequest {
    /// Bytes of the area (rounded up to whole blocks); `Some(0)`: none.
    pub size: Option<u64>,
    /// The largest value stored there.
    pub max_value_size: Option<u32>,
}

impl OverflowRequest {
    /// The area a new file of `g` gets: unless asked for, an eighth of its pages' bytes
    /// rounded up to whole blocks (at most `MAX_OVERFLOW_BLOCKS`); `Some(0)`: none. The
    /// largest value defaults to an eighth of the file, and never more than half the area
    /// (whole blocks, at least one), so that a value of that size can always be replaced.
    pub(crate) fn geometry(&self, g: &Geometry) -> std::result::Result<OverflowGeometry, String> {
        let blocks = match self.size {
            Some(size) => u32::try_from(size.div_ceil(u64::from(OVERFLOW_BLOCK_SIZE)))
                .ok()
                .filter(|&b| b <= header::MAX_OVERFLOW_BLOCKS)
                .ok_or_else(|| format!("overflow_size {size} is too large"))?,
            None => default_overflow_blocks(g),
        };
        if blocks == 0 {
            if self.max_value_size.is_some() {
                return Err("max_value_size needs an overflow area (overflow_size)".into());
            }
            return Ok(OverflowGeometry::default());
        }
        let area = u64::from(blocks) * u64::from(OVERFLOW_BLOCK_SIZE);
        let file = area + u64::from(g.num_pages) * u64::from(g.page_size);
        // A replace writes its new blocks before it frees the old ones, so the default leaves
        // room for a value of the largest default size and its replacement at once.
        let half = u64::from((blocks / 2).max(1)) * u64::from(OVERFLOW_BLOCK_SIZE);
        let max_value_size = match self.max_value_size {
            Some(max) => max,
            None => u32::try_from((file / 8).min(half)).unwrap_or(u32::MAX),
        };
        let o = OverflowGeometry {
            blocks,
            block_size: OVERFLOW_BLOCK_SIZE,
            max_value_size,
        };
        o.validate()?;
        Ok(o)
    }

    /// Fails if an explicitly set field differs from the file's.
    pub(super) fn check_against(&self, found: &OverflowGeometry, path: &Path) -> Result<()> {
        if let Some(size) = self.size {
            let asked =
                size.div_ceil(u64::from(OVERFLOW_BLOCK_SIZE)) * u64::from(OVERFLOW_BLOCK_SIZE);
            if asked != found.area_size() {
                return Err(Error::GeometryMismatch {
                    path: path.to_path_buf(),
                    field: "overflow_size",
                    requested: asked,
                    found: found.area_size(),
                });
            }
        }
        if let Some(max) = self.max_value_size
            && max != found.max_value_size
        {
            return Err(Error::GeometryMismatch {
                path: path.to_path_buf(),
                field: "max_value_size",
                requested: u64::from(max),
                found: u64::from(found.max_value_size),
            });
        }
        Ok(())
    }
}

/// Blocks of the overflow area a new native file gets by default: an eighth of its pages'
/// bytes, rounded up to whole blocks, and no more than `MAX_OVERFLOW_BLOCKS`. An eighth keeps
/// the pages (where every small value lives) eight ninths of pages and area together, while a
/// value up to the default `max_value_size` (half the area) and its replacement still fit; see
/// docs/format.md §2.4.
pub(crate) fn default_overflow_blocks(g: &Geometry) -> u32 {
    let bytes = u64::from(g.num_pages) * u64::from(g.page_size) / 8;
    let blocks = bytes.div_ceil(u64::from(OVERFLOW_BLOCK_SIZE));
    u32::try_from(blocks.min(u64::from(header::MAX_OVERFLOW_BLOCKS))).unwrap_or(u32::MAX)
}

/// An open, mapped, validated file.
pub(crate) struct Opened {
    pub file: File,
    pub map: MmapRaw,
    pub geometry: Geometry,
    pub lock_kind: LockKind,
    /// Offset of page 0 (0 in the FastMmap layout).
    pub header_size: usize,
    pub id: (u64, u64),
    /// The file's owner.
    pub owner: u32,
    /// The overflow area (none: all zero).
    pub overflow: OverflowGeometry,
    /// Bytes of the journal region after the overflow area (0: none).
    pub journal_size: u32,
}

#[cfg(test)]
impl OpenRequest {
    /// A native file of `num_pages` pages of `page_size` bytes at `path` with `kind` locks,
    /// created if missing (mode 0600, no link followed, only our own), with the default
    /// overflow area and no journal: for store tests, which set the rest.
    pub(crate) fn native(
        path: &Path,
        kind: LockKind,
        num_pages: u32,
        page_size: u32,
    ) -> OpenRequest {
        OpenRequest {
            path: path.to_path_buf(),
            layout: Layout::Native,
            lock_kind: Some(kind),
            requested: Requested {
                num_pages: Some(num_pages),
                page_size: Some(page_size),
                start_slots: None,
            },
            permissions: 0o600,
            follow_symlinks: false,
            allowed_owners: Vec::new(),
            read_only: false,
            trust_contents: false,
            must_exist: false,
            overflow: OverflowRequest::default(),
            journal: false,
            owner: None,
            lock_timeout: None,
        }
    }
}

impl OpenRequest {
    fn io(&self, op: &'static str, source: io::Error) -> Error {
        match source.kind() {
            ErrorKind::PermissionDenied => Error::PermissionDenied {
                path: self.path.clone(),
                op,
                source,
            },
            _ => Error::Io {
                path: self.path.clone(),
                op,
                source,
            },
        }
    }

    /// The geometry a new file gets.
    fn new_geometry(&self) -> Geometry {
        self.requested.or_defaults()
    }

    /// Fails unless the file is exactly as long as `g`, `o` and a journal of `journal` bytes
    /// need.
    fn check_size(&self, g: &Geometry, o: &OverflowGeometry, journal: u32, len: u64) -> Result<()> {
        let expected = self.file_size(g, o) + u64::from(journal);
        if len != expected {
            return Err(Error::WrongSize {
                path: self.path.clone(),
                expected,
                found: len,
            });
        }
        Ok(())
    }

    fn file_size(&self, g: &Geometry, o: &OverflowGeometry) -> u64 {
        let header = match self.layout {
            Layout::Native => header::header_size(g.num_pages, o.blocks) as u64,
            Layout::FastMmap => 0,
        };
        header + u64::from(g.num_pages) * u64::from(g.page_size) + o.area_size()
    }
}

/// Opens the file named by `req`, creating it if it does not exist (unless read-only).
pub(crate) fn open(req: &OpenRequest) -> Result<Opened> {
    // Each pass either opens an existing file or publishes a new one; losing a creation race
    // sends us round again to open the winner's file.
    for _ in 0..100 {
        let access = Access {
            write: !req.read_only,
            create: None,
            follow_symlinks: req.follow_symlinks,
        };
        let e = match open_checked(&req.path, access, |owner| owner_trusted(req, owner)) {
            Ok((file, md)) => return open_existing(req, file, &md),
            // A FIFO, socket or device planted at the name: refused before any read.
            Err(Refusal::NotRegular(what)) => {
                return Err(Error::NotACache {
                    path: req.path.clone(),
                    page: None,
                    reason: format!("{what}, not a regular file"),
                });
            }
            Err(Refusal::Symlink) => return Err(symlink_error(req)),
            Err(Refusal::Owner(owner)) => return Err(foreign_owner(req, owner)),
            Err(Refusal::Io(e)) => e,
        };
        match e {
            // Links followed, but they lead round in a loop.
            e if e.raw_os_error() == Some(libc::ELOOP) && is_symlink(&req.path) => {
                return Err(symlink_error(req));
            }
            // A dangling link names no file, but creating one would not publish at the path.
            e if e.kind() == ErrorKind::NotFound && is_symlink(&req.path) => {
                return Err(symlink_error(req));
            }
            e if e.kind() == ErrorKind::NotFound && (req.read_only || req.must_exist) => {
                return Err(req.io("open read-only", e));
            }
            // Whether we publish the file or another opener does, the next pass opens it by
            // its name (so the descriptor names the published file, not a removed temporary).
            e if e.kind() == ErrorKind::NotFound => create(req)?,
            e => return Err(req.io("open", e)),
        }
    }
    Err(Error::Io {
        path: req.path.clone(),
        op: "open",
        source: io::Error::other("the file kept appearing and disappearing"),
    })
}

fn is_symlink(path: &Path) -> bool {
    fs::symlink_metadata(path).is_ok_and(|md| md.file_type().is_symlink())
}

fn symlink_error(req: &OpenRequest) -> Error {
    Error::Symlink {
        path: req.path.clone(),
        dangling: req.follow_symlinks || fs::metadata(&req.path).is_err(),
    }
}

fn map(req: &OpenRequest, file: &File, len: u64) -> Result<MmapRaw> {
    let len = usize::try_from(len).map_err(|_| Error::InvalidOptions {
        path: req.path.clone(),
        reason: "the file is larger than this machine can map".into(),
    })?;
    let mut opts = memmap2::MmapOptions::new();
    opts.len(len);
    if req.read_only {
        opts.map_raw_read_only(file)
    } else {
        opts.map_raw(file)
    }
    .map_err(|e| req.io("mmap", e))
}

/// Validates the file `open_checked` opened (a regular file with a trusted owner) and maps it.
fn open_existing(req: &OpenRequest, file: File, md: &Metadata) -> Result<Opened> {
    let len = md.len();
    let (geometry, header_size, lock_kind, overflow, journal_size) = match req.layout {
        Layout::Native => check_native(req, &file, len)?,
        Layout::FastMmap => (
            check_fastmmap(req, &file, len)?,
            0,
            LockKind::Fcntl,
            OverflowGeometry::default(),
            0,
        ),
    };
    if req.read_only && lock_kind == LockKind::Robust {
        return Err(Error::InvalidOptions {
            path: req.path.clone(),
            reason: "a file with robust page locks cannot be opened read-only: its locks live in \
                     the file, and taking one writes to it"
                .into(),
        });
    }
    let map = map(req, &file, len)?;
    Ok(Opened {
        file,
        map,
        geometry,
        lock_kind,
        header_size,
        id: (md.dev(), md.ino()),
        owner: md.uid(),
        overflow,
        journal_size,
    })
}

/// Whether `owner` may own the file: this user, root, or an owner the caller trusts.
fn owner_trusted(req: &OpenRequest, owner: u32) -> bool {
    owner == effective_uid() || owner == 0 || req.allowed_owners.contains(&owner)
}

fn foreign_owner(req: &OpenRequest, owner: u32) -> Error {
    Error::ForeignOwner {
        path: req.path.clone(),
        owner,
        user: effective_uid(),
    }
}

/// Fails unless the file's owner is this user, root, or an owner the caller trusts.
pub(crate) fn check_owner(req: &OpenRequest, owner: u32) -> Result<()> {
    if owner_trusted(req, owner) {
        Ok(())
    } else {
        Err(foreign_owner(req, owner))
    }
}

fn read_prefix(req: &OpenRequest, file: &File, len: u64, want: usize) -> Result<Vec<u8>> {
    let n = want.min(usize::try_from(len).unwrap_or(want));
    let mut buf = vec![0u8; n];
    file.read_exact_at(&mut buf, 0)
        .map_err(|e| req.io("read", e))?;
    Ok(buf)
}

fn check_native(
    req: &OpenRequest,
    file: &File,
    len: u64,
) -> Result<(Geometry, usize, LockKind, OverflowGeometry, u32)> {
    let prefix = read_prefix(req, file, len, header::PAGE_TABLE_OFFSET)?;
    let h = match FileHeader::decode(&prefix) {
        Ok(h) => h,
        Err(HeaderError::LooksLikeFastMmap) => {
            return Err(Error::WrongLayout {
                path: req.path.clone(),
                expected: Layout::Native,
                found: "a Cache::FastMmap file (open it with Layout::FastMmap)",
            });
        }
        Err(HeaderError::NotACacheFile) if len < header::PAGE_TABLE_OFFSET as u64 => {
            return Err(Error::WrongSize {
                path: req.path.clone(),
                expected: header::PAGE_TABLE_OFFSET as u64,
                found: len,
            });
        }
        Err(HeaderError::NotACacheFile) => {
            return Err(Error::WrongLayout {
                path: req.path.clone(),
                expected: Layout::Native,
                found: "a file that is not a cache",
            });
        }
        Err(HeaderError::Bad(reason)) => {
            return Err(Error::BadHeader {
                path: req.path.clone(),
                reason,
            });
        }
    };
    let geometry = Geometry {
        num_pages: h.num_pages,
        page_size: h.page_size,
        start_slots: h.start_slots,
    };
    geometry.validate().map_err(|reason| Error::BadHeader {
        path: req.path.clone(),
        reason,
    })?;
    if h.hash_kind != HASH_XXH3 {
        return Err(Error::BadHeader {
            path: req.path.clone(),
            reason: format!("unknown hash kind {}", h.hash_kind),
        });
    }
    let found_kind = LockKind::from_code(h.lock_kind).ok_or_else(|| Error::BadHeader {
        path: req.path.clone(),
        reason: format!("unknown lock kind {}", h.lock_kind),
    })?;
    if let Some(requested) = req.lock_kind
        && requested != found_kind
    {
        return Err(Error::LockKindMismatch {
            path: req.path.clone(),
            requested,
            found: found_kind,
        });
    }
    // A file that was resized has the geometry (and overflow area) its resizer chose: what an
    // opener asks for applies only to a file it creates (see `store/resize.rs`).
    if header::generation(&prefix) == 0 {
        req.requested.check_against(&geometry, &req.path)?;
        req.overflow.check_against(&h.overflow, &req.path)?;
    }
    req.check_size(&geometry, &h.overflow, h.journal_size, len)?;
    Ok((
        geometry,
        h.header_size as usize,
        found_kind,
        h.overflow,
        h.journal_size,
    ))
}

fn check_fastmmap(req: &OpenRequest, file: &File, len: u64) -> Result<Geometry> {
    let geometry = req.new_geometry();
    let prefix = read_prefix(req, file, len, header::PAGE_TABLE_OFFSET)?;
    if prefix.starts_with(&header::FILE_MAGIC) {
        return Err(Error::WrongLayout {
            path: req.path.clone(),
            expected: Layout::FastMmap,
            found: "a native fastmmap file (open it with Layout::Native)",
        });
    }
    // Page 0's header records its page size (free_data + free_bytes); a different one means
    // the geometry is wrong, and using it would reset every page of someone else's cache.
    let page0 = PageHeader::read(&prefix);
    if page0.magic == PAGE_MAGIC && prefix.len() > NUM_SLOTS_OFFSET {
        let found = u64::from(page0.free_data) + u64::from(page0.free_bytes);
        if found != u64::from(geometry.page_size) && found.is_power_of_two() {
            return Err(Error::GeometryMismatch {
                path: req.path.clone(),
                field: "page_size",
                requested: u64::from(geometry.page_size),
                found,
            });
        }
    }
    req.check_size(&geometry, &OverflowGeometry::default(), 0, len)?;
    if !req.trust_contents {
        check_first_page(req, file, &geometry)?;
    }
    Ok(geometry)
}

/// A Cache::FastMmap file has no header to recognise it by: refuse one whose page 0 is neither
/// a cache page nor all zeros (a fresh page), rather than reset pages of a file that may be
/// anything at all.
fn check_first_page(req: &OpenRequest, file: &File, g: &Geometry) -> Result<()> {
    let mut page = vec![0u8; g.page_size as usize];
    file.read_exact_at(&mut page, 0)
        .map_err(|e| req.io("read", e))?;
    if page.iter().all(|&b| b == 0) {
        return Ok(());
    }
    PageHeader::read(&page)
        .check(page.len(), g.start_slots)
        .map_err(|c| Error::NotACache {
            path: req.path.clone(),
            page: Some(0),
            reason: c.to_string(),
        })
}

/// Builds a complete new file under a temporary name and publishes it, unless another opener
/// publishes first.
fn create(req: &OpenRequest) -> Result<()> {
    let dir = match req.path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        return Err(Error::MissingDirectory {
            path: req.path.clone(),
            dir,
        });
    }
    let geometry = req.new_geometry();
    let overflow = match req.layout {
        Layout::Native => {
            req.overflow
                .geometry(&geometry)
                .map_err(|reason| Error::InvalidOptions {
                    path: req.path.clone(),
                    reason,
                })?
        }
        Layout::FastMmap => OverflowGeometry::default(),
    };
    let journal_size = match (req.layout, req.journal) {
        (Layout::Native, true) => {
            header::journal_size(geometry.page_size).ok_or_else(|| Error::InvalidOptions {
                path: req.path.clone(),
                reason: "no journal fits this page size".into(),
            })?
        }
        _ => 0,
    };
    let size = req.file_size(&geometry, &overflow) + u64::from(journal_size);
    let lock_kind = req.lock_kind.unwrap_or(match req.layout {
        Layout::Native => LockKind::default(),
        Layout::FastMmap => LockKind::Fcntl,
    });
    let (tmp, file) = create_temp(req, &dir)?;
    let _remove_tmp = RemoveOnDrop(&tmp);
    if let Some((uid, gid)) = req.owner {
        // Before the mode: a change of owner may clear its set-id bits. Only root may give a
        // file away; -1 leaves the owner as it is.
        let uid = if effective_uid() == 0 { uid } else { u32::MAX };
        // SAFETY: the descriptor is open and owned by `file` for the whole call.
        if unsafe { libc::fchown(file.as_raw_fd(), uid, gid) } != 0 {
            return Err(req.io("chown", io::Error::last_os_error()));
        }
    }
    file.set_permissions(fs::Permissions::from_mode(req.permissions))
        .map_err(|e| req.io("chmod", e))?;
    reserve(req, &file, size)?;
    let map = map(req, &file, size)?;
    let header_size = match req.layout {
        Layout::Native => header::header_size(geometry.num_pages, overflow.blocks),
        Layout::FastMmap => 0,
    };
    // SAFETY: the mapping is `size` bytes long and the file is not published yet, so no other
    // thread or process can reach it; this is the only reference into it.
    let bytes = unsafe { std::slice::from_raw_parts_mut(map.as_mut_ptr(), map.len()) };
    if req.layout == Layout::Native {
        FileHeader {
            header_size: header_size as u32,
            page_size: geometry.page_size,
            num_pages: geometry.num_pages,
            start_slots: geometry.start_slots,
            hash_kind: HASH_XXH3,
            lock_kind: lock_kind.code(),
            overflow,
            journal_size,
        }
        .encode(&mut bytes[..header::PAGE_TABLE_OFFSET]);
    }
    if req.layout == Layout::Native && lock_kind == LockKind::Robust {
        // SAFETY: `bytes` holds the whole header (header_size(num_pages) bytes and the pages),
        // and the unpublished file's lock words are reachable by no one else.
        unsafe { super::robust::init_lock_words(bytes.as_mut_ptr(), geometry.num_pages) }
            .map_err(|e| req.io("initialise the page locks", e))?;
    }
    let pages_end = header_size + geometry.num_pages as usize * geometry.page_size as usize;
    for page in bytes[header_size..pages_end].chunks_exact_mut(geometry.page_size as usize) {
        PageMut::init_as(page, geometry.start_slots, req.layout == Layout::Native);
    }
    drop(map);
    match fs::hard_link(&tmp, &req.path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(req.io("publish (link)", e)),
    }
}

/// Creates a new temporary file in `dir` for `req`. A name that exists already (planted by
/// someone who guessed it, even as a link: `O_EXCL` never follows one) is not ours: another
/// name is tried.
fn create_temp(req: &OpenRequest, dir: &Path) -> Result<(PathBuf, File)> {
    let mut taken = io::Error::from(ErrorKind::AlreadyExists);
    for _ in 0..16 {
        let tmp = temp_name(&req.path, dir);
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(req.permissions)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => taken = e,
            Err(e) => return Err(req.io("create", e)),
        }
    }
    Err(req.io("create a temporary file", taken))
}

/// Gives the new file its size with every block allocated, so that a full filesystem is an
/// error now rather than a SIGBUS at the first write to a page.
fn reserve(req: &OpenRequest, file: &File, size: u64) -> Result<()> {
    let len = libc::off_t::try_from(size).map_err(|_| Error::InvalidOptions {
        path: req.path.clone(),
        reason: format!("{size} bytes is too large a file"),
    })?;
    loop {
        // SAFETY: the descriptor is open for writing and owned by `file` for the whole call.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
        match rc {
            0 => return Ok(()),
            libc::EINTR => continue,
            libc::ENOSPC | libc::EDQUOT | libc::EFBIG => {
                return Err(Error::NoSpace {
                    path: req.path.clone(),
                    needed: size,
                    source: io::Error::from_raw_os_error(rc),
                });
            }
            _ => return Err(req.io("allocate", io::Error::from_raw_os_error(rc))),
        }
    }
}

/// Removes a temporary file when dropped (publishing links it first, so this never removes
/// the published name).
struct RemoveOnDrop<'a>(&'a Path);

impl Drop for RemoveOnDrop<'_> {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.0);
    }
}

fn temp_name(path: &Path, dir: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    dir.join(format!(
        ".{name}.{}.{}.{nanos}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The effective user id of this process: the owner of the files it creates.
pub(crate) fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}
