//! "Does S3 hold this write yet?" — the replacement for the seed's ObjectCreated trigger.
//!
//! Not-found and different-bytes are outcomes, not errors: lsyncd uploads a second or more after the
//! local write, so the pipeline polls with backoff until [`Check::Holds`] or `wait_timeout`.
//!
//! # What proves that S3 holds this write
//! - **The content.** The full-object checksum S3 reports (HeadObject with checksum mode on):
//!   CRC64NVME, which S3 stores for every new upload that sends none, or the CRC32 / CRC32C /
//!   SHA-1 / SHA-256 the uploader sent (the aws CLI sends CRC32), equal to the same checksum of
//!   the local bytes. Without one, the ETag where it is the MD5 of the body (not SSE-KMS or
//!   SSE-C, not multipart). Without either, the size alone, and the history says
//!   "verified by size+time". Same-size different bytes never pass while a checksum is there.
//! - **A new upload.** The same bytes uploaded again have the same ETag and checksum (an empty
//!   `.purge`, `touch .purge`), so the object must also not be the one this marker was verified
//!   against last time (ETag, LastModified, VersionId), and its LastModified must not be older
//!   than the local write: `LastModified ≥ mtime − CLOCK_TOLERANCE` in whole seconds. S3 keeps
//!   whole seconds; EC2 clocks are synced to well under a second. A marker written again within
//!   the same second as its last verified upload cannot be told apart from it on an
//!   unversioned bucket, and waits for its own upload until `wait_timeout`.

use std::path::Path;

use aws_sdk_s3::operation::head_object::HeadObjectOutput;
use aws_sdk_s3::types::{ChecksumMode, ChecksumType};

pub mod changes;
mod list;

use crate::aws::{self, AwsError, Bucket};
use crate::marker::{local_checksum, Algo, MarkerSeen, ObjectId, Sums};

/// How much older than the local write (in whole seconds) an upload may look and still count
/// as this write's: S3's clock and the server's differ by well under this on EC2.
pub const CLOCK_TOLERANCE_SECS: i64 = 1;

/// What proved the content, as the history names it ("verified by crc64nvme").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Checksum(Algo),
    Md5,
    SizeTime,
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Method::Checksum(a) => a.name(),
            Method::Md5 => "md5",
            Method::SizeTime => "size+time",
        })
    }
}

/// What S3 said about one marker's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// S3 holds this write: proven by `by`, in the object `object`.
    Holds {
        by: Method,
        object: ObjectId,
    },
    Missing,
    /// An object is there but not this write (older bytes, or the last write's upload).
    Differs(String),
}

#[derive(Clone)]
pub struct Origin {
    bucket: Bucket,
    prefix: String,
}

impl Origin {
    pub fn new(bucket: Bucket, prefix: String) -> Origin {
        Origin { bucket, prefix }
    }

    pub fn bucket(&self) -> &str {
        self.bucket.name()
    }

    /// The bucket's handle (its region).
    pub fn handle(&self) -> &Bucket {
        &self.bucket
    }

    /// The S3 key `root/rel` maps to.
    pub fn key(&self, rel: &str) -> String {
        format!("{}{}", self.prefix, rel)
    }

    pub async fn check(&self, root: &Path, m: &MarkerSeen) -> Result<Check, AwsError> {
        let head = self.head(&m.rel).await?;
        Ok(judge_off_thread(root, m, head).await)
    }

    /// HeadBucket: asked once at start, so a wrong bucket, endpoint or permission shows in the
    /// log before the first marker, the bucket's region is known (see [`Bucket::locate`]), and
    /// the first marker does not wait for what the first call loads (TLS roots, credentials).
    pub async fn reachable(&self) -> Result<String, AwsError> {
        self.bucket.locate().await
    }

    /// HeadObject on the key of `rel`, with checksum mode; `None` when there is no such object.
    pub async fn head(&self, rel: &str) -> Result<Option<Head>, AwsError> {
        self.head_key(&self.key(rel)).await
    }

