//! What `init`, `takeover` and `check` ask AWS about the setup purgewatch replaces: the
//! distributions in front of a bucket and where they serve it, the bucket's notification
//! entries that invoke a Lambda, the function's code and environment.

use std::collections::BTreeMap;
use std::time::Duration;

use aws_sdk_s3::types::{FilterRule, FilterRuleName, LambdaFunctionConfiguration};
use serde::{Deserialize, Serialize};

use crate::aws::{self, Bucket};

/// One distribution with an origin in the bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    /// `arn:aws:cloudfront::ACCOUNT:distribution/ID`, for the IAM policy.
    pub arn: String,
    /// `d111111abcdef8.cloudfront.net`.
    pub domain: String,
    pub aliases: Vec<String>,
    pub comment: String,
    /// The origin's domain, e.g. `my-origin.s3.ap-northeast-1.amazonaws.com`.
    pub origin_domain: String,
    /// "" or e.g. "/www": put before the viewer's path on the way to S3.
    pub origin_path: String,
}

impl Candidate {
    /// One line for a list the operator chooses from.
    pub fn describe(&self) -> String {
        let aliases = if self.aliases.is_empty() {
            "no aliases".to_owned()
        } else {
            self.aliases.join(", ")
        };
        let path = if self.origin_path.is_empty() {
            String::new()
        } else {
            format!(", origin path {}", self.origin_path)
        };
        format!(
            "{} ({}; {aliases}; comment {:?}{path})",
            self.id, self.domain, self.comment
        )
    }
}

/// The bucket an origin domain names when it is an S3 endpoint: the REST endpoint
/// (`BUCKET.s3.amazonaws.com`, `BUCKET.s3.REGION.amazonaws.com`, the older
/// `BUCKET.s3-REGION.amazonaws.com`; with OAI or OAC alike) or the website endpoint
/// (`BUCKET.s3-website-REGION.amazonaws.com`, `BUCKET.s3-website.REGION.amazonaws.com`).
/// A bucket name may itself hold dots, so the S3 part is found from the right.
pub fn origin_bucket(domain: &str) -> Option<&str> {
    let d = domain.trim_end_matches('.');
    let d = d
        .strip_suffix(".amazonaws.com")
        .or_else(|| d.strip_suffix(".amazonaws.com.cn"))?;
    // "bucket.s3", "bucket.s3.region", "bucket.s3-region", "bucket.s3-website-region", …
    let at = d.rfind(".s3.").or_else(|| d.rfind(".s3-"));
    let at = match at {
        Some(i) => i,
        None => d.strip_suffix(".s3").map(str::len)?,
    };
    let bucket = &d[..at];
    (!bucket.is_empty()).then_some(bucket)
}

/// Every distribution with an origin in `bucket` (ListDistributions, every page).
pub async fn distributions_for(
    cf: &aws_sdk_cloudfront::Client,
    bucket: &str,
) -> Result<Vec<Candidate>, String> {
    let mut found = Vec::new();
    let mut marker: Option<String> = None;
    // 100 pages of 100: more distributions than an account may have.
    for _ in 0..100 {
        let out = cf
            .list_distributions()
            .set_marker(marker.clone())
            .max_items(100)
            .send()
            .await
            .map_err(|e| aws::classify("ListDistributions", &e).to_string())?;
        let Some(list) = out.distribution_list() else {
            break;
        };
        for d in list.items() {
            let origins = d.origins().map(|o| o.items()).unwrap_or_default();
            for o in origins {
                if origin_bucket(o.domain_name()) == Some(bucket) {
                    found.push(Candidate {
                        id: d.id().to_owned(),
                        arn: d.arn().to_owned(),
                        domain: d.domain_name().to_owned(),
                        aliases: d.aliases().map(|a| a.items().to_vec()).unwrap_or_default(),
                        comment: d.comment().to_owned(),
                        origin_domain: o.domain_name().to_owned(),
                        origin_path: o.origin_path().unwrap_or_default().to_owned(),
                    });
                    break;
                }
            }
        }
        match list.next_marker() {
            Some(m) if list.is_truncated() && !m.is_empty() => marker = Some(m.to_owned()),
            _ => break,
        }
    }
    Ok(found)
}

/// Where the site root (the bucket's `prefix`, e.g. "www/") is served behind an origin path:
/// the `[cloudfront] path_prefix`. No origin path: "/www/". Origin path "/www": "/". Err when
/// the origin path points elsewhere in the bucket, so no URL reaches the site through it.
pub fn served_at(prefix: &str, origin_path: &str) -> Result<String, String> {
    let origin = origin_path.trim_matches('/');
    let origin = if origin.is_empty() {
        String::new()
    } else {
        format!("{origin}/")
    };
    let rest = prefix.strip_prefix(origin.as_str()).ok_or_else(|| {
        format!(
            "the distribution serves the bucket's {:?} (origin path {origin_path:?}) and the \
             site is under {prefix:?}: no URL of it reaches the site",
            origin
        )
    })?;
    crate::paths::prefix(&format!("/{rest}"))
}

