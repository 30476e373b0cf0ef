//! The listings the change set reads ([`super::changes`]): one ListObjectsV2 page from a key
//! on, and every object directly under a folder.

use std::collections::HashMap;

use super::changes::Listed;
use super::{clean_etag, Origin};
use crate::aws::{self, AwsError};

impl Origin {
    /// One page (up to 1,000 keys) of everything under the prefix after `start_after`:
    /// key → (size, ETag), the page's last key, and whether more follow.
    pub(super) async fn page(
        &self,
        start_after: &str,
    ) -> Result<(HashMap<String, Listed>, Option<String>, bool), AwsError> {
        let name = self.bucket.name();
        let prefix = &self.prefix;
        let page = self
            .bucket
            .send(|c| {
                c.list_objects_v2()
                    .bucket(name)
                    .prefix(prefix)
                    .start_after(start_after)
                    .send()
            })
            .await
            .map_err(|e| {
                aws::classify(
                    &format!("ListObjectsV2 s3://{name}/{prefix} after {start_after:?}"),
                    &e,
                )
            })?;
        let mut out = HashMap::with_capacity(page.contents().len());
        let last = add_listed(&mut out, page.contents());
        Ok((out, last, page.is_truncated() == Some(true)))
    }

    /// Every object directly under `prefix` (delimiter '/'), and the calls it took.
    pub(super) async fn list_folder(
        &self,
        prefix: &str,
    ) -> Result<(HashMap<String, Listed>, u64), AwsError> {
        let mut out = HashMap::new();
        let mut token: Option<String> = None;
        let name = self.bucket.name();
        // Bounded: 1,000 pages of 1,000 keys is more than one folder of a web root holds.
        for calls in 1..=1000u64 {
            let page = self
                .bucket
                .send(|c| {
                    c.list_objects_v2()
                        .bucket(name)
                        .prefix(prefix)
                        .delimiter("/")
                        .set_continuation_token(token.clone())
                        .send()
                })
                .await
                .map_err(|e| aws::classify(&format!("ListObjectsV2 s3://{name}/{prefix}"), &e))?;
            add_listed(&mut out, page.contents());
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => return Ok((out, calls)),
            }
        }
        Ok((out, 1000))
    }
}

/// Adds a page's objects to `out`; returns the page's last key.
fn add_listed(
    out: &mut HashMap<String, Listed>,
    objects: &[aws_sdk_s3::types::Object],
) -> Option<String> {
    let mut last = None;
    for o in objects {
        if let Some(k) = o.key() {
            out.insert(
                k.to_owned(),
                Listed {
                    size: o.size().unwrap_or(-1),
                    etag: clean_etag(o.e_tag()),
                    modified: o.last_modified().map(|t| t.secs()),
                },
            );
            last = Some(k.to_owned());
        }
    }
    last
}
