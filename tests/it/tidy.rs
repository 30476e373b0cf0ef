//! The map kept true (rust-analyzer keeps `xtask tidy` for this): no source file over 700
//! lines, SQL only in `src/store/`, and no module that uses one ARCHITECTURE.md places above
//! it. The layers are read from ARCHITECTURE.md itself, so the map and the check are one list.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 700;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, sorted.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read src") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The top-level module a file of `src/` belongs to (`src/store/mod.rs` → `store`).
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(root().join("src")).expect("under src");
    let first = rel.components().next().expect("a component");
    first
        .as_os_str()
        .to_string_lossy()
        .trim_end_matches(".rs")
        .to_owned()
}

/// The code of a file without its `#[cfg(test)]` modules (tests may reach anywhere) and
/// without comments.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut skip_from: Option<usize> = None;
    let mut depth = 0usize;
    let mut pending_cfg_test = false;
    for line in text.lines() {
        let t = line.trim_start();
        if skip_from.is_some() {
            depth += line.matches('{').count();
            depth = depth.saturating_sub(line.matches('}').count());
            if depth == 0 {
                skip_from = None;
            }
            continue;
        }
        if t.starts_with("#[cfg(test)]") {
            pending_cfg_test = true;
            continue;
        }
        if pending_cfg_test && (t.starts_with("mod ") || t.starts_with("pub mod ")) {
            pending_cfg_test = false;
            if t.ends_with(';') {
                continue;
            }
            skip_from = Some(0);
            depth = line.matches('{').count() - line.matches('}').count();
            continue;
        }
        pending_cfg_test = false;
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// The layers of ARCHITECTURE.md: module → its line, counted from the top.
fn layers() -> HashMap<String, usize> {
    let text = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let start = text
        .find("```layers")
        .expect("ARCHITECTURE.md has a ```layers block");
    let block = &text[start + "```layers".len()..];
    let block = &block[..block.find("```").expect("the block ends")];
    let mut rank = HashMap::new();
    for (i, line) in block.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        for m in line.split_whitespace() {
            assert!(
                rank.insert(m.to_owned(), i).is_none(),
                "{m} twice in the layers"
            );
        }
    }
    rank
}

/// `crate::NAME` paths in `code`, and the `use crate::{a, b::c}` groups.
fn uses(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = &group[..group.find('}').unwrap_or(group.len())];
            for part in inner.split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

#[test]
fn no_source_file_is_over_700_lines() {
    let long: Vec<String> = sources(&root().join("src"))
        .into_iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(&f).expect("read").lines().count();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "over {MAX_LINES} lines: {long:#?}");
}

#[test]
fn sql_is_only_in_store() {
    let statement = [
        "\"SELECT ",
        "\"INSERT ",
        "\"UPDATE ",
        "\"DELETE ",
        "\"CREATE ",
        "\"PRAGMA ",
    ];
    let call = [
        ".prepare(",
        ".prepare_cached(",
        ".execute(",
        ".execute_batch(",
        ".query_row(",
    ];
    let mut found = Vec::new();
    for f in sources(&root().join("src")) {
        if module_of(&f) == "store" {
            continue;
        }
        let text = std::fs::read_to_string(&f).expect("read");
        for (n, line) in code(&text).lines().enumerate() {
            let l = line.trim_start();
            if statement.iter().any(|s| l.contains(s)) || call.iter().any(|c| l.contains(c)) {
                found.push(format!("{}: {}", f.display(), l.trim()));
                let _ = n;
            }
        }
    }
    assert!(found.is_empty(), "SQL outside src/store/: {found:#?}");
}

#[test]
fn no_module_uses_one_placed_above_it() {
    let rank = layers();
    let mut wrong = Vec::new();
    let mut unplaced = Vec::new();
    for f in sources(&root().join("src")) {
        let m = module_of(&f);
        if m == "lib" || m == "main" {
            continue;
        }
        let Some(&mine) = rank.get(&m) else {
            unplaced.push(m);
            continue;
        };
        let text = std::fs::read_to_string(&f).expect("read");
        for u in uses(&code(&text)) {
            if u == m {
                continue;
            }
            match rank.get(&u) {
                Some(&theirs) if theirs > mine => {}
                Some(_) => wrong.push(format!("{} ({m}) uses {u}", f.display())),
                None => unplaced.push(u),
            }
        }
    }
    unplaced.sort();
    unplaced.dedup();
    wrong.sort();
    wrong.dedup();
    assert!(
        unplaced.is_empty(),
        "modules missing from ARCHITECTURE.md's layers: {unplaced:?}"
    );
    assert!(
        wrong.is_empty(),
        "uses of a module at or above the user's layer: {wrong:#?}"
    );
}