/// `check`'s comparison of `[cloudfront] path_prefix` with where the distribution serves the
/// site (GetDistribution: the origin in the bucket, its origin path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefixCheck {
    /// Right: the line to show.
    Agrees(String),
    /// Wrong: what it should be, or why no value can be right.
    Differs(String),
    /// Not compared (no permission, no S3 origin in the bucket): why.
    Unknown(String),
}

pub async fn check_path_prefix(
    cf: &aws_sdk_cloudfront::Client,
    distribution: &str,
    bucket: &str,
    prefix: &str,
    configured: &str,
) -> PrefixCheck {
    let out = match cf.get_distribution().id(distribution).send().await {
        Ok(o) => o,
        Err(e) => {
            return PrefixCheck::Unknown(format!(
            "not compared with the distribution: {} (the role needs cloudfront:GetDistribution)",
            aws::classify(&format!("GetDistribution {distribution}"), &e)
        ))
        }
    };
    let origins = out
        .distribution()
        .and_then(|d| d.distribution_config())
        .and_then(|c| c.origins())
        .map(|o| o.items())
        .unwrap_or_default();
    let Some(o) = origins
        .iter()
        .find(|o| origin_bucket(o.domain_name()) == Some(bucket))
    else {
        return PrefixCheck::Unknown(format!(
            "{distribution} has no origin in s3://{bucket}: not compared"
        ));
    };
    let origin_path = o.origin_path().unwrap_or_default();
    match served_at(prefix, origin_path) {
        Ok(p) if p == configured => PrefixCheck::Agrees(format!(
            "cloudfront.path_prefix {configured:?}: s3://{bucket}/{prefix} is served at {p} (origin path {origin_path:?})"
        )),
        Ok(p) => PrefixCheck::Differs(format!(
            "cloudfront.path_prefix {configured:?}: {distribution} serves s3://{bucket}/{prefix} at {p} \
             (origin path {origin_path:?}): set path_prefix = {p:?}, or the paths sent miss"
        )),
        Err(e) => PrefixCheck::Differs(format!("cloudfront.path_prefix: {distribution}: {e}")),
    }
}

/// A notification entry that invokes a Lambda, as stored by `takeover` to put back exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    pub id: Option<String>,
    pub function_arn: String,
    pub events: Vec<String>,
    /// Key filter rules, (name, value): ("suffix", ".purge").
    pub filter: Vec<(String, String)>,
}

