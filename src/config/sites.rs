//! The config file with several sites: `[[site]]` tables, each a tree with its own bucket,
//! distribution and quota, over the file's tables as defaults.
//!
//! Each site is resolved to the single-site layout (its `watch`, `origin` and `cloudfront`
//! merged over the file's `[watch]`, `[origin]`, `[cloudfront]`; its quota's table as
//! `[quota]`; the shared `[state]`, `[aws]`, `[metrics]`, `[notify]` as they are) and validated
//! by the same code as a single-site file, so every rule holds for every site and every error
//! names the key the operator wrote (`site[1].origin.bucket`, `quotas.shop.max`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use toml::{Table, Value};

use super::{deserialize_error, Config, ConfigError, RawConfig};

/// The config file: one site (a file without `[[site]]`, the site `default`) or several.
#[derive(Debug, Clone, PartialEq)]
pub struct Sites {
    pub file: PathBuf,
    /// In the file's order; never empty. `[state]`, `[aws]`, `[metrics]` and `[notify]` are the
    /// file's and the same in each.
    pub sites: Vec<Arc<Config>>,
}

/// The sites running now, for the neighbours that report on them (heartbeat, metrics, alerts);
/// a reload changes it.
#[derive(Clone)]
pub struct Running(Arc<std::sync::RwLock<Vec<Arc<Config>>>>);

impl Running {
    /// Never empty: `sites` holds at least the file's shared tables.
    pub fn new(sites: Vec<Arc<Config>>) -> Running {
        Running(Arc::new(std::sync::RwLock::new(sites)))
    }

    pub fn set(&self, sites: Vec<Arc<Config>>) {
        if !sites.is_empty() {
            *self.0.write().unwrap_or_else(|e| e.into_inner()) = sites;
        }
    }

    pub fn get(&self) -> Vec<Arc<Config>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The first site: the file's shared tables (`[state]`, `[notify]`, …) are in each.
    pub fn first(&self) -> Arc<Config> {
        self.0.read().unwrap_or_else(|e| e.into_inner())[0].clone()
    }
}

/// What a `[[site]]` table may hold.
const SITE_KEYS: &str = "name, root, watch, origin, cloudfront, quota";
/// Tables each site may override; the rest are the process's own (one database, one listener).
const OVERRIDABLE: [&str; 3] = ["watch", "origin", "cloudfront"];

impl Sites {
    /// Reads and validates `file`; nothing is touched beyond reading it and stat-ing the roots.
    pub fn load(file: &Path) -> Result<Sites, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_owned(),
            source,
        })?;
        Sites::parse(file, &text)
    }

    pub fn parse(file: &Path, text: &str) -> Result<Sites, ConfigError> {
        let mut top: Table = text.parse().map_err(|e: toml::de::Error| {
            let at = e
                .span()
                .map(|s| format!(" (line {})", text[..s.start].matches('\n').count() + 1))
                .unwrap_or_default();
            ConfigError::Syntax {
                file: file.to_owned(),
                message: format!("{}{at}", e.message().trim()),
            }
        })?;
        let Some(list) = top.remove("site") else {
            if top.contains_key("quotas") {
                return Err(invalid(
                    file,
                    "quotas",
                    "[quotas.NAME] tables are for [[site]] files: without sites, use [quota]"
                        .into(),
                ));
            }
            return Ok(Sites {
                file: file.to_owned(),
                sites: vec![Arc::new(Config::parse(file, text)?)],
            });
        };
        let Value::Array(list) = list else {
            return Err(invalid(
                file,
                "site",
                "write each site as a [[site]] table".into(),
            ));
        };
        if list.is_empty() {
            return Err(invalid(file, "site", "needs at least one [[site]]".into()));
        }
        let quotas = match top.remove("quotas") {
            None => Table::new(),
            Some(Value::Table(t)) => t,
            Some(_) => {
                return Err(invalid(
                    file,
                    "quotas",
                    "write each quota as a [quotas.NAME] table".into(),
                ))
            }
        };
        if let Some(Value::Table(w)) = top.get("watch") {
            if w.contains_key("root") {
                return Err(invalid(
                    file,
                    "watch.root",
                    "with [[site]] tables each site names its own root (site.root)".into(),
                ));
            }
        }
        let mut sites: Vec<Arc<Config>> = Vec::with_capacity(list.len());
        for (i, entry) in list.into_iter().enumerate() {
            let at = format!("site[{i}]");
            let Value::Table(site) = entry else {
                return Err(invalid(file, &at, "must be a table".into()));
            };
            let cfg = resolve(file, &top, &quotas, &at, site)?;
            if let Some(j) = sites.iter().position(|s| s.site == cfg.site) {
                return Err(invalid(
                    file,
                    &format!("{at}.name"),
                    format!("{:?} is already the name of site[{j}]", cfg.site),
                ));
            }
            sites.push(Arc::new(cfg));
        }
        check_roots(file, &sites)?;
        check_count_objects(file, &sites)?;
        Ok(Sites {
            file: file.to_owned(),
            sites,
        })
    }

    /// A single site, as the file without `[[site]]` is.
    pub fn one(cfg: Config) -> Sites {
        Sites {
            file: cfg.file.clone(),
            sites: vec![Arc::new(cfg)],
        }
    }

    /// The site named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Config>> {
        self.sites.iter().find(|s| s.site == name)
    }

    /// The tables every site shares (`[state]`, `[aws]`, `[metrics]`, `[notify]`): the first's.
    pub fn shared(&self) -> &Config {
        &self.sites[0]
    }

    /// Whether the file is the single-site layout of before (one site named `default`).
    pub fn is_single(&self) -> bool {
        self.sites.len() == 1 && self.sites[0].site == "default"
    }

    /// The sites a `--site` option selects: that one, or every site when `None`.
    pub fn select(&self, name: Option<&str>) -> Result<Vec<Arc<Config>>, String> {
        match name {
            None => Ok(self.sites.clone()),
            Some(n) => self.get(n).map(|s| vec![s.clone()]).ok_or_else(|| {
                let names: Vec<&str> = self.sites.iter().map(|s| s.site.as_str()).collect();
                format!(
                    "no site {n:?} in {} (sites: {})",
                    self.file.display(),
                    names.join(", ")
                )
            }),
        }
    }
}

