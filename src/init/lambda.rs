//! The old Lambda, read for `purgewatch init`: its Python code (the deployment zip from
//! GetFunction's `Code.Location`, or a .zip or .py the operator gives) and its environment, so
//! that purgewatch continues the same counts (bucket, limit, day or month key, time zone).
//!
//! The code is untrusted and never run: a small Python tokenizer reads the top-level
//! assignments of the article's kind of code (`COUNT_MAX = 10`, `os.environ.get('X', 'd')`,
//! `+` of strings); any other form is "not understood", with its line, rather than guessed.
//! Nothing is extracted: zip entry names are compared, never used as paths.
//!
//! ## Limits
//! At most 16 MiB of zip and 1,000 entries looked at; a .py is read through `take` to at most
//! 1 MiB inflated, so a zip bomb costs a megabyte, whatever size its header declares.

mod python;

use python::{inside, int, plain, split_top, tokenize, toks, Env, Ev, Scope, Tok, Token, Value};
use std::fmt;
use std::io::{Cursor, Read};

/// Largest zip read: Lambda's direct upload stops at 50 MB; the article's code is 1 KB.
pub const MAX_ZIP: u64 = 16 << 20;
/// Zip entries looked at when no handler names the file.
pub const MAX_ENTRIES: usize = 1000;
/// Largest .py read, inflated.
pub const MAX_PY: u64 = 1 << 20;
/// Inflated bytes read in all while looking for the file that defines `lambda_handler`.
const SEARCH_BUDGET: u64 = 16 << 20;

/// Where a value came from, for the operator to check it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum From {
    Code {
        file: String,
        line: usize,
    },
    Environment {
        variable: String,
    },
    /// Nothing said it: what the old Lambda did when nothing did.
    Assumed {
        reason: String,
    },
}

impl fmt::Display for From {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            From::Code { file, line } => write!(f, "{file} line {line}"),
            From::Environment { variable } => write!(f, "environment {variable}"),
            From::Assumed { reason } => f.write_str(reason),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fact<T> {
    pub value: T,
    pub from: From,
}

fn fact<T>(value: T, from: From) -> Fact<T> {
    Fact { value, from }
}

/// How long one count object lasts: the old key was `strftime('%Y-%m-%d')` or `'%Y-%m'`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CountPeriod {
    Day,
    Month,
}

/// The chosen .py: its name (in the zip, or the file given) and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LambdaCode {
    pub file: String,
    pub text: String,
}

/// What the old Lambda was set to; `None` where neither code nor environment said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub count_bucket: Option<Fact<String>>,
    pub count_max: Option<Fact<u32>>,
    pub target_file: Option<Fact<String>>,
    pub distribution_id: Option<Fact<String>>,
    pub origin_bucket: Option<Fact<String>>,
    pub period: Option<Fact<CountPeriod>>,
    /// The count key: the strftime format and a literal added after it (`%Y-%m-%d.txt`).
    pub key_format: Option<Fact<String>>,
    /// An IANA name: the clock the key's date was read in.
    pub timezone: Fact<String>,
    /// Not understood / bad values, each naming the constant and its line.
    pub problems: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    #[error("{what} is over the limit of {limit} bytes")]
    TooBig { what: String, limit: u64 },
    #[error("the zip cannot be read: {0}")]
    Zip(String),
    #[error("handler {handler:?} is not MODULE.FUNCTION")]
    BadHandler { handler: String },
    /// `entries`: the names looked at; `more`: how many were not.
    #[error("handler {handler:?} is in {module}, not in the zip; it holds: {}", list(entries, *more))]
    HandlerNotFound {
        handler: String,
        module: String,
        entries: Vec<String>,
        more: usize,
    },
    #[error("no .py alone at the top of the zip, none defining lambda_handler; it holds: {}", list(entries, *more))]
    NoPython { entries: Vec<String>, more: usize },
    #[error("several files define lambda_handler ({}): give the handler", candidates.join(", "))]
    Ambiguous { candidates: Vec<String> },
    #[error("{file} is not UTF-8 (line {line}): save it as UTF-8")]
    NotUtf8 { file: String, line: usize },
}

