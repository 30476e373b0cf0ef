//! CloudFront: CreateInvalidation with a CallerReference stored before the call, so a retry
//! never pays twice, and the status of an invalidation.
//!
//! CloudFront's contract: the same CallerReference with the same batch returns the invalidation
//! made the first time; with another batch, `InvalidationBatchAlreadyExists`. So after anything
//! that may have reached CloudFront (a timeout, a crash) the request simply sends the same batch
//! with the same reference again. The reference holds the time of the grant, so a database
//! restored from a backup or cloned with a machine image, which hands out the same request ids
//! again, never reuses one (it would get an old invalidation back and purge nothing).

use aws_sdk_cloudfront::types::{InvalidationBatch, Paths};

use crate::aws::{self, AwsError};

/// The reference CloudFront deduplicates on: host, database instance, request id and the grant
/// time in milliseconds (at most 128 characters, CloudFront's limit; a long host name is cut).
pub fn caller_reference(host: &str, instance: &str, request_id: i64, granted_ms: i64) -> String {
    let host: String = host.chars().take(60).collect();
    format!("purgewatch-{host}-{instance}-{request_id}-{granted_ms}")
}

/// CloudFront's limits on one distribution's invalidations (per AWS's developer guide).
pub mod limits {
    /// Wildcard paths (`/dir/*`) in progress at once.
    pub const WILDCARDS_IN_PROGRESS: usize = 15;
    /// File paths (no wildcard) in progress at once.
    pub const FILES_IN_PROGRESS: usize = 3_000;
    /// Characters in one path.
    pub const PATH_CHARS: usize = 4_000;
}

#[derive(Clone)]
pub struct Cdn {
    client: aws_sdk_cloudfront::Client,
    distribution_id: String,
}

impl Cdn {
    pub fn new(client: aws_sdk_cloudfront::Client, distribution_id: String) -> Cdn {
        Cdn {
            client,
            distribution_id,
        }
    }

    pub fn distribution_id(&self) -> &str {
        &self.distribution_id
    }

    /// Sends the invalidation; returns its id.
    pub async fn create(
        &self,
        paths: &[String],
        caller_reference: &str,
    ) -> Result<String, AwsError> {
        let what = format!("CreateInvalidation {}", self.distribution_id);
        let batch = InvalidationBatch::builder()
            .caller_reference(caller_reference)
            .paths(
                Paths::builder()
                    .quantity(paths.len() as i32)
                    .set_items(Some(paths.to_vec()))
                    .build()
                    .map_err(|e| AwsError::Permanent(format!("{what}: {e}")))?,
            )
            .build()
            .map_err(|e| AwsError::Permanent(format!("{what}: {e}")))?;
        let out = self
            .client
            .create_invalidation()
            .distribution_id(&self.distribution_id)
            .invalidation_batch(batch)
            .send()
            .await
            .map_err(|e| aws::classify(&what, &e))?;
        out.invalidation
            .map(|i| i.id)
            .ok_or_else(|| AwsError::transient(format!("{what}: answer without an invalidation")))
    }

    /// Lists one invalidation: proves the distribution exists and the credentials may see it.
    pub async fn reachable(&self) -> Result<(), AwsError> {
        self.client
            .list_invalidations()
            .distribution_id(&self.distribution_id)
            .max_items(1)
            .send()
            .await
            .map_err(|e| {
                aws::classify(&format!("ListInvalidations {}", self.distribution_id), &e)
            })?;
        // ListInvalidations of a missing distribution can answer an empty list (the emulator
        // does); GetInvalidation of a made-up id tells "no such distribution" from "no such id".
        let probe = self
            .client
            .get_invalidation()
            .distribution_id(&self.distribution_id)
            .id("PURGEWATCHCHECK")
            .send()
            .await;
        let Err(e) = probe else { return Ok(()) };
        let err = aws::classify(&format!("GetInvalidation {}", self.distribution_id), &e);
        let text = err.to_string();
        let no_such_id = text.contains("NoSuchInvalidation")
            || (text.contains("404") && !text.to_ascii_lowercase().contains("distribution"));
        if no_such_id {
            Ok(())
        } else {
            Err(err)
        }
    }

