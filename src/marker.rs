//! What a marker is on disk: a regular file (never a symlink or a FIFO) whose bytes are hashed
//! in one streaming read (MD5, CRC32, CRC64NVME: what S3 reports for most uploads; CRC32C, SHA-1
//! and SHA-256 on demand), and whose contents may list the paths to invalidate.
//!
//! A marker is read once, at intake: the bytes hashed there are the bytes S3 is checked against
//! and the path list the pipeline uses ([`MarkerSeen::body`]); it is never opened again. A
//! marker over [`MAX_SIZE`] is refused from its size alone, unread.
//!
//! ## Performance
//! Files are read in 64 KiB blocks, so memory stays flat for any size; the CRCs run at memory
//! speed (`crc-fast`, SIMD) and the MD5 is built with full optimisation even in small builds
//! (Cargo.toml). Every read here runs on the blocking pool, never on the runtime's thread, and
//! a long one (a changed file of gigabytes) stops between blocks when asked to.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use md5::{Digest, Md5};

use crate::paths;

/// Files are read in blocks of this size. A marker that fits one block is the only kind that
/// can be a path list (3,000 paths of a line each are less): its bytes are kept.
pub const BLOCK: usize = 64 * 1024;

/// The largest marker purgewatch reads. A marker is a flag or a path list of at most 64 KiB;
/// anything bigger is a mistake or an attack (a sparse 40 GiB `.purge` once held a site for
/// minutes), refused from its size.
pub const MAX_SIZE: u64 = 1024 * 1024;

/// A marker as the local disk holds it: what S3 must hold before the request may proceed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerSeen {
    /// Path relative to the watch root, '/'-separated.
    pub rel: String,
    pub sums: Sums,
    pub size: u64,
    pub mtime_ns: i64,
    /// The S3 object an earlier write of this marker was verified against: the same bytes
    /// uploaded again are only a new upload if the object is another one.
    pub prior: Option<ObjectId>,
    /// The bytes as read at intake when they fit one block (a path list can only be that
    /// small): the list is taken from them, never from the file again, which may be anything by
    /// then. `None`: too big to be a list, or stored before they were kept.
    pub body: Option<Vec<u8>>,
}

/// One upload of an S3 object, as far as HeadObject can tell uploads apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectId {
    pub etag: String,
    /// Whole seconds since the epoch.
    pub last_modified: i64,
    /// Set on versioned buckets only.
    pub version: Option<String>,
}

/// A full-object checksum algorithm S3 may report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algo {
    Crc64Nvme,
    Crc32,
    Crc32c,
    Sha1,
    Sha256,
}

impl Algo {
    pub fn name(self) -> &'static str {
        match self {
            Algo::Crc64Nvme => "crc64nvme",
            Algo::Crc32 => "crc32",
            Algo::Crc32c => "crc32c",
            Algo::Sha1 => "sha1",
            Algo::Sha256 => "sha256",
        }
    }
}

/// The checksums of a local file that S3 most often reports, computed in the one read that
/// also takes the MD5 (the others are computed on demand, see [`local_checksum`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sums {
    pub md5: String,
    /// base64 of the big-endian CRC, as S3 sends it.
    pub crc32: String,
    pub crc64nvme: String,
}

pub fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Opens a file named like a marker, refusing what is not one. A symlink: following it could
/// read outside the root, so O_NOFOLLOW refuses it in the open itself (ELOOP). O_NONBLOCK: a
/// FIFO must not hang the open (regular files ignore the flag).
fn open_regular(path: &Path) -> std::io::Result<(std::fs::File, std::fs::Metadata)> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a symlink, not a marker file",
            ),
            _ => e,
        })?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok((f, meta))
}

/// Reads `f` in 64 KiB blocks (memory stays flat for any size), handing each to `eat`; asks
/// `stop` between blocks, so a shutdown never waits for the rest of a huge file.
fn stream(
    mut f: impl Read,
    stop: &dyn Fn() -> bool,
    mut eat: impl FnMut(&[u8]),
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; BLOCK];
    let mut size = 0u64;
    loop {
        if stop() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Interrupted,
                "stopped while reading",
            ));
        }
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(size);
        }
        size += n as u64;
        eat(&buf[..n]);
    }
}

/// Never asked to stop.
fn go_on() -> bool {
    false
}

/// This process's own reads of markers, each for [`OWN_READ_TTL`]: the watcher takes a
/// read-and-close of a waiting marker by anyone else for an uploader's (issue 25), and ours must
/// not count. Kept small: a read whose close is never reported (its folder not listened to)
/// expires.
static OWN_READS: std::sync::Mutex<Vec<(PathBuf, Instant)>> = std::sync::Mutex::new(Vec::new());

/// How long an own read waits for its close to be reported (microseconds, in practice).
const OWN_READ_TTL: Duration = Duration::from_secs(2);