fn list(entries: &[String], more: usize) -> String {
    let all = entries.join(", ");
    if more == 0 {
        all
    } else {
        format!("{all} and {more} more")
    }
}

/// The Lambda's .py: `bytes` is a zip (told by its magic, not its name) or the .py itself;
/// `name_hint` names a .py given directly; `handler` (`lambda_function.lambda_handler`) says
/// which module of a zip runs.
pub fn code_from_bytes(
    bytes: &[u8],
    name_hint: &str,
    handler: Option<&str>,
) -> Result<LambdaCode, LambdaError> {
    // The second magic is an empty archive: a zip, to be reported as holding nothing.
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        return from_zip(bytes, handler);
    }
    let base = name_hint
        .rsplit(['/', '\\'])
        .next()
        .filter(|b| !b.is_empty());
    let file = base.unwrap_or("lambda_function.py").to_owned();
    if bytes.len() as u64 > MAX_PY {
        return Err(too_big(file, MAX_PY));
    }
    let text = utf8(bytes, &file)?;
    Ok(LambdaCode { file, text })
}

fn too_big(what: String, limit: u64) -> LambdaError {
    LambdaError::TooBig { what, limit }
}

fn from_zip(bytes: &[u8], handler: Option<&str>) -> Result<LambdaCode, LambdaError> {
    if bytes.len() as u64 > MAX_ZIP {
        return Err(too_big("the zip".into(), MAX_ZIP));
    }
    let zip = zip::ZipArchive::new(Cursor::new(bytes));
    let mut zip = zip.map_err(|e| LambdaError::Zip(e.to_string()))?;
    // The names looked at, `/`-separated (some Windows tools write `\`); "?" if undecodable.
    let name = |i| zip.name_for_index(i)?.ok().map(|n| n.replace('\\', "/"));
    let count = zip.len().min(MAX_ENTRIES);
    let entries: Vec<String> = (0..count).map(|i| name(i).unwrap_or("?".into())).collect();
    let more = zip.len() - count;
    if let Some(h) = handler {
        let module = match h.rsplit_once('.') {
            Some((m, f)) if !m.is_empty() && !f.is_empty() => m.replace('.', "/"),
            _ => return Err(LambdaError::BadHandler { handler: h.into() }),
        };
        // A module is a file, or a package's __init__.py.
        for file in [format!("{module}.py"), format!("{module}/__init__.py")] {
            let listed = entries.iter().position(|n| *n == file);
            if let Some(i) = zip.index_for_name(&file).or(listed) {
                return read_entry(&mut zip, i, &file);
            }
        }
        let (handler, module) = (h.into(), format!("{module}.py"));
        return Err(LambdaError::HandlerNotFound {
            handler,
            module,
            entries,
            more,
        });
    }
    let mut py: Vec<usize> = (0..count)
        .filter(|&i| entries[i].ends_with(".py"))
        .collect();
    // Shallow first (a stable sort): the handler is at the top, vendored libraries below it.
    py.sort_by_key(|&i| entries[i].matches('/').count());
    if py.iter().filter(|&&i| !entries[i].contains('/')).count() == 1 {
        return read_entry(&mut zip, py[0], &entries[py[0]]);
    }
    let (mut found, mut budget) = (Vec::new(), SEARCH_BUDGET);
    for i in py {
        // A file that cannot be read (a bomb, not UTF-8) is not the handler: look on.
        if let Ok(code) = read_entry(&mut zip, i, &entries[i]) {
            budget = budget.saturating_sub(code.text.len() as u64);
            found.extend(defines_handler(&code.text).then_some(code));
        }
        if budget == 0 {
            break;
        }
    }
    let candidates = found.iter().map(|c| c.file.clone()).collect();
    match found.pop() {
        Some(code) if found.is_empty() => Ok(code),
        Some(_) => Err(LambdaError::Ambiguous { candidates }),
        None => Err(LambdaError::NoPython { entries, more }),
    }
}

type Archive<'a> = zip::ZipArchive<Cursor<&'a [u8]>>;