fn invalid(file: &Path, key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        file: file.to_owned(),
        key: key.to_owned(),
        message,
    }
}

/// One `[[site]]` table as a validated [`Config`].
fn resolve(
    file: &Path,
    top: &Table,
    quotas: &Table,
    at: &str,
    mut site: Table,
) -> Result<Config, ConfigError> {
    for k in site.keys() {
        if !SITE_KEYS.split(", ").any(|known| known == k) {
            return Err(invalid(
                file,
                &format!("{at}.{k}"),
                format!("unknown key (a site has {SITE_KEYS}; [state], [aws], [metrics] and [notify] are the file's)"),
            ));
        }
    }
    let name = match site.remove("name") {
        Some(Value::String(n)) => n,
        Some(_) => {
            return Err(invalid(
                file,
                &format!("{at}.name"),
                "must be a string".into(),
            ))
        }
        None => {
            return Err(invalid(
                file,
                &format!("{at}.name"),
                "required key is missing".into(),
            ))
        }
    };
    let name_ok = !name.is_empty()
        && name.len() <= 40
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !name_ok {
        return Err(invalid(
            file,
            &format!("{at}.name"),
            format!("{name:?}: 1-40 characters of a-z, 0-9 and '-'"),
        ));
    }
    let quota = match site.remove("quota") {
        None => "default".to_owned(),
        Some(Value::String(q)) => q,
        Some(_) => {
            return Err(invalid(
                file,
                &format!("{at}.quota"),
                "must be the name of a [quotas.NAME] table".into(),
            ))
        }
    };
    let quota_table = match (quotas.get(&quota), top.get("quota")) {
        (Some(Value::Table(t)), _) => t.clone(),
        (Some(_), _) => {
            return Err(invalid(
                file,
                &format!("quotas.{quota}"),
                "must be a table".into(),
            ))
        }
        (None, Some(Value::Table(t))) if quota == "default" => t.clone(),
        (None, _) => {
            let names: Vec<&str> = quotas.keys().map(String::as_str).collect();
            return Err(invalid(
                file,
                &format!("{at}.quota"),
                format!(
                    "{quota:?} names no [quotas.{quota}] table (quotas: {})",
                    if names.is_empty() {
                        "none".to_owned()
                    } else {
                        names.join(", ")
                    }
                ),
            ));
        }
    };

    // The single-site layout: the site's tables over the file's.
    let mut one = Table::new();
    for (k, v) in top {
        if k != "quota" {
            one.insert(k.clone(), v.clone());
        }
    }
    one.insert("quota".into(), Value::Table(quota_table));
    let mut own: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in OVERRIDABLE {
        let mut merged = match top.get(t) {
            Some(Value::Table(base)) => base.clone(),
            _ => Table::new(),
        };
        match site.remove(t) {
            None => {}
            Some(Value::Table(mine)) => {
                own.insert(t.into(), mine.keys().cloned().collect());
                merged.extend(mine);
            }
            Some(_) => {
                return Err(invalid(
                    file,
                    &format!("{at}.{t}"),
                    "must be a table, such as { bucket = \"...\" }".into(),
                ))
            }
        }
        one.insert(t.into(), Value::Table(merged));
    }
    match site.remove("root") {
        Some(root @ Value::String(_)) => {
            if let Some(Value::Table(w)) = one.get_mut("watch") {
                w.insert("root".into(), root);
            }
            own.entry("watch".into()).or_default().push("root".into());
        }
        Some(_) => {
            return Err(invalid(
                file,
                &format!("{at}.root"),
                "must be a path".into(),
            ))
        }
        None => {
            return Err(invalid(
                file,
                &format!("{at}.root"),
                "required key is missing".into(),
            ))
        }
    }

    // Errors name the key where the operator wrote it.
    let name_key = |key: &str| -> String {
        let (table, rest) = key.split_once('.').unwrap_or((key, ""));
        match table {
            "quota" => format!("quotas.{quota}.{rest}"),
            "watch" if rest == "root" => format!("{at}.root"),
            t if own
                .get(t)
                .is_some_and(|keys| keys.iter().any(|k| k == rest)) =>
            {
                format!("{at}.{key}")
            }
            // Absent from both: a required key the site must give.
            t if OVERRIDABLE.contains(&t) && !top_has(top, t, rest) => format!("{at}.{key}"),
            _ => key.to_owned(),
        }
    };
    let raw: RawConfig = serde_path_to_error::deserialize(Value::Table(one))
        .map_err(|e| deserialize_error(file, None, e, &name_key))?;
    Config::build(file, raw, &name, &quota, &name_key, false)
}