    /// The distribution's invalidations still in progress (ListInvalidations, newest first).
    pub async fn in_progress(&self) -> Result<Vec<String>, AwsError> {
        let what = format!("ListInvalidations {}", self.distribution_id);
        let list = self
            .client
            .list_invalidations()
            .distribution_id(&self.distribution_id)
            .max_items(100)
            .send()
            .await
            .map_err(|e| aws::classify(&what, &e))?;
        Ok(list
            .invalidation_list
            .and_then(|l| l.items)
            .unwrap_or_default()
            .into_iter()
            .filter(|i| !is_completed(&i.status))
            .map(|i| i.id)
            .collect())
    }

    /// Where viewers reach the distribution (`https://` its first alias, else its
    /// `*.cloudfront.net` domain) and its default root object, from GetDistribution.
    pub async fn viewer(&self) -> Result<(String, Option<String>), AwsError> {
        let what = format!("GetDistribution {}", self.distribution_id);
        let got = self
            .client
            .get_distribution()
            .id(&self.distribution_id)
            .send()
            .await
            .map_err(|e| aws::classify(&what, &e))?;
        let d = got
            .distribution
            .ok_or_else(|| AwsError::transient(format!("{what}: answer without a distribution")))?;
        let cfg = d.distribution_config.as_ref();
        // Names from AWS become a URL: a plain host name only (a wildcard alias, `*.example.com`,
        // names no host to ask).
        let plain = |h: &&String| {
            !h.is_empty()
                && h.len() <= 253
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
        };
        let alias = cfg
            .and_then(|c| c.aliases.as_ref())
            .and_then(|a| a.items.as_ref())
            .and_then(|i| i.iter().find(plain).cloned());
        let host = match alias {
            Some(a) => a,
            None if plain(&&d.domain_name) => d.domain_name,
            None => {
                return Err(AwsError::Permanent(format!(
                    "{what}: no alias or domain name to ask; set cloudfront.edge_url"
                )))
            }
        };
        let root = cfg
            .and_then(|c| c.default_root_object.clone())
            .filter(|r| !r.is_empty());
        Ok((format!("https://{host}"), root))
    }

    /// CloudFront's status word for the invalidation (`InProgress`, `Completed`).
    pub async fn status(&self, invalidation_id: &str) -> Result<String, AwsError> {
        let got = self
            .client
            .get_invalidation()
            .distribution_id(&self.distribution_id)
            .id(invalidation_id)
            .send()
            .await
            .map_err(|e| aws::classify(&format!("GetInvalidation {invalidation_id}"), &e))?;
        Ok(got.invalidation.map(|i| i.status).unwrap_or_default())
    }
}

/// The emulator says `COMPLETED`, CloudFront `Completed`.
pub fn is_completed(status: &str) -> bool {
    status.eq_ignore_ascii_case("completed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_differ_across_databases_requests_and_grants() {
        let a = caller_reference("web1", "0000abcd", 7, 1_700_000_000_000);
        assert_eq!(a, "purgewatch-web1-0000abcd-7-1700000000000");
        assert_ne!(
            a,
            caller_reference("web1", "0000abce", 7, 1_700_000_000_000)
        );
        assert_ne!(
            a,
            caller_reference("web1", "0000abcd", 8, 1_700_000_000_000)
        );
        // A restored database hands out request 7 again, at another time.
        assert_ne!(
            a,
            caller_reference("web1", "0000abcd", 7, 1_700_000_000_001)
        );
        let long = caller_reference(&"h".repeat(300), "0000abcd", i64::MAX, i64::MAX);
        assert!(long.len() <= 128, "{}", long.len());
    }

    #[test]
    fn completion_is_case_insensitive_and_in_progress_is_not_done() {
        assert!(is_completed("COMPLETED"));
        assert!(is_completed("Completed"));
        assert!(!is_completed("InProgress"));
    }
}
