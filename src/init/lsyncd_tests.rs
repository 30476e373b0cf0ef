use std::time::{Duration, Instant};

use super::*;

const EXAMPLE: &str = include_str!("../../examples/lsyncd-s3.conf.lua");

fn no_env(_: &str) -> Option<String> {
    None
}

fn eval(source: &str) -> Vec<SyncEntry> {
    match evaluate("test.lua", source, &no_env) {
        Ok(entries) => entries,
        Err(e) => panic!("evaluate failed: {e}"),
    }
}

fn eval_err(source: &str) -> String {
    match evaluate("test.lua", source, &no_env) {
        Ok(entries) => panic!("expected an error, got {entries:?}"),
        Err(LsyncdError::Lua { message, .. }) => message,
        Err(e) => panic!("expected LsyncdError::Lua, got {e:?}"),
    }
}

fn url(bucket: &str, prefix: &str) -> S3Url {
    S3Url {
        bucket: bucket.into(),
        prefix: prefix.into(),
    }
}

fn only(entries: Vec<SyncEntry>) -> SyncEntry {
    assert_eq!(entries.len(), 1, "{entries:?}");
    entries.into_iter().next().expect("one entry")
}

#[test]
fn example_with_its_environment() {
    let env = |name: &str| match name {
        "LSYNCD_SOURCE" => Some("/srv/www/".to_owned()),
        "LSYNCD_TARGET" => Some("s3://origin-a/www/".to_owned()),
        _ => None,
    };
    let entries = evaluate("lsyncd-s3.conf.lua", EXAMPLE, &env).expect("evaluates");
    let e = only(entries);
    assert_eq!(e.index, 1);
    assert_eq!(e.source.as_deref(), Some("/srv/www/"));
    assert_eq!(e.target.as_deref(), Some("s3://origin-a/www/"));
    assert_eq!(e.delay, Some(1.0));
    assert_eq!(e.s3, Some((url("origin-a", "www/"), Via::Target)));
    assert_eq!(e.why_not, None);
}

#[test]
fn example_with_its_defaults() {
    let e = only(eval(EXAMPLE));
    assert_eq!(e.source.as_deref(), Some("/var/www/html/"));
    assert_eq!(e.s3, Some((url("my-origin", ""), Via::Target)));
}

#[test]
fn example_found_by_its_command_when_the_target_is_not_a_url() {
    // The example's action spawns `aws s3 sync ... config.target`: with the target moved into
    // a local the command alone names the bucket.
    let source = EXAMPLE
        .replace("target = TARGET,", "")
        .replace("config.target", "TARGET");
    let e = only(eval(&source));
    assert_eq!(e.target, None);
    assert_eq!(e.s3, Some((url("my-origin", ""), Via::Command)));
}

#[test]
fn ls3_style_layer_with_an_s3_target() {
    let entries = eval(
        r#"
        local s3 = { delay = 10, maxProcesses = 1, s3 = { awscliBinary = '/usr/bin/aws' } }
        s3.action = function(inlet)
            local event = inlet.getEvent()
            if event.isdir then inlet.discardEvent(event) return end
            spawn(event, inlet.getConfig().s3.awscliBinary, { 's3', 'cp' }, event.sourcePath, event.targetPath)
        end
        sync { s3, source = '/var/www', target = 's3://b/site', delay = 30 }
        sync { default.rsync, source = '/var/www', target = 's3://b2' }
        "#,
    );
    assert_eq!(entries[0].delay, Some(30.0));
    assert_eq!(entries[0].s3, Some((url("b", "site/"), Via::Target)));
    assert_eq!(entries[1].s3, Some((url("b2", ""), Via::Target)));
}

#[test]
fn a_layers_prepare_may_complete_the_target() {
    // ls3.lua's prepare adds the missing `s3://`.
    let e = only(eval(
        r#"
        local s3 = { action = function() end }
        s3.prepare = function(config, level)
            default["prepare"](config, level + 1)
            config.target = config.target:gsub('/+$', '')
            if not config.target:match('^s3://') then config.target = 's3://' .. config.target end
        end
        sync { s3, source = '/var/www', target = 'my-bucket/my-path/' }
        "#,
    ));
    assert_eq!(e.target.as_deref(), Some("s3://my-bucket/my-path"));
    assert_eq!(e.s3, Some((url("my-bucket", "my-path/"), Via::Target)));
}

#[test]
fn action_spawning_aws_with_a_url_built_from_locals() {
    let e = only(eval(
        r#"
        local bucket = "media-" .. "prod"
        local function dest(p) return "s3://" .. bucket .. "/" .. p .. "/" end
        local aws = {
            delay = 5,
            action = function(inlet)
                local events = inlet.getEvents()
                spawn(events, "/usr/bin/aws", "s3", "sync", events.source, dest("p"))
            end,
        }
        sync { aws, source = "/srv/media" }
        "#,
    ));
    assert_eq!(e.source.as_deref(), Some("/srv/media"));
    assert_eq!(e.target, None);
    assert_eq!(e.delay, Some(5.0));
    assert_eq!(e.s3, Some((url("media-prod", "p/"), Via::Command)));
}

