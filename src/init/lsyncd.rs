//! Finds the S3 bucket and prefix each `sync{}` of an lsyncd config mirrors into, for
//! `purgewatch init`.
//!
//! lsyncd's config is a Lua program (lsyncd 2.2.3, Lua 5.x): targets are built from locals,
//! functions and `..`, and the `aws s3 sync` line often lives inside an `action` function. So
//! the file is run, not pattern-matched, in a sandboxed Lua 5.4 where lsyncd's globals are
//! stand-ins that record instead of acting (the prelude below).
//!
//! ## Sandbox
//! The file is untrusted. Only the table, string, math and utf8 libraries, and an `os` holding
//! `getenv` (answered by the caller), `time`, `date` and `clock`; no io, no loading of code
//! (`load`, `dofile`, `loadfile`, `require` are gone, and chunks are text-only, since crafted
//! bytecode can corrupt the VM); nothing is spawned or written. Bounded by [`MEMORY_LIMIT`],
//! [`INSTRUCTION_BUDGET`] (the config's own `pcall` cannot swallow the budget error) and a
//! file of at most [`MAX_FILE`], and [`TIME_LIMIT`]. Lua runs message handlers and finalizers with hooks off, and C
//! functions between hooks: so `xpcall` skips the config's handler once the budget is spent,
//! `__gc` is refused, and `string.find`/`match`/`gmatch`/`gsub` refuse a search whose
//! backtracking could run for minutes.
//!
//! ## Untrusted output
//! Everything in a [`SyncEntry`] but the bucket name (checked to `[A-Za-z0-9._-]`) and the Lua
//! messages in [`LsyncdError::Lua`] come from the file: data, to be escaped before printing.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mlua::{ChunkMode, HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState};

/// A bigger "config" is not a config: refused unread.
pub const MAX_FILE: u64 = 1 << 20;
/// Lua's own allocations; a real config needs well under 1 MiB.
pub const MEMORY_LIMIT: usize = 64 << 20;
/// Lua VM instructions for the whole evaluation, actions included: under a second, and
/// thousands of times what a real config needs.
pub const INSTRUCTION_BUDGET: u64 = 50_000_000;
/// Wall-clock bound for what the instruction count misses: C functions called in a loop, each
/// bounded by the memory limit but costly together (`table.insert(t, 1, x)` on a long `t`).
pub const TIME_LIMIT: Duration = Duration::from_secs(10);
const HOOK_EVERY: u32 = 1_000;
/// Longest Lua message or reason kept: they quote the untrusted file.
const MESSAGE_MAX: usize = 300;
/// The name of the fake changed file handed to actions: stripped from URLs built from it.
const MARKER: &str = ".purge";

/// Where `aws s3 sync` puts the tree: `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    /// `""` for the bucket's root, else a folder ending in `/` (`www/`), as `aws s3 sync`
    /// treats `s3://bucket/www` and `s3://bucket/www/` alike.
    pub prefix: String,
}

/// How the URL was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The sync's `target` is an `s3://` URL (ls3.lua-style layers).
    Target,
    /// Its `action`/`init` spawned a command holding an `s3://` URL.
    Command,
}

/// One `sync{}` call, after lsyncd's merge of its layers.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncEntry {
    /// 1-based order of the `sync{}` call.
    pub index: usize,
    pub source: Option<String>,
    pub target: Option<String>,
    /// The merged `delay` (settings' `delay` overrides, as in lsyncd), if a number.
    pub delay: Option<f64>,
    pub s3: Option<(S3Url, Via)>,
    /// Why there is no S3 URL; set iff `s3` is None.
    pub why_not: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LsyncdError {
    #[error("cannot read the lsyncd config {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("the lsyncd config {} is {size} bytes, over the {MAX_FILE}-byte limit", path.display())]
    TooBig { path: PathBuf, size: u64 },
    /// A syntax error, an error at the top level, or a sandbox limit reached.
    #[error("the lsyncd config {} failed: {message}", path.display())]
    Lua { path: PathBuf, message: String },
}

impl S3Url {
    /// `s3://bucket[/key...]`; None without a plausible bucket name.
    pub fn parse(url: &str) -> Option<S3Url> {
        let rest = url.strip_prefix("s3://")?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        let name_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
        if bucket.is_empty() || !bucket.chars().all(name_char) {
            return None;
        }
        let key = key.trim_end_matches('/');
        let prefix = if key.is_empty() {
            String::new()
        } else {
            format!("{key}/")
        };
        Some(S3Url {
            bucket: bucket.to_owned(),
            prefix,
        })
    }
}