    pub(crate) async fn head_key(&self, key: &str) -> Result<Option<Head>, AwsError> {
        let name = self.bucket.name();
        let out = self
            .bucket
            .send(|c| {
                c.head_object()
                    .bucket(name)
                    .key(key)
                    .checksum_mode(ChecksumMode::Enabled)
                    .send()
            })
            .await;
        match out {
            Ok(h) => Ok(Some(Head::from(h))),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(None),
            Err(e) => Err(aws::classify(&format!("HeadObject s3://{name}/{key}"), &e)),
        }
    }
}

/// What HeadObject said of an object.
#[derive(Debug, Clone, Default)]
pub struct Head {
    pub etag: String,
    pub size: i64,
    /// Whole seconds since the epoch.
    pub last_modified: Option<i64>,
    pub version: Option<String>,
    /// The full-object checksum S3 reported (none for composite multipart checksums).
    pub checksum: Option<(Algo, String)>,
    /// The ETag is the MD5 of the body: not SSE-KMS, DSSE-KMS or SSE-C, not multipart.
    pub etag_is_md5: bool,
}

impl From<HeadObjectOutput> for Head {
    fn from(h: HeadObjectOutput) -> Head {
        let composite = h.checksum_type() == Some(&ChecksumType::Composite);
        let checksum = [
            (Algo::Crc64Nvme, h.checksum_crc64_nvme()),
            (Algo::Crc32, h.checksum_crc32()),
            (Algo::Crc32c, h.checksum_crc32_c()),
            (Algo::Sha256, h.checksum_sha256()),
            (Algo::Sha1, h.checksum_sha1()),
        ]
        .into_iter()
        .filter(|_| !composite)
        // A part checksum ("…-3") is not the whole object's.
        .find_map(|(a, v)| v.filter(|v| !v.contains('-')).map(|v| (a, v.to_owned())));
        let etag = clean_etag(h.e_tag());
        let kms = h
            .server_side_encryption()
            .is_some_and(|s| s.as_str().starts_with("aws:kms"));
        let etag_is_md5 = !kms && h.sse_customer_algorithm().is_none() && is_hex32(&etag);
        Head {
            size: h.content_length().unwrap_or(-1),
            last_modified: h.last_modified().map(|t| t.secs()),
            version: h
                .version_id()
                .filter(|v| !v.is_empty() && *v != "null")
                .map(str::to_owned),
            checksum,
            etag_is_md5,
            etag,
        }
    }
}

pub(crate) fn clean_etag(etag: Option<&str>) -> String {
    etag.unwrap_or("").trim_matches('"').to_ascii_lowercase()
}