fn read_entry(zip: &mut Archive, i: usize, file: &str) -> Result<LambdaCode, LambdaError> {
    let broken = |e: &dyn fmt::Display| LambdaError::Zip(format!("{file}: {e}"));
    let entry = zip.by_index(i).map_err(|e| broken(&e))?;
    let declared = entry.size();
    // The declared size may lie: the reader stops one byte past the limit whatever it says.
    let mut bytes = Vec::new();
    if declared <= MAX_PY {
        let read = entry.take(MAX_PY + 1).read_to_end(&mut bytes);
        read.map_err(|e| broken(&e))?;
    }
    if declared > MAX_PY || bytes.len() as u64 > MAX_PY {
        return Err(too_big(format!("{file} (inflated)"), MAX_PY));
    }
    let text = utf8(&bytes, file)?;
    Ok(LambdaCode {
        file: file.into(),
        text,
    })
}

fn utf8(bytes: &[u8], file: &str) -> Result<String, LambdaError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    std::str::from_utf8(bytes).map(str::to_owned).map_err(|e| {
        let line = 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        LambdaError::NotUtf8 {
            file: file.into(),
            line,
        }
    })
}

fn defines_handler(text: &str) -> bool {
    let def =
        |t: &[&Tok]| matches!(t, [d, h, ..] if d.is_name("def") && h.is_name("lambda_handler"));
    tokenize(text)
        .iter()
        .any(|l| l.indent == 0 && def(&toks(&l.tokens)))
}

// ---- The constants ----------------------------------------------------------------------------

/// What `code` and `env` (`Configuration.Environment.Variables`) say the old Lambda was set to.
pub fn facts(code: &LambdaCode, env: &Env) -> Facts {
    let lines = tokenize(&code.text);
    let scope = python::top_level(&lines, env);
    let mut problems = Vec::new();
    let string = |name| {
        constant(name, &scope, env, code)?
            .map(|f| text(name, f))
            .transpose()
    };
    let count_bucket = keep(string("COUNT_BUCKET_NAME"), &mut problems);
    let target_file = keep(string("TARGET_FILE"), &mut problems);
    let distribution_id = keep(string("DISTRIBUTION_ID"), &mut problems);
    let origin_bucket = keep(string("ORIGIN_BUCKET_NAME"), &mut problems);
    let max = constant("COUNT_MAX", &scope, env, code).map(|f| f.map(count));
    let count_max = keep(max.and_then(Option::transpose), &mut problems);
    let all: Vec<&Token> = lines.iter().flat_map(|l| &l.tokens).collect();
    let (period, key_format) = period(&all, &code.file).unwrap_or_else(|p| {
        problems.push(format!("the count key's period: {p}"));
        (None, None)
    });
    let timezone = timezone(&all, env, &code.file, &mut problems);
    Facts {
        count_bucket,
        count_max,
        target_file,
        distribution_id,
        origin_bucket,
        period,
        key_format,
        timezone,
        problems,
    }
}

fn keep<T>(r: Result<Option<T>, String>, problems: &mut Vec<String>) -> Option<T> {
    r.unwrap_or_else(|p| {
        problems.push(p);
        None
    })
}

fn at(file: &str, line: usize) -> From {
    let file = file.to_owned();
    From::Code { file, line }
}

fn env_from(variable: &str) -> From {
    let variable = variable.to_owned();
    From::Environment { variable }
}

/// A constant's value. A variable named as the constant overrides the code's value, unless the
/// code itself reads the environment for it: then what it read (another variable, or its
/// default) is what ran.
fn constant(
    name: &str,
    scope: &Scope,
    env: &Env,
    code: &LambdaCode,
) -> Result<Option<Fact<Value>>, String> {
    let from_code = |Ev(value, var, _): &Ev, line| {
        let from = var.as_deref().map_or(at(&code.file, line), env_from);
        Ok(Some(fact(value.clone(), from)))
    };
    match (scope.get(name), env.get(name)) {
        (Some((Ok(ev), line)), _) if ev.2 => from_code(ev, *line),
        (_, Some(v)) => Ok(Some(fact(Value::Str(v.clone()), env_from(name)))),
        (Some((Ok(ev), line)), None) => from_code(ev, *line),
        (Some((Err(why), line)), None) => {
            let text = code.text.lines().nth(line - 1).unwrap_or("").trim();
            let from = at(&code.file, *line);
            Err(format!(
                "{name} ({from}: `{text}`) is not understood: {why}"
            ))
        }
        (None, None) => Ok(None),
    }
}