fn top_has(top: &Table, table: &str, key: &str) -> bool {
    matches!(top.get(table), Some(Value::Table(t)) if t.contains_key(key))
}

/// A marker belongs to exactly one site: no root may hold another.
fn check_roots(file: &Path, sites: &[Arc<Config>]) -> Result<(), ConfigError> {
    let real: Vec<PathBuf> = sites
        .iter()
        .map(|s| std::fs::canonicalize(&s.watch.root).unwrap_or_else(|_| s.watch.root.clone()))
        .collect();
    for (i, a) in real.iter().enumerate() {
        for (j, b) in real.iter().enumerate() {
            if i != j && b.starts_with(a) && (i < j || a != b) {
                return Err(invalid(
                    file,
                    &format!("site[{j}].root"),
                    format!(
                        "site {:?}'s root {} is inside site {:?}'s root {}: a marker there would belong to both",
                        sites[j].site,
                        sites[j].watch.root.display(),
                        sites[i].site,
                        sites[i].watch.root.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Two quotas counting in one count object would count each other's purges.
fn check_count_objects(file: &Path, sites: &[Arc<Config>]) -> Result<(), ConfigError> {
    let mut seen: BTreeMap<(String, String), String> = BTreeMap::new();
    for s in sites {
        let q = &s.quota;
        let Some(bucket) = &q.count_bucket else {
            continue;
        };
        let at = (bucket.clone(), q.key_prefix.clone());
        match seen.get(&at) {
            Some(other) if *other != q.name => {
                return Err(invalid(
                    file,
                    &format!("quotas.{}.key_prefix", q.name),
                    format!(
                        "quotas {:?} and {:?} both count in s3://{bucket}/{}<period>.txt: give each its own key_prefix",
                        other, q.name, q.key_prefix
                    ),
                ))
            }
            _ => {
                seen.insert(at, q.name.clone());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Sites, ConfigError> {
        Sites::parse(Path::new("/etc/pw.toml"), text)
    }

    fn two(dir: &Path) -> String {
        let (a, b) = (dir.join("blog"), dir.join("shop"));
        std::fs::create_dir_all(&a).expect("mkdir");
        std::fs::create_dir_all(&b).expect("mkdir");
        format!(
            r#"
[origin]
wait_timeout = "5m"

[[site]]
name = "blog"
root = "{}"
origin = {{ bucket = "blog-origin" }}
cloudfront = {{ distribution_id = "E2BLOG", paths = "changed" }}
quota = "blog"

[[site]]
name = "shop"
root = "{}"
origin = {{ bucket = "shop-origin", wait_timeout = "1m" }}
cloudfront = {{ distribution_id = "E2SHOP" }}
quota = "shared"

[quotas.blog]
max = 10
count_bucket = "limited-cf-purge-by-file-countup"

[quotas.shared]
max = 20
count_bucket = "limited-cf-purge-by-file-countup"
key_prefix = "shop/"
"#,
            a.display(),
            b.display()
        )
    }

    #[test]
    fn a_file_without_sites_is_the_site_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "[watch]\nroot = \"{}\"\n[origin]\nbucket = \"abc\"\n[quota]\nmax = 3\n[cloudfront]\ndistribution_id = \"E\"\n",
            dir.path().display()
        );
        let s = parse(&text).expect("valid");
        assert!(s.is_single());
        assert_eq!(s.sites[0].site, "default");
        assert_eq!(s.sites[0].quota.name, "default");
        assert_eq!(
            *s.sites[0],
            Config::parse(Path::new("/etc/pw.toml"), &text).expect("ok")
        );
    }

    #[test]
    fn sites_take_their_tables_over_the_files_and_their_quota_by_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = parse(&two(dir.path())).expect("valid");
        let (blog, shop) = (&s.sites[0], &s.sites[1]);
        assert_eq!((blog.site.as_str(), shop.site.as_str()), ("blog", "shop"));
        assert_eq!(blog.origin.bucket, "blog-origin");
        assert_eq!(
            blog.origin.wait_timeout.as_secs(),
            300,
            "the file's [origin]"
        );
        assert_eq!(shop.origin.wait_timeout.as_secs(), 60, "the site's own");
        assert_eq!(blog.cloudfront.paths, super::super::Paths::Changed);
        assert_eq!((blog.quota.name.as_str(), blog.quota.max), ("blog", 10));
        assert_eq!((shop.quota.name.as_str(), shop.quota.max), ("shared", 20));
        assert_eq!(shop.quota.key_prefix, "shop/");
        assert_eq!(s.select(Some("shop")).expect("known")[0].site, "shop");
        let e = s.select(Some("news")).unwrap_err();
        assert!(e.contains("blog, shop"), "{e}");
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn each_config_error_names_the_key_where_it_was_written() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = two(dir.path());
        for (from, to, key) in [
            (
                "bucket = \"blog-origin\"",
                "bucket = \"Blog\"",
                "site[0].origin.bucket",
            ),
            (
                "origin = { bucket = \"shop-origin\", wait_timeout = \"1m\" }",
                "",
                "site[1].origin.bucket",
            ),
            ("max = 20", "max = 0", "quotas.shared.max"),
            ("quota = \"shared\"", "quota = \"sharde\"", "site[1].quota"),
            ("name = \"shop\"", "name = \"blog\"", "site[1].name"),
            ("name = \"shop\"", "name = \"Shop!\"", "site[1].name"),
            (
                "name = \"shop\"",
                "name = \"shop\"\nstate = {}",
                "site[1].state",
            ),
            (
                "wait_timeout = \"5m\"",
                "wait_timeout = \"soon\"",
                "origin.wait_timeout",
            ),
            ("key_prefix = \"shop/\"", "", "quotas.shared.key_prefix"),
        ] {
            assert!(good.contains(from), "{from}");
            let e = error(&good.replacen(from, to, 1));
            assert!(
                e.contains(&format!("key `{key}`")) && e.contains("/etc/pw.toml"),
                "{from} → {to}: {e}"
            );
        }
    }

    #[test]
    fn overlapping_roots_are_an_error_naming_both_sites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = two(dir.path());
        let inner = dir.path().join("blog").join("shop");
        std::fs::create_dir_all(&inner).expect("mkdir");
        let text = good.replace(
            &format!("root = \"{}\"", dir.path().join("shop").display()),
            &format!("root = \"{}\"", inner.display()),
        );
        let e = error(&text);
        assert!(
            e.contains("key `site[1].root`") && e.contains("\"shop\"") && e.contains("\"blog\""),
            "{e}"
        );
        let same = good.replace(
            &format!("root = \"{}\"", dir.path().join("shop").display()),
            &format!("root = \"{}\"", dir.path().join("blog").display()),
        );
        assert!(error(&same).contains("key `site[1].root`"));
    }

    #[test]
    fn a_root_in_the_files_watch_table_is_refused_with_sites() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = error(&format!("[watch]\nroot = \"/tmp\"\n{}", two(dir.path())));
        assert!(e.contains("key `watch.root`"), "{e}");
    }
}
