//! "Does S3 hold these bytes yet?" — the replacement for the seed's ObjectCreated trigger.
//!
//! Not-found and different-bytes are outcomes, not errors: lsyncd uploads a second or more after the
//! local write, so the pipeline polls with backoff until [`Check::Holds`] or `wait_timeout`.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use aws_sdk_s3::primitives::DateTime as SmithyTime;
use md5::{Digest, Md5};

use crate::aws::{self, AwsError};
use crate::store::MarkerSeen;

/// What S3 said about one marker's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Holds,
    Missing,
    /// An object is there but not the local bytes (an older marker, or still uploading).
    Differs(String),
}

#[derive(Clone)]
pub struct Origin {
    s3: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl Origin {
    pub fn new(s3: aws_sdk_s3::Client, bucket: String, prefix: String) -> Origin {
        Origin { s3, bucket, prefix }
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The S3 key `root/rel` maps to.
    pub fn key(&self, rel: &str) -> String {
        format!("{}{}", self.prefix, rel)
    }

    pub async fn check(&self, m: &MarkerSeen) -> Result<Check, AwsError> {
        Ok(judge(m, self.head(&m.rel).await?))
    }

    /// HeadBucket: asked once at start, so a wrong bucket, region, endpoint or permission shows
    /// in the log before the first marker, and the first marker does not wait for what the
    /// first call loads (the TLS roots, the credentials).
    pub async fn reachable(&self) -> Result<(), AwsError> {
        self.s3
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| aws::classify(&format!("HeadBucket s3://{}", self.bucket), &e))
    }

    /// HeadObject on the key of `rel`; `None` when there is no such object.
    pub async fn head(&self, rel: &str) -> Result<Option<Head>, AwsError> {
        let key = self.key(rel);
        let out = self
            .s3
            .head_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await;
        let head = match out {
            Ok(h) => h,
            Err(e) => {
                if e.as_service_error()
                    .map(|s| s.is_not_found())
                    .unwrap_or(false)
                {
                    return Ok(None);
                }
                return Err(aws::classify(
                    &format!("HeadObject s3://{}/{key}", self.bucket),
                    &e,
                ));
            }
        };
        Ok(Some(Head {
            etag: head
                .e_tag()
                .unwrap_or("")
                .trim_matches('"')
                .to_ascii_lowercase(),
            size: head.content_length().unwrap_or(-1),
            last_modified: head.last_modified,
        }))
    }
}

/// What HeadObject said of an object.
#[derive(Debug)]
pub struct Head {
    etag: String,
    size: i64,
    last_modified: Option<SmithyTime>,
}

/// Does S3 hold the marker's bytes, by what HeadObject said (`None`: no object)?
pub fn judge(m: &MarkerSeen, head: Option<Head>) -> Check {
    match head {
        None => Check::Missing,
        Some(h) => compare(m, &h.etag, h.size, h.last_modified.as_ref()),
    }
}

/// A HeadObject sent as soon as a marker write is seen, while the marker is hashed and stored
/// on another thread (settle 0 only): its answer is judged once the stored marker is known.
/// That takes the hash and the SQLite write off the way to S3 (BENCHMARKS.md, close →
/// HeadObject). It only reads, so sending it before the request is recorded changes nothing;
/// dropped unused (the write merged into an open request), it is aborted.
pub struct EarlyHead {
    rel: String,
    task: tokio::task::JoinHandle<Result<Option<Head>, AwsError>>,
}

impl EarlyHead {
    pub fn start(origin: &Origin, rel: String) -> EarlyHead {
        let (o, r) = (origin.clone(), rel.clone());
        let task = tokio::spawn(async move { o.head(&r).await });
        EarlyHead { rel, task }
    }

    /// The check of `m`, when this HeadObject was for its key.
    pub async fn check(mut self, m: &MarkerSeen) -> Option<Result<Check, AwsError>> {
        if m.rel != self.rel {
            return None;
        }
        Some(match (&mut self.task).await {
            Ok(head) => head.map(|h| judge(m, h)),
            Err(e) => Err(AwsError::transient(format!("HeadObject: {e}"))),
        })
    }
}

impl Drop for EarlyHead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Local state of a changed file, hashed once per (size, mtime): polls do not re-read it.
type HashCache = std::collections::HashMap<String, (u64, i64, String)>;

impl Origin {
    /// Compares the changed paths with S3 in bulk: one ListObjectsV2 per folder (the smallest
    /// common prefix of its keys), not one HeadObject per file. A path that exists locally must
    /// be in S3 with the local size (and MD5 where the ETag is one); a path gone locally must be
    /// gone from S3. Returns what still differs, in key order.
    pub async fn check_changes(
        &self,
        root: &Path,
        changes: &[(String, bool)],
        cache: &mut HashCache,
    ) -> Result<Vec<String>, AwsError> {
        let mut by_dir: std::collections::BTreeMap<String, Vec<&str>> = Default::default();
        for (rel, _) in changes {
            let dir = rel.rfind('/').map_or("", |i| &rel[..=i]);
            by_dir.entry(dir.to_owned()).or_default().push(rel);
        }
        let mut differs = Vec::new();
        for (dir, rels) in by_dir {
            let listed = self.list(&self.key(&dir)).await?;
            for rel in rels {
                let key = self.key(rel);
                let local = local_state(root, rel, cache);
                let remote = listed.get(&key);
                let why = match (local, remote) {
                    (None, None) => continue,
                    (None, Some(_)) => "still in S3 (deleted locally)",
                    (Some(_), None) => "not in S3 yet",
                    (Some((size, _)), Some((rsize, _))) if size as i64 != *rsize => "size differs",
                    (Some((_, md5)), Some((_, etag))) => {
                        let plain = etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit());
                        if plain && *etag != md5 {
                            "bytes differ"
                        } else {
                            continue;
                        }
                    }
                };
                differs.push(format!("{key} {why}"));
            }
        }
        Ok(differs)
    }