#[test]
fn shell_commands_and_string_actions() {
    let entries = eval(
        r#"
        local B = "s3://shell-b/site"
        sync { source = "/a", init = function(ev)
            spawn(ev, "/bin/sh", "-c", "aws s3 sync --delete " .. ev.source .. " '" .. B .. "'")
        end }
        sync { source = "/b", action = function(inlet)
            spawnShell(inlet.getEvents(), "aws s3 sync ^source s3://shell-c/")
        end }
        sync { source = "/c", onModify = "aws s3 cp ^sourcePathname s3://cdn/x/^pathname" }
        sync { source = "/d", onStartup = function(ev) spawn(ev, "/usr/bin/aws", "s3", "sync", ev.source, "s3://start/up") end }
        "#,
    );
    let found: Vec<_> = entries.into_iter().map(|e| e.s3).collect();
    assert_eq!(
        found,
        [
            Some((url("shell-b", "site/"), Via::Command)),
            Some((url("shell-c", ""), Via::Command)),
            Some((url("cdn", "x/"), Via::Command)),
            Some((url("start", "up/"), Via::Command)),
        ]
    );
}

#[test]
fn two_syncs_in_order() {
    let entries = eval(
        r#"
        sync { default.rsync, source = "/one", target = "s3://first/a" }
        sync { default.direct, source = "/two", target = "s3://second" }
        "#,
    );
    let got: Vec<_> = entries
        .iter()
        .map(|e| (e.index, e.source.as_deref(), e.delay))
        .collect();
    assert_eq!(
        got,
        [(1, Some("/one"), Some(15.0)), (2, Some("/two"), Some(1.0))]
    );
    assert_eq!(entries[1].s3, Some((url("second", ""), Via::Target)));
}

#[test]
fn rsync_to_a_host_is_not_s3() {
    let e = only(eval(
        r#"sync { default.rsync, source = "/srv/www", target = "web2:/srv/www" }"#,
    ));
    assert_eq!(e.s3, None);
    let why = e.why_not.expect("a reason");
    assert!(why.contains("host:path"), "{why}");
}

#[test]
fn reasons_for_no_s3() {
    let entries = eval(
        r#"
        sync { default.rsync, source = "/srv/www", target = "/backup/www" }
        sync { source = "/x", action = function(inlet) spawn(inlet.getEvent(), "/bin/true") end }
        sync { source = "/y", action = function(inlet) undefined_helper(inlet) end }
        sync { source = "/z", target = "s3:///nobucket" }
        "#,
    );
    let why: Vec<String> = entries
        .into_iter()
        .map(|e| e.why_not.expect("a reason"))
        .collect();
    assert!(
        why[0].contains("local folder for default.rsync"),
        "{}",
        why[0]
    );
    assert_eq!(why[1], "no target and its action spawns no s3:// URL");
    assert!(
        why[2].contains("attempt to call a nil value (global 'undefined_helper')"),
        "{}",
        why[2]
    );
    assert!(why[3].contains("no valid bucket name"), "{}", why[3]);
}

#[test]
fn settings_both_ways() {
    // The old assignment form still works in lsyncd 2.2.3, and settings' delay wins.
    let e = only(eval(
        r#"
        settings = { logfile = "x", delay = 3 }
        sync { default.rsync, source = "/s", target = "s3://b/" }
        "#,
    ));
    assert_eq!(e.delay, Some(3.0));
    let e = only(eval(
        r#"
        settings { logfile = "x", insist = true }
        settings.nodaemon = true
        sync { default.rsync, source = "/s", target = "s3://b/" }
        "#,
    ));
    assert_eq!(e.delay, Some(15.0));
}

#[test]
fn getenv_asks_the_caller_and_no_one_else() {
    let env = |name: &str| (name == "HOME").then(|| "s3://from-env/".to_owned());
    let entries = evaluate(
        "t",
        r#"sync { source = "/s", target = os.getenv("HOME") }"#,
        &env,
    )
    .expect("ok");
    assert_eq!(only(entries).s3, Some((url("from-env", ""), Via::Target)));
    let e = only(eval(
        r#"sync { source = "/s", target = os.getenv("PATH") or "none" }"#,
    ));
    assert_eq!(e.target.as_deref(), Some("none"));
}