fn is_hex32(etag: &str) -> bool {
    etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Does S3 hold the marker's bytes, and as a new upload? (`None`: no object.) `local` computes
/// a checksum of the local file that [`Sums`] does not carry.
pub fn judge(
    m: &MarkerSeen,
    head: Option<Head>,
    local: impl FnOnce(Algo) -> Option<String>,
) -> Check {
    let Some(h) = head else {
        return Check::Missing;
    };
    if h.size != m.size as i64 {
        return Check::Differs(format!("size {} in S3, {} locally", h.size, m.size));
    }
    let by = match content(&m.sums, &h, local) {
        Ok(by) => by,
        Err(why) => return Check::Differs(why),
    };
    let object = ObjectId {
        etag: h.etag,
        last_modified: h.last_modified.unwrap_or(0),
        version: h.version,
    };
    if m.prior.as_ref() == Some(&object) {
        return Check::Differs(format!(
            "the same bytes as the upload an earlier write was verified against ({}), not a new upload yet",
            at(object.last_modified)
        ));
    }
    let local_secs = m.mtime_ns.div_euclid(1_000_000_000);
    match h.last_modified {
        Some(t) if t + CLOCK_TOLERANCE_SECS >= local_secs => Check::Holds { by, object },
        Some(t) => Check::Differs(format!(
            "uploaded {}, before the local write at {}: not this write's upload yet",
            at(t),
            at(local_secs)
        )),
        None => Check::Differs("no LastModified in S3".into()),
    }
}

/// [`judge`], with the one checksum the stored sums may lack (CRC32C, SHA-1, SHA-256: the
/// uploader's choice) computed from the local file on the blocking pool, never on the runtime's
/// thread; the file is opened as at intake (no symlink, no FIFO) and only if its size and mtime
/// are still the write's.
pub async fn judge_off_thread(root: &Path, m: &MarkerSeen, head: Option<Head>) -> Check {
    let missing = head
        .as_ref()
        .and_then(|h| h.checksum.as_ref())
        .map(|(a, _)| *a)
        .filter(|a| stored_sum(&m.sums, *a).is_none());
    let extra = match missing {
        Some(a) => {
            let (path, expect) = (root.join(&m.rel), (m.size, m.mtime_ns));
            tokio::task::spawn_blocking(move || {
                // A marker read by us: not an uploader's read for the watcher.
                crate::marker::own_read(&path);
                local_checksum(&path, a, Some(expect))
            })
            .await
            .ok()
            .flatten()
        }
        None => None,
    };
    judge(m, head, |_| extra)
}

/// The checksum `algo` from the sums taken at the first read, when they hold it.
fn stored_sum(sums: &Sums, algo: Algo) -> Option<String> {
    match algo {
        Algo::Crc64Nvme if !sums.crc64nvme.is_empty() => Some(sums.crc64nvme.clone()),
        Algo::Crc32 if !sums.crc32.is_empty() => Some(sums.crc32.clone()),
        _ => None,
    }
}

/// Do the object's bytes equal the local ones, and by what proof? Err: why not.
pub(crate) fn content(
    sums: &Sums,
    h: &Head,
    local: impl FnOnce(Algo) -> Option<String>,
) -> Result<Method, String> {
    match &h.checksum {
        Some((algo, remote)) => {
            // Requests stored before the CRCs were kept have none: read the file for them.
            let mine = stored_sum(sums, *algo).or_else(|| local(*algo));
            match mine {
                Some(l) if l == *remote => Ok(Method::Checksum(*algo)),
                Some(l) => Err(format!(
                    "{} {remote} in S3, {l} locally",
                    algo.name().to_uppercase()
                )),
                None => Err("the local file changed since; its newer write is checked".into()),
            }
        }
        None if h.etag_is_md5 && h.etag == sums.md5 => Ok(Method::Md5),
        None if h.etag_is_md5 => Err(format!("ETag {} in S3, MD5 {} locally", h.etag, sums.md5)),
        None => Ok(Method::SizeTime),
    }
}

fn at(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| secs.to_string())
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
    pub async fn check(mut self, root: &Path, m: &MarkerSeen) -> Option<Result<Check, AwsError>> {
        if m.rel != self.rel {
            return None;
        }
        Some(match (&mut self.task).await {
            Ok(Ok(head)) => Ok(judge_off_thread(root, m, head).await),
            Ok(Err(e)) => Err(e),
            Err(e) => Err(AwsError::transient(format!("HeadObject: {e}"))),
        })
    }
}

impl Drop for EarlyHead {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::marker::read_marker;

    const EMPTY_MD5: &str = "d41d8cd98f00b204e9800998ecf8427e";

    fn marker(sums: Sums, size: u64, mtime_s: i64) -> MarkerSeen {
        MarkerSeen {
            rel: ".purge".into(),
            sums,
            size,
            mtime_ns: mtime_s * 1_000_000_000 + 5,
            prior: None,
            body: None,
        }
    }

    fn sums_of(bytes: &[u8]) -> Sums {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(".purge");
        std::fs::write(&p, bytes).expect("write");
        read_marker(&p, ".purge".into()).expect("hash").sums
    }

    fn head(etag: &str, size: i64, lm: i64) -> Head {
        Head {
            etag: etag.into(),
            size,
            last_modified: Some(lm),
            version: None,
            checksum: None,
            etag_is_md5: is_hex32(etag),
        }
    }

    fn none(_: Algo) -> Option<String> {
        None
    }

    #[test]
    fn a_plain_etag_must_equal_the_md5() {
        let m = marker(sums_of(b""), 0, 100);
        let by = judge(&m, Some(head(EMPTY_MD5, 0, 100)), none);
        assert!(
            matches!(
                by,
                Check::Holds {
                    by: Method::Md5,
                    ..
                }
            ),
            "{by:?}"
        );
        let other = judge(
            &m,
            Some(head("00000000000000000000000000000000", 0, 100)),
            none,
        );
        assert!(matches!(other, Check::Differs(_)), "{other:?}");
    }

