//! The edge check of the CloudFront stage (`[cloudfront] edge_check`): which purged objects to
//! ask the edge for, S3's ETag of each, and what a stale answer likely means. The asking itself
//! is [`crate::edge`].

use tracing::warn;

use super::{Invalidated, Sender};
use crate::edge::{self, Edge};
use crate::halt::Halt;
use crate::paths;
use crate::store::invalidations::Row;
use crate::store::markers::of_request as markers_of;
use crate::store::{changes, requests};
use crate::text::printable;

impl Sender<'_> {
    /// The edge check ([`crate::edge`]) on every distribution: a note per distribution when
    /// fresh (or when the edge could not be asked), the stale paths and why when not.
    pub(super) async fn at_the_edge(
        &self,
        inv: &Invalidated,
        rows: &[Row],
    ) -> Result<Option<String>, Halt> {
        let ids = inv.request_ids.clone();
        let ((rels, of_changes), sent) = self
            .steps
            .store
            .quick(move |c| {
                let mut changed = Vec::new();
                let mut markers = Vec::new();
                for &id in &ids {
                    let (ch, _) = changes::of_request(c, id)?;
                    changed.extend(
                        ch.into_iter()
                            .filter(|(_, deleted)| !deleted)
                            .map(|(r, _)| r),
                    );
                    markers.extend(markers_of(c, id)?.1.into_iter().map(|m| m.rel));
                }
                Ok((edge_rels(changed, markers), requests::paths_of(c, ids[0])?))
            })
            .await?;
        let mut stale = Vec::new();
        for row in rows {
            let Some(cdn) = self.cdn(&row.distribution_id) else {
                continue;
            };
            // `edge_url` is given in the order of `distribution_id`.
            let configured = self
                .cfg
                .distribution_ids
                .iter()
                .position(|d| d == &row.distribution_id)
                .and_then(|p| self.cfg.edge_urls.get(p).cloned().flatten());
            let (base, root) = match (configured, cdn.viewer().await) {
                (Some(u), Ok((_, root))) => (u, root),
                (Some(u), Err(_)) => (u, None),
                (None, Ok((u, root))) => (u, root),
                (None, Err(e)) => {
                    let why = format!("edge: not checked on {}: {e}", row.distribution_id);
                    self.steps.note(&inv.request_ids, why).await?;
                    continue;
                }
            };
            let mut wanted: Vec<(String, String)> = rels
                .iter()
                .map(|r| (paths::viewer_path(&self.cfg.path_prefix, r), r.clone()))
                .collect();
            // Without changes, the site's root too: "/" is the default root object, at the
            // distribution's root only.
            if let Some(root) = root.filter(|_| self.cfg.path_prefix == "/" && !of_changes) {
                wanted.push(("/".to_owned(), root));
            }
            let mut targets = Vec::new();
            for (path, rel) in wanted {
                match self.origin.head(&rel).await {
                    Ok(Some(h)) => targets.push(edge::Target {
                        path,
                        s3_etag: h.etag,
                    }),
                    Ok(None) => {}
                    Err(e) => warn!(error = %e, "edge check: S3's ETag unknown"),
                }
            }
            if targets.is_empty() {
                continue;
            }
            let edge = match Edge::new(&base) {
                Ok(e) => e,
                Err(e) => {
                    let why = format!("edge: not checked via {}: {e}", printable(&base));
                    self.steps.note(&inv.request_ids, why).await?;
                    continue;
                }
            };
            let Some(report) = edge
                .check(&targets, self.cfg.edge_retry_for, self.steps.token)
                .await
            else {
                return Err(Halt::Shutdown);
            };
            let on = if rows.len() > 1 {
                format!(" ({})", row.distribution_id)
            } else {
                String::new()
            };
            let via = printable(edge.base());
            let unreachable: Vec<&str> = report
                .not_fresh
                .iter()
                .filter_map(|(_, s)| match s {
                    edge::Seen::Unreachable(e) => Some(e.as_str()),
                    _ => None,
                })
                .collect();
            let fresh = report.checked - report.not_fresh.len();
            let stale_here: Vec<String> = report
                .not_fresh
                .iter()
                .filter_map(|(t, s)| match s {
                    edge::Seen::Stale { status, etag } => Some(stale_line(
                        t,
                        *status,
                        etag.as_deref(),
                        &sent,
                        &self.cfg.path_prefix,
                    )),
                    _ => None,
                })
                .collect();
            let note = match (stale_here.is_empty(), unreachable.first()) {
                (true, None) => format!("edge: {fresh} of {} fresh via {via}{on}", report.checked),
                (true, Some(e)) => format!(
                    "edge: {fresh} of {} fresh via {via}{on}; the others not answered: {}",
                    report.checked,
                    printable(e)
                ),
                (false, _) => {
                    stale.push(format!(
                        "edge: {} of {} stale via {via}{on}: {}",
                        stale_here.len(),
                        report.checked,
                        stale_here.join("; ")
                    ));
                    continue;
                }
            };
            self.steps.note(&inv.request_ids, note).await?;
        }
        Ok((!stale.is_empty()).then(|| stale.join("; ")))
    }
}

