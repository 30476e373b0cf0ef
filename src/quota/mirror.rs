//! The count bucket, in the seed Lambda's format: `<period>.txt` holding the decimal count,
//! read with GetObject and written with a conditional PutObject.

use crate::aws::{self, AwsError, Bucket};

use super::{object_key, parse_count, MalformedCount};

/// What the count object holds now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    pub count: u32,
    /// None when the object does not exist yet.
    pub etag: Option<String>,
    /// The CallerReference of the purgewatch request that wrote it last (object metadata;
    /// the seed Lambda writes none). Lets a restarted daemon recognise its own write.
    pub writer: Option<String>,
}

/// User metadata naming the request that wrote the count; the body stays the seed's format.
const WRITER_KEY: &str = "purgewatch-request";

/// The longest body read as a count: a u32 is 10 digits, this leaves room for whitespace. A
/// longer object is refused unread (a 400 MiB one once made `purgewatch quota` take 414 MB).
pub const MAX_BODY: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    /// Someone else wrote first (412/409): re-read and decide again.
    #[error("count object changed meanwhile")]
    Conflict,
    #[error(transparent)]
    Malformed(#[from] MalformedCount),
    /// Longer than any count: refused without reading it (fail closed, like a malformed one).
    #[error(
        "count object {object} is {}, not a count (at most {MAX_BODY} bytes of digits); fix or delete it",
        size.map_or(format!("more than {MAX_BODY} bytes"), |n| format!("{n} bytes"))
    )]
    TooBig { object: String, size: Option<u64> },
    #[error(transparent)]
    Aws(#[from] AwsError),
}

/// The count bucket, in the seed's format.
#[derive(Clone)]
pub struct Mirror {
    bucket: Bucket,
    /// Before `<period>.txt`: several quotas in one bucket (`[quotas.NAME] key_prefix`).
    key_prefix: String,
}

impl Mirror {
    pub fn new(bucket: Bucket, key_prefix: &str) -> Mirror {
        Mirror {
            bucket,
            key_prefix: key_prefix.to_owned(),
        }
    }

    /// The count object's key for `period`.
    pub fn key(&self, period: &str) -> String {
        format!("{}{}", self.key_prefix, object_key(period))
    }

    pub fn bucket(&self) -> &str {
        self.bucket.name()
    }

    /// The bucket's handle (its region).
    pub fn handle(&self) -> &Bucket {
        &self.bucket
    }

    pub async fn read(&self, period: &str) -> Result<Remote, MirrorError> {
        let key = self.key(period);
        let name = self.bucket.name();
        let out = self
            .bucket
            .send(|c| c.get_object().bucket(name).key(&key).send())
            .await;
        match out {
            Ok(mut o) => {
                let etag = o.e_tag.clone();
                let writer = o.metadata().and_then(|m| m.get(WRITER_KEY)).cloned();
                let too_big = |size: Option<u64>| MirrorError::TooBig {
                    object: format!("s3://{name}/{key}"),
                    size,
                };
                // Anyone may write the object: its length decides before its body is read.
                let said = o.content_length.and_then(|n| u64::try_from(n).ok());
                if said.is_some_and(|n| n > MAX_BODY as u64) {
                    return Err(too_big(said));
                }
                // Kept: at most one byte past the limit, whatever the length said (a chunked
                // answer has none); read: at most one chunk past it. Dropping the stream closes
                // the connection on the rest.
                let mut body = Vec::with_capacity(MAX_BODY + 1);
                while let Some(chunk) =
                    o.body.try_next().await.map_err(|e| {
                        AwsError::transient(format!("reading s3://{name}/{key}: {e}"))
                    })?
                {
                    let room = MAX_BODY + 1 - body.len();
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if body.len() > MAX_BODY {
                        return Err(too_big(said));
                    }
                }
                Ok(Remote {
                    count: parse_count(&key, &body)?,
                    etag,
                    writer,
                })
            }
            Err(e) => {
                let not_found = e
                    .as_service_error()
                    .map(|s| s.is_no_such_key())
                    .unwrap_or(false);
                if not_found {
                    Ok(Remote {
                        count: 0,
                        etag: None,
                        writer: None,
                    })
                } else {
                    Err(
                        aws::classify(&format!("GetObject s3://{name}/{key} (count bucket)"), &e)
                            .into(),
                    )
                }
            }
        }
    }

    /// Writes `count` if the object is still what `etag` says (absent when None). Returns the new ETag.
    pub async fn write(
        &self,
        period: &str,
        count: u32,
        etag: Option<&str>,
        writer: &str,
    ) -> Result<Option<String>, MirrorError> {
        let key = self.key(period);
        let name = self.bucket.name();
        let body = count.to_string();
        let sent = self
            .bucket
            .send(|c| {
                let put = c
                    .put_object()
                    .bucket(name)
                    .key(&key)
                    .content_type("text/plain")
                    .metadata(WRITER_KEY, writer)
                    .body(body.clone().into_bytes().into());
                match etag {
                    Some(t) => put.if_match(t),
                    None => put.if_none_match("*"),
                }
                .send()
            })
            .await;
        match sent {
            Ok(o) => Ok(o.e_tag),
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                let code = e.as_service_error().and_then(|s| {
                    use aws_sdk_s3::error::ProvideErrorMetadata;
                    s.code().map(str::to_owned)
                });
                // 412: the etag moved (or the object appeared); 409: a concurrent conditional write;
                // 404 on If-Match: the object vanished. Each means "read again".
                if matches!(status, Some(412 | 409))
                    || matches!(
                        code.as_deref(),
                        Some("PreconditionFailed" | "ConditionalRequestConflict")
                    )
                    || (etag.is_some()
                        && (status == Some(404) || code.as_deref() == Some("NoSuchKey")))
                {
                    Err(MirrorError::Conflict)
                } else {
                    Err(
                        aws::classify(&format!("PutObject s3://{name}/{key} (count bucket)"), &e)
                            .into(),
                    )
                }
            }
        }
    }
}