    /// Every object directly under `prefix` (delimiter '/'): key → (size, lower-case ETag).
    async fn list(
        &self,
        prefix: &str,
    ) -> Result<std::collections::HashMap<String, (i64, String)>, AwsError> {
        let mut out = std::collections::HashMap::new();
        let mut token = None;
        // Bounded: 1,000 pages of 1,000 keys is more than one folder of a web root holds.
        for _ in 0..1000 {
            let page = self
                .s3
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .delimiter("/")
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| {
                    aws::classify(&format!("ListObjectsV2 s3://{}/{prefix}", self.bucket), &e)
                })?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    let etag = o
                        .e_tag()
                        .unwrap_or("")
                        .trim_matches('"')
                        .to_ascii_lowercase();
                    out.insert(k.to_owned(), (o.size().unwrap_or(-1), etag));
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    }
}

/// (size, md5) of `root/rel` if it is a regular file now (symlinks are not followed).
fn local_state(root: &Path, rel: &str, cache: &mut HashCache) -> Option<(u64, String)> {
    let path = root.join(rel);
    let meta = std::fs::symlink_metadata(&path)
        .ok()
        .filter(|m| m.is_file())?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64);
    if let Some((size, m, md5)) = cache.get(rel) {
        if *size == meta.len() && *m == mtime {
            return Some((*size, md5.clone()));
        }
    }
    let seen = hash_file(&path, rel.to_owned()).ok()?;
    cache.insert(rel.to_owned(), (seen.size, mtime, seen.md5.clone()));
    Some((seen.size, seen.md5))
}

/// Plain ETags are the MD5 of the body; multipart ("…-N") and KMS ETags are not, so those fall
/// back to size plus "uploaded no earlier than the local write".
pub fn compare(m: &MarkerSeen, etag: &str, size: i64, last_modified: Option<&SmithyTime>) -> Check {
    if size != m.size as i64 {
        return Check::Differs(format!("size {size} in S3, {} locally", m.size));
    }
    let plain_md5 = etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit());
    if plain_md5 {
        return if etag == m.md5 {
            Check::Holds
        } else {
            Check::Differs(format!("ETag {etag} in S3, MD5 {} locally", m.md5))
        };
    }
    // S3 keeps whole seconds; the local mtime may carry a fraction.
    let local_secs = m.mtime_ns.div_euclid(1_000_000_000);
    match last_modified {
        Some(t) if t.secs() >= local_secs => Check::Holds,
        Some(t) => Check::Differs(format!(
            "LastModified {} in S3 is older than the local write",
            t.secs()
        )),
        None => Check::Differs("no LastModified in S3".into()),
    }
}

/// Hashes a marker file streaming (memory stays flat for any size) and reads its size and mtime.
pub fn hash_file(path: &Path, rel: String) -> std::io::Result<MarkerSeen> {
    // A symlink named like the marker is not one: following it could read outside the root, so
    // O_NOFOLLOW refuses it in the open itself (ELOOP). O_NONBLOCK: a FIFO named like the
    // marker must not hang the open (regular files ignore the flag).
    let mut f = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "a symlink, not a marker file",
                ),
                _ => e,
            })?
    };
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut h = Md5::new();
    let mut buf = [0u8; 64 * 1024];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        h.update(&buf[..n]);
    }
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0);
    let digest = h.finalize();
    let md5 = digest.iter().map(|b| format!("{b:02x}")).collect();
    Ok(MarkerSeen {
        rel,
        md5,
        size,
        mtime_ns,
    })
}

/// Origin polls: first at once, then doubling from 250 ms up to 30 s.
pub fn backoff(attempt: u32) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    let ms = 250u64.saturating_mul(1 << attempt.min(8).saturating_sub(1));
    Duration::from_millis(ms.min(30_000))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(md5: &str, size: u64, mtime_s: i64) -> MarkerSeen {
        MarkerSeen {
            rel: ".purge".into(),
            md5: md5.into(),
            size,
            mtime_ns: mtime_s * 1_000_000_000 + 5,
        }
    }

    #[test]
    fn a_plain_etag_must_equal_the_md5() {
        let m = marker("d41d8cd98f00b204e9800998ecf8427e", 0, 100);
        assert_eq!(
            compare(&m, "d41d8cd98f00b204e9800998ecf8427e", 0, None),
            Check::Holds
        );
        assert!(matches!(
            compare(&m, "00000000000000000000000000000000", 0, None),
            Check::Differs(_)
        ));
    }

    #[test]
    fn multipart_etag_falls_back_to_size_and_time() {
        let m = marker("whatever", 10, 100);
        let etag = "0123456789abcdef0123456789abcdef-2";
        assert_eq!(
            compare(&m, etag, 10, Some(&SmithyTime::from_secs(100))),
            Check::Holds
        );
        assert!(matches!(
            compare(&m, etag, 10, Some(&SmithyTime::from_secs(99))),
            Check::Differs(_)
        ));
        assert!(matches!(
            compare(&m, etag, 11, Some(&SmithyTime::from_secs(200))),
            Check::Differs(_)
        ));
    }

    #[test]
    fn backoff_starts_at_once_and_caps_at_30s() {
        assert_eq!(backoff(0), Duration::ZERO);
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(30), Duration::from_secs(30));
    }

    #[test]
    fn hashes_match_md5sum() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(".purge");
        std::fs::write(&p, b"hello\n").expect("write");
        let m = hash_file(&p, ".purge".into()).expect("hash");
        assert_eq!(m.md5, "b1946ac92492d2347c6235b4d2611184");
        assert_eq!(m.size, 6);
    }
}