    #[test]
    fn a_kms_etag_is_not_compared_but_the_checksum_is() {
        let m = marker(sums_of(b"deploy 1\n"), 9, 100);
        let mut h = head("0123456789abcdef0123456789abcdef", 9, 100);
        h.etag_is_md5 = false; // SSE-KMS
        h.checksum = Some((Algo::Crc64Nvme, m.sums.crc64nvme.clone()));
        let by = judge(&m, Some(h.clone()), none);
        assert!(
            matches!(
                by,
                Check::Holds {
                    by: Method::Checksum(Algo::Crc64Nvme),
                    ..
                }
            ),
            "{by:?}"
        );
        // Same size, other bytes: the checksum refuses them.
        h.checksum = Some((Algo::Crc64Nvme, sums_of(b"deploy 2\n").crc64nvme));
        assert!(matches!(judge(&m, Some(h), none), Check::Differs(_)));
    }

    #[test]
    fn without_checksum_or_md5_etag_size_and_time_decide_and_say_so() {
        let m = marker(sums_of(b"0123456789"), 10, 100);
        let etag = "0123456789abcdef0123456789abcdef-2";
        let ok = judge(&m, Some(head(etag, 10, 100)), none);
        assert!(
            matches!(
                ok,
                Check::Holds {
                    by: Method::SizeTime,
                    ..
                }
            ),
            "{ok:?}"
        );
        assert!(matches!(
            judge(&m, Some(head(etag, 11, 200)), none),
            Check::Differs(_)
        ));
    }

    #[test]
    fn rare_checksums_are_computed_from_the_local_file() {
        let m = marker(sums_of(b"x"), 1, 100);
        let mut h = head("0123456789abcdef0123456789abcdef", 1, 100);
        h.etag_is_md5 = false;
        h.checksum = Some((Algo::Sha256, "abc".into()));
        let by = judge(&m, Some(h.clone()), |a| {
            (a == Algo::Sha256).then(|| "abc".into())
        });
        assert!(matches!(
            by,
            Check::Holds {
                by: Method::Checksum(Algo::Sha256),
                ..
            }
        ));
        // The local file changed since it was hashed: not proven, its newer write is next.
        assert!(matches!(judge(&m, Some(h), none), Check::Differs(_)));
    }

    // The defect of an empty `.purge` written again: S3 still holds the last write's upload,
    // with the same bytes. Neither that object nor one older than the write is this write's.
    #[test]
    fn the_same_bytes_are_not_a_new_upload() {
        let mut m = marker(sums_of(b""), 0, 200);
        m.prior = Some(ObjectId {
            etag: EMPTY_MD5.into(),
            last_modified: 150,
            version: None,
        });
        assert!(matches!(
            judge(&m, Some(head(EMPTY_MD5, 0, 150)), none),
            Check::Differs(_)
        ));
        // Never verified before, but uploaded before the write.
        m.prior = None;
        assert!(matches!(
            judge(&m, Some(head(EMPTY_MD5, 0, 150)), none),
            Check::Differs(_)
        ));
        // Uploaded after the write (or within the clock tolerance): this write's.
        for lm in [200 - CLOCK_TOLERANCE_SECS, 200, 201] {
            let c = judge(&m, Some(head(EMPTY_MD5, 0, lm)), none);
            assert!(matches!(c, Check::Holds { .. }), "{lm}: {c:?}");
        }
        assert!(matches!(
            judge(
                &m,
                Some(head(EMPTY_MD5, 0, 199 - CLOCK_TOLERANCE_SECS)),
                none
            ),
            Check::Differs(_)
        ));
        // A versioned bucket tells two uploads in the same second apart.
        m.prior = Some(ObjectId {
            etag: EMPTY_MD5.into(),
            last_modified: 200,
            version: Some("v1".into()),
        });
        let mut h = head(EMPTY_MD5, 0, 200);
        h.version = Some("v2".into());
        assert!(matches!(judge(&m, Some(h), none), Check::Holds { .. }));
    }
}