/// Notes that this process is about to open the marker at `path` for reading.
pub fn own_read(path: &Path) {
    let mut reads = OWN_READS.lock().unwrap_or_else(|e| e.into_inner());
    reads.retain(|(_, at)| at.elapsed() < OWN_READ_TTL);
    if reads.len() < 1024 {
        reads.push((path.to_owned(), Instant::now()));
    }
}

/// Whether a read-and-close of `path` was this process's own (then it is forgotten).
pub fn take_own_read(path: &Path) -> bool {
    let mut reads = OWN_READS.lock().unwrap_or_else(|e| e.into_inner());
    reads.retain(|(_, at)| at.elapsed() < OWN_READ_TTL);
    match reads.iter().position(|(p, _)| p == path) {
        Some(i) => {
            reads.swap_remove(i);
            true
        }
        None => false,
    }
}

/// Reads a marker once: refused unread when it is not a regular file or is over [`MAX_SIZE`];
/// else its size, mtime, sums and, when it fits one block, its bytes (the path list, if it is
/// one). Runs on the blocking pool.
pub fn read_marker(path: &Path, rel: String) -> std::io::Result<MarkerSeen> {
    own_read(path);
    let (f, meta) = open_regular(path)?;
    if meta.len() > MAX_SIZE {
        return Err(too_big(meta.len()));
    }
    let mut body = Vec::new();
    // Bounded even if the file grows while it is read: one byte past the limit is enough.
    let (size, raw) = hash_stream(f.take(MAX_SIZE + 1), &go_on, |b| {
        if body.len() + b.len() <= BLOCK {
            body.extend_from_slice(b);
        }
    })?;
    if size > MAX_SIZE {
        return Err(too_big(size));
    }
    Ok(MarkerSeen {
        rel,
        sums: raw.sums(),
        size,
        mtime_ns: mtime_ns(&meta),
        prior: None,
        body: (size <= BLOCK as u64).then_some(body),
    })
}

fn too_big(size: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        format!(
            "{size} bytes, over the {MAX_SIZE} a marker may have (a flag, or a path list of at \
             most {BLOCK} bytes): not read"
        ),
    )
}

/// The same sums as bytes, 28 of them: what a change set keeps per file (strings would
/// take ~100 bytes of heap per file at deploy scale).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RawSums {
    pub md5: [u8; 16],
    pub crc32: u32,
    pub crc64nvme: u64,
}

impl RawSums {
    /// As S3 reports them: MD5 in hex, the CRCs base64 of their big-endian bytes.
    pub fn sums(&self) -> Sums {
        Sums {
            md5: self.md5.iter().map(|b| format!("{b:02x}")).collect(),
            crc32: b64(&self.crc32.to_be_bytes()),
            crc64nvme: b64(&self.crc64nvme.to_be_bytes()),
        }
    }

    /// Whether `etag` (lower-case hex, unquoted) is this MD5, without formatting it.
    pub fn md5_is(&self, etag: &str) -> bool {
        let e = etag.as_bytes();
        e.len() == 32
            && self.md5.iter().enumerate().all(|(i, b)| {
                let hex = |n: u8| b"0123456789abcdef"[n as usize];
                e[2 * i] == hex(b >> 4) && e[2 * i + 1] == hex(b & 15)
            })
    }
}

/// Hashes a file streaming: (size, mtime in ns, sums), as [`read_marker`]; gives up between
/// blocks once `stop` says so (ErrorKind::Interrupted).
pub fn hash_raw(path: &Path, stop: &dyn Fn() -> bool) -> std::io::Result<(u64, i64, RawSums)> {
    let (f, meta) = open_regular(path)?;
    let (size, raw) = hash_stream(f, stop, |_| {})?;
    Ok((size, mtime_ns(&meta), raw))
}

/// MD5, CRC32 and CRC64NVME of everything `f` yields, in one read; `also` sees each block.
fn hash_stream(
    f: impl Read,
    stop: &dyn Fn() -> bool,
    mut also: impl FnMut(&[u8]),
) -> std::io::Result<(u64, RawSums)> {
    let mut md5 = Md5::new();
    let mut crc32 = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32IsoHdlc);
    let mut crc64 = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
    let size = stream(f, stop, |b| {
        md5.update(b);
        crc32.update(b);
        crc64.update(b);
        also(b);
    })?;
    let raw = RawSums {
        md5: md5.finalize().into(),
        crc32: crc32.finalize() as u32,
        crc64nvme: crc64.finalize(),
    };
    Ok((size, raw))
}