fn text(name: &str, Fact { value, from }: Fact<Value>) -> Result<Fact<String>, String> {
    match value {
        Value::Str(value) => Ok(fact(value, from)),
        Value::Int(n) => Err(format!("{name} ({from}) is the number {n}, not a string")),
    }
}

fn count(Fact { value, from }: Fact<Value>) -> Result<Fact<u32>, String> {
    let env = matches!(from, From::Environment { .. });
    let (n, shown) = match value {
        Value::Int(n) => (u32::try_from(n).ok(), n.to_string()),
        // The environment holds strings: the code converts one (or compares a str, and fails).
        Value::Str(s) if env => (s.trim().parse().ok(), format!("{s:?}")),
        Value::Str(s) => (None, format!("the string {s:?}")),
    };
    let max = u32::MAX;
    let problem = format!("COUNT_MAX ({from}) is {shown}, not a whole number from 0 to {max}");
    n.map(|n| fact(n, from)).ok_or(problem)
}

// ---- The count key's period and time zone -----------------------------------------------------

type Period = (Option<Fact<CountPeriod>>, Option<Fact<String>>);

/// `strftime('%Y-%m-%d')` anywhere in the code; `+ '.txt'` after it is the rest of the key.
fn period(all: &[&Token], file: &str) -> Result<Period, String> {
    let t = toks(all);
    let mut uses = Vec::new(); // (format, key, line)
    for k in 0..t.len() {
        let [s, open, Tok::Str(fmt, _), rest @ ..] = &t[k..] else {
            continue;
        };
        if s.is_name("strftime") && open.is_op("(") {
            let suffix = match rest {
                [c, p, Tok::Str(s, kind), ..] if c.is_op(")") && p.is_op("+") => plain(s, *kind),
                _ => Ok(String::new()),
            };
            uses.push((
                fmt,
                format!("{fmt}{}", suffix.unwrap_or_default()),
                all[k].line,
            ));
        }
    }
    let period = |fmt: &str| match () {
        _ if fmt.contains("%Y-%m-%d") => Some(CountPeriod::Day),
        _ if fmt.contains("%Y-%m") && !fmt.contains("%d") => Some(CountPeriod::Month),
        _ => None,
    };
    let known: Vec<_> = uses
        .iter()
        .filter_map(|u| Some((period(u.0)?, u)))
        .collect();
    let shown = uses.iter().map(|(f, _, l)| format!("{f:?} at line {l}"));
    let shown = shown.collect::<Vec<_>>().join(", ");
    match known.first() {
        Some((p, (_, key, line))) if known.iter().all(|(q, _)| q == p) => {
            let from = at(file, *line);
            Ok((Some(fact(*p, from.clone())), Some(fact(key.clone(), from))))
        }
        Some(_) => Err(format!("strftime formats disagree ({shown})")),
        None if uses.is_empty() => Err("the code calls no strftime('...')".into()),
        None => Err(format!(
            "neither a day ('%Y-%m-%d') nor a month ('%Y-%m') in {shown}"
        )),
    }
}

