//! CloudFront: CreateInvalidation with a CallerReference derived from the request, so a retry
//! never pays twice, and the status of an invalidation.
//!
//! Real CloudFront returns the existing invalidation for a repeated CallerReference; the emulator
//! creates a second one. So after anything that may have reached CloudFront (a timeout, a crash),
//! [`Cdn::find`] looks the reference up among recent invalidations before sending again.

use aws_sdk_cloudfront::types::{InvalidationBatch, Paths};

use crate::aws::{self, AwsError};

/// The reference CloudFront deduplicates on: host, database instance, request id.
pub fn caller_reference(host: &str, instance: &str, request_id: i64) -> String {
    format!("purgewatch-{host}-{instance}-{request_id}")
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

    /// The id of a recent invalidation made with `caller_reference`, if any.
    pub async fn find(&self, caller_reference: &str) -> Result<Option<String>, AwsError> {
        let what = format!("ListInvalidations {}", self.distribution_id);
        let list = self
            .client
            .list_invalidations()
            .distribution_id(&self.distribution_id)
            .max_items(100)
            .send()
            .await
            .map_err(|e| aws::classify(&what, &e))?;
        let items = list
            .invalidation_list
            .and_then(|l| l.items)
            .unwrap_or_default();
        for summary in items {
            let got = self
                .client
                .get_invalidation()
                .distribution_id(&self.distribution_id)
                .id(&summary.id)
                .send()
                .await
                .map_err(|e| aws::classify("GetInvalidation", &e))?;
            let reference = got
                .invalidation
                .and_then(|i| i.invalidation_batch)
                .map(|b| b.caller_reference);
            if reference.as_deref() == Some(caller_reference) {
                return Ok(Some(summary.id));
            }
        }
        Ok(None)
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
    fn references_differ_across_databases_and_requests() {
        let a = caller_reference("web1", "0000abcd", 7);
        assert_eq!(a, "purgewatch-web1-0000abcd-7");
        assert_ne!(a, caller_reference("web1", "0000abce", 7));
        assert_ne!(a, caller_reference("web1", "0000abcd", 8));
    }

    #[test]
    fn completion_is_case_insensitive_and_in_progress_is_not_done() {
        assert!(is_completed("COMPLETED"));
        assert!(is_completed("Completed"));
        assert!(!is_completed("InProgress"));
    }
}