impl Trigger {
    pub fn of(c: &LambdaFunctionConfiguration) -> Trigger {
        let filter = c
            .filter()
            .and_then(|f| f.key())
            .map(|k| {
                k.filter_rules()
                    .iter()
                    .map(|r| {
                        (
                            r.name().map(|n| n.as_str().to_owned()).unwrap_or_default(),
                            r.value().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Trigger {
            id: c.id().map(str::to_owned),
            function_arn: c.lambda_function_arn().to_owned(),
            events: c.events().iter().map(|e| e.as_str().to_owned()).collect(),
            filter,
        }
    }

    /// The entry again, as S3 takes it.
    pub fn to_sdk(&self) -> Result<LambdaFunctionConfiguration, String> {
        use aws_sdk_s3::types::{Event, NotificationConfigurationFilter, S3KeyFilter};
        let mut b = LambdaFunctionConfiguration::builder()
            .set_id(self.id.clone())
            .lambda_function_arn(&self.function_arn)
            .set_events(Some(
                self.events
                    .iter()
                    .map(|e| Event::from(e.as_str()))
                    .collect(),
            ));
        if !self.filter.is_empty() {
            let rules = self
                .filter
                .iter()
                .map(|(n, v)| {
                    FilterRule::builder()
                        .name(FilterRuleName::from(n.as_str()))
                        .value(v)
                        .build()
                })
                .collect();
            b = b.filter(
                NotificationConfigurationFilter::builder()
                    .key(S3KeyFilter::builder().set_filter_rules(Some(rules)).build())
                    .build(),
            );
        }
        b.build().map_err(|e| e.to_string())
    }

    /// The function's name, from its ARN (`arn:aws:lambda:REGION:ACCOUNT:function:NAME[:ALIAS]`).
    pub fn function_name(&self) -> &str {
        arn_part(&self.function_arn, 6).unwrap_or(&self.function_arn)
    }

    /// The region the function lives in.
    pub fn region(&self) -> Option<&str> {
        arn_part(&self.function_arn, 3).filter(|r| !r.is_empty())
    }
}

fn arn_part(arn: &str, i: usize) -> Option<&str> {
    arn.split(':').nth(i)
}

/// The bucket's notification configuration (GetBucketNotificationConfiguration).
pub async fn notifications(
    origin: &Bucket,
) -> Result<aws_sdk_s3::operation::get_bucket_notification_configuration::GetBucketNotificationConfigurationOutput, String>
{
    let name = origin.name().to_owned();
    origin
        .send(|c| {
            c.get_bucket_notification_configuration()
                .bucket(&name)
                .send()
        })
        .await
        .map_err(|e| {
            aws::classify(
                &format!("GetBucketNotificationConfiguration s3://{name}"),
                &e,
            )
            .to_string()
        })
}

/// A function as GetFunction shows it.
#[derive(Debug, Clone)]
pub struct Function {
    pub name: String,
    pub handler: Option<String>,
    pub env: BTreeMap<String, String>,
    /// The presigned URL of the code's zip (valid minutes), when the code is a zip.
    pub location: Option<String>,
}

/// GetFunction of the function a trigger invokes, in the function's region.
pub async fn function(shared: &aws_config::SdkConfig, t: &Trigger) -> Result<Function, String> {
    let mut conf = aws_sdk_lambda::config::Builder::from(shared);
    if let Some(r) = t.region() {
        conf = conf.region(aws_sdk_lambda::config::Region::new(r.to_owned()));
    }
    let client = aws_sdk_lambda::Client::from_conf(conf.build());
    let out = client
        .get_function()
        .function_name(&t.function_arn)
        .send()
        .await
        .map_err(|e| {
            aws::classify(&format!("GetFunction {}", t.function_name()), &e).to_string()
        })?;
    let c = out.configuration();
    Ok(Function {
        name: c
            .and_then(|c| c.function_name())
            .unwrap_or(t.function_name())
            .to_owned(),
        handler: c.and_then(|c| c.handler()).map(str::to_owned),
        env: c
            .and_then(|c| c.environment())
            .and_then(|e| e.variables())
            .map(|v| v.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
        location: out.code().and_then(|c| c.location()).map(str::to_owned),
    })
}

/// The most code a Lambda zip may be here (AWS's own limit for a direct upload is 50 MB; the
/// article's is a few KiB).
pub const MAX_CODE: usize = 16 << 20;

/// GET of a presigned code URL: HTTPS, or plain HTTP only to this machine (an emulator); at most
/// [`MAX_CODE`], within a minute. The URL carries a signature: never echoed.
pub async fn download(url: &str) -> Result<Vec<u8>, String> {
    use http_body_util::{BodyExt, Empty};
    use hyper::body::Bytes;

    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("the code URL does not parse: {e}"))?;
    let loopback = uri
        .host()
        .map(|h| h.trim_matches(['[', ']']))
        .and_then(|h| h.parse::<std::net::IpAddr>().ok())
        .is_some_and(|ip| ip.is_loopback());
    if uri.scheme_str() != Some("https") && !loopback {
        return Err("the code URL is not https".into());
    }
    let client = aws::hyper_client::<Empty<Bytes>>()?;
    let get = async {
        let resp = client.get(uri).await.map_err(|e| aws::error_chain(&e))?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let body = http_body_util::Limited::new(resp.into_body(), MAX_CODE)
            .collect()
            .await
            .map_err(|e| format!("{e} (the limit is {MAX_CODE} bytes)"))?;
        Ok(body.to_bytes().to_vec())
    };
    tokio::time::timeout(Duration::from_secs(60), get)
        .await
        .map_err(|_| "no answer within 60 s".to_owned())?
        .map_err(|e| format!("fetching the function's code: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3_origins_name_their_bucket() {
        for (domain, bucket) in [
            ("my-origin.s3.amazonaws.com", Some("my-origin")),
            (
                "my-origin.s3.ap-northeast-1.amazonaws.com",
                Some("my-origin"),
            ),
            (
                "my.dotted.bucket.s3.eu-west-1.amazonaws.com",
                Some("my.dotted.bucket"),
            ),
            ("old.s3-us-west-2.amazonaws.com", Some("old")),
            ("site.s3-website-ap-northeast-1.amazonaws.com", Some("site")),
            ("site.s3-website.eu-central-1.amazonaws.com", Some("site")),
            ("www.example.com", None),
            ("abc.cloudfront.net", None),
            (".s3.amazonaws.com", None),
        ] {
            assert_eq!(origin_bucket(domain), bucket, "{domain}");
        }
    }

    #[test]
    fn the_root_is_served_where_the_origin_path_and_the_prefix_say() {
        assert_eq!(served_at("", "").as_deref(), Ok("/"));
        assert_eq!(served_at("www/", "").as_deref(), Ok("/www/"));
        assert_eq!(served_at("www/", "/www").as_deref(), Ok("/"));
        assert_eq!(served_at("a/b/", "/a").as_deref(), Ok("/b/"));
        assert_eq!(
            served_at("サイト/", "").as_deref(),
            Ok("/%E3%82%B5%E3%82%A4%E3%83%88/")
        );
        let e = served_at("blog/", "/www").unwrap_err();
        assert!(e.contains("no URL of it reaches the site"), "{e}");
    }

    #[test]
    fn a_trigger_names_its_function_and_region() {
        let t = Trigger {
            id: None,
            function_arn: "arn:aws:lambda:ap-northeast-1:123456789012:function:purge:live".into(),
            events: vec![],
            filter: vec![],
        };
        assert_eq!(
            (t.function_name(), t.region()),
            ("purge", Some("ap-northeast-1"))
        );
    }
}