/// The clock the key's date is read in: a zone the code writes (`ZoneInfo('Asia/Tokyo')`,
/// `pytz.timezone(...)`, `timezone(timedelta(hours=9))`, `timezone.utc`, the hand-made
/// `datetime.now() + timedelta(hours=9)`), else the environment's TZ (a naive now() follows
/// it), else UTC, Lambda's own.
fn timezone(all: &[&Token], env: &Env, file: &str, problems: &mut Vec<String>) -> Fact<String> {
    let t = toks(all);
    let mut zones = Vec::new(); // (zone or why not, line)
    for k in 0..t.len() {
        let now = t[k].is_name("now") || t[k].is_name("utcnow");
        let name = |n: &str| t[k].is_name(n);
        let zone = match &t[k + 1..] {
            [o, c, plus, td, ..]
                if now
                    && o.is_op("(")
                    && c.is_op(")")
                    && plus.is_op("+")
                    && td.is_name("timedelta") =>
            {
                offset(&all[k + 4..])
            }
            // utcnow() is UTC whatever TZ says.
            [o, c, ..] if t[k].is_name("utcnow") && o.is_op("(") && c.is_op(")") => {
                Ok("UTC".into())
            }
            [o, Tok::Str(s, _), ..]
                if o.is_op("(") && (name("ZoneInfo") || name("timezone") || name("gettz")) =>
            {
                Ok(s.clone())
            }
            [o, td, ..] if name("timezone") && o.is_op("(") && td.is_name("timedelta") => {
                offset(&all[k + 2..])
            }
            [dot, Tok::Name(utc), ..]
                if (name("timezone") || name("pytz"))
                    && dot.is_op(".")
                    && utc.eq_ignore_ascii_case("utc") =>
            {
                Ok("UTC".into())
            }
            _ => continue,
        };
        zones.push((zone, all[k].line));
    }
    for (zone, line) in &zones {
        if let Err(why) = zone {
            problems.push(format!("the time zone ({}): {why}", at(file, *line)));
        }
    }
    let mut named = zones
        .iter()
        .filter_map(|(z, line)| Some((z.as_ref().ok()?, *line)));
    if let Some((value, line)) = named.next() {
        if named.any(|(z, _)| z != value) {
            problems.push(format!(
                "the time zone: {value} at line {line}, and others too"
            ));
        }
        return fact(value.clone(), at(file, line));
    }
    let assumed = |reason: &str| From::Assumed {
        reason: reason.into(),
    };
    match env.get("TZ") {
        _ if !zones.is_empty() => fact(
            "UTC".into(),
            assumed("code, whose time zone is not understood (UTC assumed)"),
        ),
        // Lambda's own value is ":UTC"; a POSIX rule (`JST-9`) is no zone name.
        Some(tz) => {
            let name = tz.trim_start_matches(':');
            if !(name.contains('/') || name == "UTC") {
                problems.push(format!(
                    "the time zone: environment TZ={tz} is not Area/City"
                ));
            }
            fact(name.into(), env_from("TZ"))
        }
        None => fact(
            "UTC".into(),
            assumed("datetime.now(), which is UTC on Lambda"),
        ),
    }
}

/// `timedelta(hours=9)` (at `call[0]`) as an IANA name: POSIX signs are inverted, so UTC+9 is
/// `Etc/GMT-9`; only whole hours have such a name.
fn offset(call: &[&Token]) -> Result<String, String> {
    let args = inside(&call[1..], "(", ")").map_or(&[][..], |(inner, _)| inner);
    let mut seconds = 0i64;
    for arg in split_top(args, ",").into_iter().filter(|a| !a.is_empty()) {
        let (unit, sign, n) = match &toks(arg)[..] {
            [Tok::Name(u), eq, Tok::Num(n)] if eq.is_op("=") => (u, 1, n),
            [Tok::Name(u), eq, s, Tok::Num(n)] if eq.is_op("=") && s.is_op("-") => (u, -1, n),
            [Tok::Name(u), eq, s, Tok::Num(n)] if eq.is_op("=") && s.is_op("+") => (u, 1, n),
            _ => return Err("a timedelta(...) not of the form hours=N is not understood".into()),
        };
        let scale = ["seconds", "minutes", "hours"]
            .iter()
            .position(|u| u == unit);
        let not = format!("timedelta({unit}={n}) is not understood");
        let (n, scale) = int(n).zip(scale).ok_or(not)?;
        let part = n.checked_mul(sign * 60i64.pow(scale as u32));
        seconds = part
            .and_then(|p| p.checked_add(seconds))
            .ok_or("the offset is out of range")?;
    }
    match (seconds % 3600, seconds / 3600) {
        (0, 0) => Ok("UTC".into()),
        (0, h @ 1..=14) => Ok(format!("Etc/GMT-{h}")),
        (0, h @ -12..=-1) => Ok(format!("Etc/GMT+{}", -h)),
        (0, h) => Err(format!("an offset of {h} hours does not exist")),
        _ => Err(format!(
            "an offset of {} minutes is not whole hours",
            seconds / 60
        )),
    }
}

#[cfg(test)]
#[path = "lambda_tests.rs"]
mod tests;