/// Reads and evaluates the config at `path`; `env` answers `os.getenv`.
pub fn read(
    path: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<SyncEntry>, LsyncdError> {
    let read_err = |source| LsyncdError::Read {
        path: path.to_owned(),
        source,
    };
    // Checked before opening: opening a FIFO would block.
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if !meta.is_file() {
        return Err(read_err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        )));
    }
    if meta.len() > MAX_FILE {
        return Err(LsyncdError::TooBig {
            path: path.to_owned(),
            size: meta.len(),
        });
    }
    let mut bytes = Vec::new();
    let file = File::open(path).map_err(read_err)?;
    // The file may have grown since the stat.
    file.take(MAX_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE {
        return Err(LsyncdError::TooBig {
            path: path.to_owned(),
            size: bytes.len() as u64,
        });
    }
    // Lua reads bytes; only a non-UTF-8 string literal would change, which no path needs.
    evaluate(
        &path.display().to_string(),
        &String::from_utf8_lossy(&bytes),
        env,
    )
}

/// Evaluates config text; `name` names it in Lua's messages and in errors.
pub fn evaluate(
    name: &str,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Vec<SyncEntry>, LsyncdError> {
    evaluate_within(name, source, env, TIME_LIMIT)
}

fn evaluate_within(
    name: &str,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
    time_limit: Duration,
) -> Result<Vec<SyncEntry>, LsyncdError> {
    let spent = Rc::new(Cell::new(0u64));
    run(name, source, env, &spent, Instant::now() + time_limit).map_err(|e| LsyncdError::Lua {
        path: PathBuf::from(name),
        message: describe(&e, spent.get() > INSTRUCTION_BUDGET),
    })
}

fn run(
    name: &str,
    source: &str,
    env: &dyn Fn(&str) -> Option<String>,
    spent: &Rc<Cell<u64>>,
    deadline: Instant,
) -> mlua::Result<Vec<SyncEntry>> {
    let libs = StdLib::TABLE | StdLib::STRING | StdLib::MATH | StdLib::UTF8 | StdLib::OS;
    let lua = Lua::new_with(libs, LuaOptions::default())?;
    lua.set_memory_limit(MEMORY_LIMIT)?;
    let counter = Rc::clone(spent);
    lua.set_hook(
        HookTriggers::new().every_nth_instruction(HOOK_EVERY),
        move |_, _| {
            counter.set(counter.get() + u64::from(HOOK_EVERY));
            if Instant::now() > deadline {
                // Spent, for `exhausted` and the message alike.
                counter.set(INSTRUCTION_BUDGET + 1);
            }
            if counter.get() > INSTRUCTION_BUDGET {
                return Err(mlua::Error::runtime("instruction budget exceeded"));
            }
            Ok(VmState::Continue)
        },
    )?;
    let exhausted = {
        let spent = Rc::clone(spent);
        lua.create_function(move |_, ()| Ok(spent.get() > INSTRUCTION_BUDGET))?
    };
    lua.scope(|scope| {
        let getenv =
            scope.create_function(|_, var: mlua::String| Ok(env(&var.to_string_lossy())))?;
        let prelude = lua
            .load(PRELUDE)
            .set_name("=purgewatch")
            .set_mode(ChunkMode::Text);
        let private: Table = prelude.call((getenv, exhausted))?;
        // "@" so Lua's messages say `name:line:` rather than `[string "name"]:line:`.
        lua.load(source)
            .set_name(format!("@{name}"))
            .set_mode(ChunkMode::Text)
            .exec()?;

        let probe: mlua::Function = private.get("probe")?;
        let syncs: Table = private.get("syncs")?;
        let syncs = syncs
            .sequence_values::<Table>()
            .collect::<mlua::Result<Vec<_>>>()?;
        let mut entries = Vec::with_capacity(syncs.len());
        for (i, config) in syncs.iter().enumerate() {
            type Calls = Vec<Vec<mlua::String>>;
            let (calls, error, layer): (Calls, Option<mlua::String>, Option<String>) =
                probe.call(config)?;
            // The probe's pcall caught it; the budget is for the whole file.
            if spent.get() > INSTRUCTION_BUDGET {
                return Err(mlua::Error::runtime("instruction budget exceeded"));
            }
            let text = |v: Value| match v {
                Value::String(s) => Some(s.to_string_lossy()),
                _ => None,
            };
            let target = text(config.get("target")?);
            let calls: Vec<Vec<String>> = calls
                .iter()
                .map(|call| call.iter().map(|a| a.to_string_lossy()).collect())
                .collect();
            let error = error.map(|e| e.to_string_lossy());
            let found = decide(
                target.as_deref(),
                &calls,
                error.as_deref(),
                layer.as_deref(),
            );
            let delay = match config.get::<Value>("delay")? {
                Value::Integer(n) => Some(n as f64),
                Value::Number(n) => Some(n),
                _ => None,
            };
            let (s3, why_not) = match found {
                Ok(found) => (Some(found), None),
                Err(why) => (None, Some(clip(&why))),
            };
            entries.push(SyncEntry {
                index: i + 1,
                source: text(config.get("source")?),
                target,
                delay,
                s3,
                why_not,
            });
        }
        Ok(entries)
    })
}

/// The S3 URL of one sync, or why there is none. `calls` are the argument lists that its
/// `init` and `action` passed to `spawn`/`spawnShell`, and its string actions; `error` the
/// first error they raised; `layer` the built-in layer (`default.rsync`, …) whose action it has.
fn decide(
    target: Option<&str>,
    calls: &[Vec<String>],
    error: Option<&str>,
    layer: Option<&str>,
) -> Result<(S3Url, Via), String> {
    if let Some(t) = target.filter(|t| t.starts_with("s3://")) {
        return S3Url::parse(t)
            .map(|u| (u, Via::Target))
            .ok_or_else(|| format!("target {t:?} has no valid bucket name"));
    }
    // The first command naming S3; its last URL, the destination of `aws s3 sync|cp SRC DST`.
    let url = calls.iter().find_map(|call| {
        call.iter()
            .flat_map(|arg| arg.split_whitespace())
            .map(|t| t.trim_matches(|c| matches!(c, '"' | '\'' | '`' | ';' | '(' | ')' | ',')))
            .rfind(|t| t.starts_with("s3://"))
    });
    if let Some(url) = url {
        // A per-file `aws s3 cp ... s3://b/p/<path>` named the fake marker: keep its folder.
        let url = url
            .strip_suffix(MARKER)
            .filter(|u| u.ends_with('/'))
            .unwrap_or(url);
        return S3Url::parse(url)
            .map(|u| (u, Via::Command))
            .ok_or_else(|| format!("its action spawns {url:?}, which has no valid bucket name"));
    }
    if let Some(e) = error {
        return Err(format!("its action failed before naming an s3:// URL: {e}"));
    }
    match target {
        None => Err("no target and its action spawns no s3:// URL".to_owned()),
        Some(t) if is_host_path(t) => Err(format!("target {t:?} is a host:path for rsync")),
        Some(t) => match layer {
            Some(l) => Err(format!("target {t:?} is a local folder for {l}, not S3")),
            None => Err(format!(
                "target {t:?} is not an s3:// URL and its action spawns none"
            )),
        },
    }
}

/// rsync's `host:path` (and `user@host:path`): a colon before any slash.
fn is_host_path(t: &str) -> bool {
    t.split_once(':')
        .is_some_and(|(host, _)| !host.is_empty() && !host.contains('/'))
}

/// A Lua error as one short line of data.
fn describe(e: &mlua::Error, exhausted: bool) -> String {
    if exhausted {
        return format!(
            "it ran past its budget of {INSTRUCTION_BUDGET} Lua instructions or {} s: \
             an endless loop?",
            TIME_LIMIT.as_secs()
        );
    }
    let message = match e {
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::RuntimeError(m) => m.clone(),
        mlua::Error::MemoryError(_) => {
            format!(
                "it used more than the {} MiB memory limit",
                MEMORY_LIMIT >> 20
            )
        }
        mlua::Error::CallbackError { cause, .. } => return describe(cause, false),
        other => other.to_string(),
    };
    let message = message
        .split("\nstack traceback:")
        .next()
        .unwrap_or_default();
    clip(message.trim())
}

fn clip(s: &str) -> String {
    match s.char_indices().nth(MESSAGE_MAX) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

/// Trusted Lua run before the config, with (getenv, exhausted): lsyncd's globals as recorders,
/// the sandbox's trimming, and `probe`, which runs one merged sync's prepare, init and action
/// against a fake inlet. The merge (`inherit`) follows lsyncd 2.2.3's `Syncs.add`: the sync's
/// own keys, then its positional layers in order, then `default`; a key already set wins.
const PRELUDE: &str = r#"
local getenv, exhausted = ...
local type, pairs, ipairs, select, tostring, error, rawget, rawsetmetatable, rawpcall, rawxpcall =
      type, pairs, ipairs, select, tostring, error, rawget, setmetatable, pcall, xpcall
local gsub, sub = string.gsub, string.sub

dofile, loadfile, load, loadstring, require, collectgarbage, warn = nil, nil, nil, nil, nil, nil, nil
print = function() end
os = { getenv = getenv, time = os.time, date = os.date, clock = os.clock }

-- The budget error must not be caught by the config: `while true do pcall(loop) end`.
local function pass(ok, ...)
  if not ok and exhausted() then error((...), 0) end
  return ok, ...
end
pcall = function(f, ...) return pass(rawpcall(f, ...)) end
-- Lua runs a message handler, and a finalizer, with hooks off: neither may loop unbudgeted.
xpcall = function(f, h, ...)
  return pass(rawxpcall(f, function(m) if exhausted() then return m end return h(m) end, ...))
end
setmetatable = function(t, mt)
  if type(mt) == 'table' and rawget(mt, '__gc') ~= nil then error('__gc is not allowed here', 2) end
  return rawsetmetatable(t, mt)
end

-- C pattern matching runs without hooks: refuse a search whose worst case (backtracking,
-- about subject length ^ repetitions) would run for minutes. Real configs are far below.
local function guard(s, p)
  if type(s) ~= 'string' or type(p) ~= 'string' then return end
  local n, cost = #s, (#s + 1) * (#p + 1)
  -- Repetitions, escapes aside (those in sets too: an over-estimate).
  local _, q = gsub(gsub(p, '%%.', ''), '[%*%+%-%?]', '')
  for i = 1, q do
    cost = cost * (n / i + 1)
    if cost > 1e9 then break end
  end
  if cost > 1e9 then
    error('string pattern too costly for the sandbox (' .. n .. '-byte subject, ' .. q .. ' repetitions)', 3)
  end
end
for _, name in ipairs({ 'find', 'match', 'gmatch', 'gsub' }) do
  local f = string[name]
  string[name] = function(s, p, ...) guard(s, p); return f(s, p, ...) end
end

local function noop() end
local P = { syncs = {}, layers = {} }
local recording

local function flatten(out, v, depth)
  local t = type(v)
  if t == 'string' or t == 'number' then out[#out + 1] = tostring(v)
  elseif t == 'table' and depth < 4 then
    for _, x in ipairs(v) do flatten(out, x, depth + 1) end
  end
end
local function record(...)
  if not recording then return end
  local call = {}
  for i = 1, select('#', ...) do flatten(call, (select(i, ...)), 0) end
  recording[#recording + 1] = call
end
function spawn(agent, ...) record(...) end
function spawnShell(agent, ...) record(...) end
log, alarm = noop, noop
function terminate(code) error('the config called terminate(' .. tostring(code) .. ')', 2) end
lsyncd = rawsetmetatable({ realdir = function(p) return p end }, { __index = function() return noop end })

local uSettings = {}
local settingsSafe = rawsetmetatable({}, {
  __call = function(_, t)
    if type(t) == 'string' then return uSettings[t] end
    if type(t) == 'table' then for k, v in pairs(t) do uSettings[k] = v end end
  end,
  __index = uSettings, __newindex = uSettings,
})
settings = settingsSafe

local inherit
local function inheritKV(cd, k, v)
  if k == '_merge' or k == '_verbatim' then return end
  local dtype = type(cd[k])
  if type(v) == 'table' then
    if dtype == 'nil' then cd[k] = {}; inherit(cd[k], v)
    elseif dtype == 'table' and v._merge ~= false then inherit(cd[k], v) end
  elseif dtype == 'nil' then cd[k] = v end
end
inherit = function(cd, cs)
  for k, v in pairs(cs) do
    if (type(k) ~= 'number' or cs._verbatim == true)
      and (type(cs._merge) ~= 'table' or cs._merge[k] == true) then
      inheritKV(cd, k, v)
    end
  end
  if cs._verbatim ~= true then
    for _, v in ipairs(cs) do
      if type(v) == 'table' then inherit(cd, v) else cd[#cd + 1] = v end
    end
  end
end

local function layer(name, delay, extra)
  local l = { delay = delay, action = function() end, init = noop, prepare = noop }
  for k, v in pairs(extra) do l[k] = v end
  P.layers[l.action] = name
  return l
end
default = {
  _merge = { action = true, checkgauge = true, collect = true, delay = true, init = true,
             maxDelays = true, maxProcesses = true, prepare = true },
  action = function(inlet)
    local event, event2 = inlet.getEvent()
    local f = inlet.getConfig()['on' .. event.etype]
    if type(f) == 'function' then f(event, event2) end
  end,
  init = function(event)
    local f = event.config.onStartup
    if type(f) == 'function' then f(event) end
  end,
  collect = noop, prepare = noop, maxDelays = 1000, maxProcesses = 1, statusInterval = 10,
}
default.rsync = layer('default.rsync', 15, { rsync = { binary = '/usr/bin/rsync' } })
default.rsyncssh = layer('default.rsyncssh', 15, { rsync = { binary = '/usr/bin/rsync' }, ssh = {} })
default.direct = layer('default.direct', 1, { rsync = { binary = '/usr/bin/rsync' } })

function sync(t)
  if type(t) ~= 'table' then error('sync{} takes a table', 2) end
  -- lsyncd 2.2.3 still honours the old `settings = { ... }` (with a warning).
  if settings ~= settingsSafe then
    if type(settings) == 'table' then for k, v in pairs(settings) do uSettings[k] = v end end
    settings = settingsSafe
  end
  local c = {}
  inherit(c, t)
  inherit(c, default)
  for _, k in ipairs({ 'delay', 'maxDelays', 'maxProcesses' }) do
    if uSettings[k] then c[k] = uSettings[k] end
  end
  P.syncs[#P.syncs + 1] = c
end

local function folder(s)
  if type(s) ~= 'string' then return nil end
  if sub(s, -1) == '/' then return s end
  return s .. '/'
end
local function event(c, etype, inlet)
  local src, tgt = folder(c.source), folder(c.target)
  return { etype = etype, path = '/.purge', pathname = '.purge', pathdir = '/',
    isdir = false, isList = false, status = 'wait', config = c, inlet = inlet,
    source = src, target = c.target,
    sourcePath = src and src .. '.purge', sourcePathname = src and src .. '.purge', sourcePathdir = src,
    targetPath = tgt and tgt .. '.purge', targetPathname = tgt and tgt .. '.purge', targetPathdir = tgt }
end
local function fakeInlet(c)
  local inlet = {}
  local ev = event(c, 'Modify', inlet)
  local list = { etype = 'Modify', isList = true, status = 'wait', config = c, inlet = inlet,
    source = ev.source, target = ev.target,
    getPaths = function() return ev.path end,
    getSourcePaths = function() return ev.sourcePath or '' end,
    getTargetPaths = function() return ev.targetPath or '' end }
  inlet.getEvent = function() return ev end
  inlet.getEvents = function() return list end
  inlet.getConfig = function() return c end
  inlet.createBlanketEvent = function() return event(c, 'Blanket', inlet) end
  inlet.getExcludes = function() return {} end
  inlet.getFilters = function() return {} end
  return rawsetmetatable(inlet, { __index = function() return noop end }), ev
end

-- lsyncd's layer-3 `^variables` in string actions.
local vars = { 'sourcePathname', 'sourcePathdir', 'sourcePath', 'source', 'targetPathname',
  'targetPathdir', 'targetPath', 'target', 'pathname', 'pathdir', 'path' }
local function expand(s, ev)
  s = gsub(s, '%^[od]%.', '^')
  for _, v in ipairs(vars) do
    s = gsub(s, '%^' .. v, function() return tostring(ev[v] or '') end)
  end
  return s
end

function P.probe(c)
  local calls, err = {}, nil
  recording = calls
  local function try(f, ...)
    if type(f) ~= 'function' then return end
    local ok, e = rawpcall(f, ...)
    if not ok and err == nil then
      local shown, s = rawpcall(tostring, e)
      err = shown and s or '(an error object)'
    end
  end
  try(c.prepare, c, 4)
  local inlet, ev = fakeInlet(c)
  try(c.init, event(c, 'Init', inlet))
  try(c.action, inlet)
  recording = nil
  for _, k in ipairs({ 'action', 'onStartup', 'onCreate', 'onModify', 'onDelete', 'onMove', 'onAttrib' }) do
    if type(c[k]) == 'string' then calls[#calls + 1] = { expand(c[k], ev) } end
  end
  return calls, err, P.layers[c.action]
end

return P
"#;

#[cfg(test)]
#[path = "lsyncd_tests.rs"]
mod tests;