#[test]
fn sandbox_has_no_os_execute_io_or_loading() {
    assert!(eval_err(r#"os["execute"]("touch /tmp/x")"#).contains("execute"));
    assert!(eval_err(r#"io.open("/etc/passwd")"#).contains("'io'"));
    for code in [
        "dofile('/etc/passwd')",
        "loadfile('/etc/passwd')",
        "load('return 1')",
        "require('os')",
        "os.remove('/tmp/x')",
        "os.exit(1)",
    ] {
        assert!(
            eval_err(code).contains("attempt to call a nil value"),
            "{code}"
        );
    }
    // A time is allowed: some configs name log files by date.
    eval("local t = os.date('%Y', os.time()) .. os.clock(); print(t); log('Normal', t)");
}

#[test]
fn bytecode_is_refused() {
    let message = eval_err("\x1bLua\x54\x00");
    assert!(message.contains("binary"), "{message}");
}

#[test]
fn endless_loop_ends_with_the_budget() {
    let started = Instant::now();
    let message = eval_err("while true do end");
    assert!(message.contains("budget"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn endless_loop_cannot_hide_in_pcall_or_an_action() {
    let message = eval_err("while true do pcall(function() while true do end end) end");
    assert!(message.contains("budget"), "{message}");
    let message = eval_err(
        "while true do xpcall(function() while true do end end, function() while true do end end) end",
    );
    assert!(message.contains("budget"), "{message}");
    // Lua runs these with hooks off.
    let message =
        eval_err("xpcall(function() while true do end end, function() while true do end end)");
    assert!(message.contains("budget"), "{message}");
    let message = eval_err("setmetatable({}, { __gc = function() while true do end end })");
    assert!(message.contains("__gc is not allowed"), "{message}");
    let message =
        eval_err("error(setmetatable({}, { __tostring = function() while true do end end }))");
    assert!(message.contains("budget"), "{message}");
    let message = eval_err("sync { source = '/s', action = function() while true do end end }");
    assert!(message.contains("budget"), "{message}");
}

#[test]
fn quadratic_c_work_ends_at_the_time_limit() {
    // Few instructions, each table.insert shifting the whole table in C.
    let source = "local t = {} for i = 1, 3e6 do table.insert(t, 1, i) end";
    let started = Instant::now();
    let result = evaluate_within("t", source, &no_env, Duration::from_millis(300));
    assert!(matches!(result, Err(LsyncdError::Lua { message, .. }) if message.contains("budget")));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn pattern_backtracking_is_refused() {
    let message = eval_err(r#"string.find(string.rep("a", 1e5), string.rep("a-", 10) .. "b")"#);
    assert!(message.contains("pattern too costly"), "{message}");
    let message =
        eval_err(r#"local s = string.rep("a", 1e7); return s:find(s:sub(2) .. "b", 1, true)"#);
    assert!(message.contains("pattern too costly"), "{message}");
    // What configs do (ls3.lua's exclude translation) still works.
    let e = only(eval(
        r#"
        local pat = ("/sub/**/x?/"):gsub('%*%*', '[[ANY]]'):gsub('%?', '[^/]'):gsub('/$', '/*')
        local host = ("web1.example:/srv"):match("^([^:]+):")
        for w in ("a b c"):gmatch("%S+") do host = host .. w end
        sync { source = "/s", target = "s3://b/" .. host .. pat:gsub("[^%w]", "") }
        "#,
    ));
    assert_eq!(
        e.s3,
        Some((url("b", "web1.exampleabcsubANYx/"), Via::Target))
    );
}

#[test]
fn memory_is_limited() {
    let message = eval_err(r#"local s = string.rep("x", 1e9)"#);
    assert!(message.contains("memory limit"), "{message}");
}

#[test]
fn errors_name_the_file_and_line_and_are_clipped() {
    let message = eval_err("local x = 1\nthis is not lua");
    assert!(message.starts_with("test.lua:2:"), "{message}");
    let message = eval_err(&format!("error('{}')", "y".repeat(5000)));
    assert!(
        message.chars().count() <= MESSAGE_MAX + 1,
        "{}",
        message.len()
    );
    let message = eval_err("undefined_function()");
    assert!(message.contains("global 'undefined_function'"), "{message}");
}

#[test]
fn s3_url_parse() {
    assert_eq!(S3Url::parse("s3://bucket"), Some(url("bucket", "")));
    assert_eq!(S3Url::parse("s3://bucket/"), Some(url("bucket", "")));
    assert_eq!(S3Url::parse("s3://bucket/www"), Some(url("bucket", "www/")));
    assert_eq!(
        S3Url::parse("s3://bucket/www/"),
        Some(url("bucket", "www/"))
    );
    assert_eq!(
        S3Url::parse("s3://b.example-1/a/b//"),
        Some(url("b.example-1", "a/b/"))
    );
    assert_eq!(S3Url::parse("s3://"), None);
    assert_eq!(S3Url::parse("s3:///www"), None);
    assert_eq!(S3Url::parse("s3://$BUCKET/"), None);
    assert_eq!(S3Url::parse("https://bucket/"), None);
}

#[test]
fn read_refuses_big_and_missing_files() {
    let dir = tempfile::tempdir().expect("temp dir");
    let big = dir.path().join("big.lua");
    std::fs::write(&big, vec![b'-'; MAX_FILE as usize + 1]).expect("write");
    assert!(
        matches!(read(&big, &no_env), Err(LsyncdError::TooBig { size, .. }) if size == MAX_FILE + 1)
    );
    let missing = dir.path().join("missing.lua");
    assert!(matches!(
        read(&missing, &no_env),
        Err(LsyncdError::Read { .. })
    ));
    assert!(matches!(
        read(dir.path(), &no_env),
        Err(LsyncdError::Read { .. })
    ));
    let ok = dir.path().join("ok.lua");
    std::fs::write(&ok, EXAMPLE).expect("write");
    assert_eq!(read(&ok, &no_env).expect("reads").len(), 1);
}