/// The files the edge check asks for: up to three of the changes (first, middle, last: those
/// of a deploy most likely cached before), else the markers; and whether they are changes.
fn edge_rels(mut changed: Vec<String>, mut markers: Vec<String>) -> (Vec<String>, bool) {
    changed.sort();
    changed.dedup();
    match changed.len() {
        0 => {
            markers.sort();
            markers.dedup();
            markers.truncate(3);
            (markers, false)
        }
        1..=3 => (changed, true),
        n => {
            let picked = vec![
                changed[0].clone(),
                changed[n / 2].clone(),
                changed[n - 1].clone(),
            ];
            (picked, true)
        }
    }
}

/// One stale path, the ETags and what likely went wrong, in words.
fn stale_line(
    t: &edge::Target,
    status: u16,
    etag: Option<&str>,
    sent: &[String],
    prefix: &str,
) -> String {
    let path = printable(&t.path);
    let theirs = match etag {
        Some(e) => format!("HTTP {status} with ETag {}", printable(e)),
        None => format!("HTTP {status} without an ETag"),
    };
    let likely = if status == 404 || status == 403 {
        format!(
            "the edge has no object at {path}: check path_prefix {prefix:?} and the distribution's origin path"
        )
    } else if !sent.iter().any(|p| paths::matches(p, &t.path)) {
        format!(
            "the path was never in the invalidation (sent: {})",
            printable(&sent.join(" "))
        )
    } else if etag.is_some_and(|e| e.starts_with("W/")) {
        "the edge answered a compressed copy".to_owned()
    } else {
        format!(
            "CloudFront still serves other bytes at a path the invalidation covered: a cache in front of it, or an origin path mapping {path} to another key (path_prefix {prefix:?})"
        )
    };
    format!(
        "{path}: the edge answered {theirs}, S3 holds \"{}\"; likely {likely}",
        t.s3_etag
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_edge_asks_for_three_changes_spread_over_the_deploy_else_the_markers() {
        let changed: Vec<String> = (0..10).map(|i| format!("f{i}.html")).collect();
        assert_eq!(
            edge_rels(changed, vec![".purge".into()]),
            (
                vec!["f0.html".into(), "f5.html".into(), "f9.html".into()],
                true
            )
        );
        assert_eq!(
            edge_rels(Vec::new(), vec!["b/.purge".into(), ".purge".into()]),
            (vec![".purge".into(), "b/.purge".into()], false)
        );
    }

    #[test]
    fn a_stale_path_says_what_likely_went_wrong() {
        let t = edge::Target {
            path: "/news/a.html".into(),
            s3_etag: "new".into(),
        };
        let sent = vec!["/News/*".to_owned()];
        let line = stale_line(&t, 200, Some("\"old\""), &sent, "/");
        assert!(
            line.contains("never in the invalidation (sent: /News/*)"),
            "{line}"
        );
        assert!(line.contains("HTTP 200 with ETag \"old\""), "{line}");
        let sent = vec!["/news/*".to_owned()];
        let line = stale_line(&t, 404, None, &sent, "/www/");
        assert!(
            line.contains("no object at /news/a.html: check path_prefix \"/www/\""),
            "{line}"
        );
        let line = stale_line(&t, 200, Some("W/\"new\""), &sent, "/");
        assert!(line.contains("compressed copy"), "{line}");
        let line = stale_line(&t, 200, Some("\"old\""), &sent, "/");
        assert!(line.contains("a cache in front of it"), "{line}");
    }
}