/// One checksum of a local file, as S3 would report it; `None` when the file cannot be read or
/// no longer has the `expect`ed (size, mtime): a newer write, checked in its turn.
pub fn local_checksum(path: &Path, algo: Algo, expect: Option<(u64, i64)>) -> Option<String> {
    let (f, meta) = open_regular(path).ok()?;
    if expect.is_some_and(|e| e != (meta.len(), mtime_ns(&meta))) {
        return None;
    }
    let crc = |a| -> Option<Vec<u8>> {
        let mut d = crc_fast::Digest::new(a);
        stream(&f, &go_on, |b| d.update(b)).ok()?;
        Some(d.finalize().to_be_bytes().to_vec())
    };
    let bytes = match algo {
        Algo::Crc64Nvme => crc(crc_fast::CrcAlgorithm::Crc64Nvme)?,
        Algo::Crc32 => crc(crc_fast::CrcAlgorithm::Crc32IsoHdlc)?[4..].to_vec(),
        Algo::Crc32c => crc(crc_fast::CrcAlgorithm::Crc32Iscsi)?[4..].to_vec(),
        Algo::Sha1 => {
            let mut d = sha1::Sha1::new();
            stream(&f, &go_on, |b| d.update(b)).ok()?;
            d.finalize().to_vec()
        }
        Algo::Sha256 => {
            let mut d = sha2::Sha256::new();
            stream(&f, &go_on, |b| d.update(b)).ok()?;
            d.finalize().to_vec()
        }
    };
    Some(b64(&bytes))
}

pub fn b64(bytes: &[u8]) -> String {
    aws_smithy_types::base64::encode(bytes)
}

/// The paths a marker lists, if it is a list ([`paths::parse_marker`]), from the bytes read
/// at intake. `None` (not kept: over one block, or stored before they were kept) is no list.
pub fn path_list(body: Option<&[u8]>) -> Result<Option<Vec<String>>, String> {
    match body {
        Some(b) => paths::parse_marker(b).map_err(|e| e.to_string()),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Values from `md5sum`, and the CRCs' check values over "123456789" (CRC catalogue),
    // base64 of the big-endian bytes as S3 sends them.
    #[test]
    fn sums_match_md5sum_and_the_crc_catalogue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(".purge");
        std::fs::write(&p, b"hello\n").expect("write");
        let m = read_marker(&p, ".purge".into()).expect("hash");
        assert_eq!(m.sums.md5, "b1946ac92492d2347c6235b4d2611184");
        assert_eq!(m.size, 6);
        std::fs::write(&p, b"123456789").expect("write");
        let m = read_marker(&p, ".purge".into()).expect("hash");
        assert_eq!(m.sums.crc32, b64(&0xcbf43926u32.to_be_bytes()));
        assert_eq!(m.sums.crc64nvme, b64(&0xae8b14860a799888u64.to_be_bytes()));
        let c = |a| local_checksum(&p, a, None).expect("readable");
        assert_eq!(c(Algo::Crc32), m.sums.crc32);
        assert_eq!(c(Algo::Crc64Nvme), m.sums.crc64nvme);
        assert_eq!(c(Algo::Crc32c), b64(&0xe3069283u32.to_be_bytes()));
        assert_eq!(c(Algo::Sha1), "98O8HYCOBHMq32eZZczDTKeuNEE=");
        assert_eq!(
            c(Algo::Sha256),
            "FeKw08M4keuw8e9gnsQZQgwg4yDOlMZfvIwzEkSOsiU="
        );
    }

    #[test]
    fn a_marker_is_read_once_within_its_limits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(".purge");
        let sized = |n: u64| {
            let f = std::fs::File::create(&p).expect("create");
            f.set_len(n).expect("size");
            read_marker(&p, ".purge".into())
        };
        let list = sized(BLOCK as u64).expect("a block");
        assert_eq!(
            list.body.map(|b| b.len()),
            Some(BLOCK),
            "kept: it may be a list"
        );
        let flag = sized(MAX_SIZE).expect("at the limit");
        assert_eq!(flag.body, None, "over a block: no list, not kept");
        let e = sized(MAX_SIZE + 1).expect_err("over the limit");
        assert!(e.to_string().contains("1048577 bytes"), "{e}");
        std::fs::remove_file(&p).expect("rm");
        std::os::unix::fs::symlink("/etc/hostname", &p).expect("symlink");
        let e = read_marker(&p, ".purge".into()).expect_err("a symlink");
        assert!(e.to_string().contains("symlink"), "{e}");
    }

    #[test]
    fn raw_sums_match_their_hex_md5_and_nothing_else() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a");
        std::fs::write(&p, b"hello\n").expect("write");
        let (size, _, raw) = hash_raw(&p, &go_on).expect("hash");
        assert_eq!(size, 6);
        assert!(raw.md5_is("b1946ac92492d2347c6235b4d2611184"));
        assert!(!raw.md5_is("b1946ac92492d2347c6235b4d2611185"));
        assert!(
            !raw.md5_is("B1946AC92492D2347C6235B4D2611184"),
            "S3 sends lower case"
        );
        assert!(
            !raw.md5_is("b1946ac92492d2347c6235b4d2611184-2"),
            "multipart"
        );
        assert_eq!(raw.sums(), read_marker(&p, "a".into()).expect("hash").sums);
    }
}
