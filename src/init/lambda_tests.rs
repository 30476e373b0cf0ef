use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::io::Write;

/// The article's code, indented as Python needs (the blog lost it), constants as published:
/// the fixture the integration tests and `scripts/demo --migrate` deploy, its names filled in.
static ARTICLE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    include_str!("../../tests/fixtures/article_lambda.py")
        .replace("@DISTRIBUTION_ID@", "CloudFront の ID")
        .replace("@ORIGIN_BUCKET@", "オリジンである S3 バケットの名前")
        .replace("@COUNT_BUCKET@", "パージ回数を記録する S3 バケットの名前")
});

fn code(text: &str) -> LambdaCode {
    LambdaCode {
        file: "lambda_function.py".into(),
        text: text.into(),
    }
}

fn no_env() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The 1-based line of `text` that starts with `start`.
fn line_of(text: &str, start: &str) -> usize {
    1 + text
        .lines()
        .position(|l| l.starts_with(start))
        .expect("the line")
}

fn in_code(line: usize) -> From {
    From::Code {
        file: "lambda_function.py".into(),
        line,
    }
}

fn zip_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    for (name, data) in files {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

/// What the code says at `line` of lambda_function.py.
fn said<T>(value: T, line: usize) -> Option<Fact<T>> {
    Some(Fact {
        value,
        from: in_code(line),
    })
}

#[test]
fn the_articles_code_gives_its_constants_each_with_its_line() {
    let f = facts(&code(&ARTICLE), &no_env());
    assert_eq!(f.problems, Vec::<String>::new());
    assert_eq!(f.count_max, said(10, line_of(&ARTICLE, "COUNT_MAX")));
    let bucket = "パージ回数を記録する S3 バケットの名前".to_owned();
    assert_eq!(
        f.count_bucket,
        said(bucket, line_of(&ARTICLE, "COUNT_BUCKET_NAME ="))
    );
    let target_line = line_of(&ARTICLE, "TARGET_FILE =");
    assert_eq!(f.target_file, said(".purge".into(), target_line));
    let dist_line = line_of(&ARTICLE, "DISTRIBUTION_ID =");
    assert_eq!(
        f.distribution_id,
        said("CloudFront の ID".into(), dist_line)
    );
    let origin = "オリジンである S3 バケットの名前".to_owned();
    let origin_line = line_of(&ARTICLE, "ORIGIN_BUCKET_NAME =");
    assert_eq!(f.origin_bucket, said(origin, origin_line));
    let key_line = line_of(&ARTICLE, "    key = ");
    assert_eq!(f.period, said(CountPeriod::Day, key_line));
    assert_eq!(f.key_format, said("%Y-%m-%d.txt".into(), key_line));
    assert_eq!(f.timezone.value, "UTC");
    let utc = f.timezone.from.to_string();
    assert_eq!(utc, "datetime.now(), which is UTC on Lambda");
    assert_eq!(in_code(27).to_string(), "lambda_function.py line 27");
}

#[test]
fn a_py_given_directly_is_read_whatever_its_name() {
    let c = code_from_bytes(ARTICLE.as_bytes(), "/tmp/x/old_lambda.py", None).unwrap();
    assert_eq!(
        (c.file.as_str(), c.text.as_str()),
        ("old_lambda.py", ARTICLE.as_str())
    );
    // Told by the magic, not the name: a .zip name on Python text is still Python.
    let c = code_from_bytes(b"COUNT_MAX = 3\n", "code.zip", None).unwrap();
    assert_eq!(facts(&c, &no_env()).count_max.unwrap().value, 3);
    // A byte-order mark is not part of the code.
    let c = code_from_bytes(b"\xEF\xBB\xBFCOUNT_MAX = 3\n", "a.py", None).unwrap();
    assert_eq!(facts(&c, &no_env()).count_max.unwrap().value, 3);
}

#[test]
fn the_articles_zip_is_read_by_handler_and_without_one() {
    let vendored = b"def lambda_handler(e, c):\n    pass\nCOUNT_MAX = 99\n";
    let zip = zip_of(&[
        ("README.txt", b"notes"),
        ("requests/__init__.py", vendored),
        ("lambda_function.py", ARTICLE.as_bytes()),
    ]);
    let by_handler = code_from_bytes(
        &zip,
        "Code.Location",
        Some("lambda_function.lambda_handler"),
    );
    let by_handler = by_handler.unwrap();
    assert_eq!(
        (by_handler.file.as_str(), by_handler.text.as_str()),
        ("lambda_function.py", ARTICLE.as_str())
    );
    // Without a handler: the only .py at the top.
    let alone = code_from_bytes(&zip, "Code.Location", None).unwrap();
    assert_eq!(alone, by_handler);
    assert_eq!(facts(&alone, &no_env()).count_max.unwrap().value, 10);
}

#[test]
fn a_dotted_handler_names_a_module_in_a_package() {
    let zip = zip_of(&[("app.py", b"A = 1\n"), ("pkg/mod.py", b"COUNT_MAX = 4\n")]);
    let c = code_from_bytes(&zip, "z", Some("pkg.mod.handler")).unwrap();
    assert_eq!(c.file, "pkg/mod.py");
    let err = code_from_bytes(&zip, "z", Some("missing.handler")).unwrap_err();
    let shown = err.to_string();
    assert!(
        matches!(err, LambdaError::HandlerNotFound { .. }),
        "{err:?}"
    );
    assert!(
        shown.contains("missing.py") && shown.contains("pkg/mod.py"),
        "{shown}"
    );
    let bad = code_from_bytes(&zip, "z", Some("nodot")).unwrap_err();
    assert!(matches!(bad, LambdaError::BadHandler { .. }), "{bad:?}");
}

#[test]
fn without_a_handler_the_file_that_defines_lambda_handler_is_read() {
    let zip = zip_of(&[
        (
            "helpers.py",
            b"def lambda_handler_not(x):\n    '''def lambda_handler'''\n",
        ),
        (
            "main.py",
            b"import helpers\n\ndef lambda_handler(event, context):\n    pass\n",
        ),
    ]);
    assert_eq!(code_from_bytes(&zip, "z", None).unwrap().file, "main.py");
    let two = zip_of(&[
        ("a.py", b"def lambda_handler(e, c): pass\n"),
        ("b.py", b"def lambda_handler(e, c): pass\n"),
    ]);
    let err = code_from_bytes(&two, "z", None).unwrap_err();
    assert!(
        matches!(&err, LambdaError::Ambiguous { candidates } if candidates.len() == 2),
        "{err:?}"
    );
}

#[test]
fn a_monthly_key_is_a_month() {
    let text = "from datetime import datetime\nkey = datetime.now().strftime('%Y-%m') + '.txt'\n";
    let f = facts(&code(text), &no_env());
    assert_eq!(f.period, said(CountPeriod::Month, 2));
    assert_eq!(f.key_format.unwrap().value, "%Y-%m.txt");
}

#[test]
fn a_key_neither_daily_nor_monthly_is_a_problem_that_names_the_format() {
    let f = facts(&code("k = now.strftime('%Y%m%d')\n"), &no_env());
    assert_eq!(f.period, None);
    assert!(
        f.problems
            .iter()
            .any(|p| p.contains("%Y%m%d") && p.contains("line 1")),
        "{:?}",
        f.problems
    );
    let none = facts(&code("COUNT_MAX = 1\n"), &no_env());
    assert!(
        none.problems.iter().any(|p| p.contains("no strftime")),
        "{:?}",
        none.problems
    );
}

#[test]
fn jst_as_a_fixed_offset_is_etc_gmt_minus_9() {
    let inline = "key = datetime.now(timezone(timedelta(hours=9))).strftime('%Y-%m-%d')\n";
    let f = facts(&code(inline), &no_env());
    assert_eq!(
        f.timezone,
        Fact {
            value: "Etc/GMT-9".into(),
            from: in_code(1)
        }
    );
    let named =
        "JST = timezone(timedelta(hours=+9), 'JST')\n\ndef h():\n    return datetime.now(JST)\n";
    assert_eq!(facts(&code(named), &no_env()).timezone.value, "Etc/GMT-9");
    // The hand-made JST: nine hours added to Lambda's UTC.
    let added = "k = (datetime.now() + timedelta(hours=9)).strftime('%Y-%m-%d')\n";
    assert_eq!(facts(&code(added), &no_env()).timezone.value, "Etc/GMT-9");
    let west = "t = datetime.now(timezone(timedelta(hours=-5)))\n";
    assert_eq!(facts(&code(west), &no_env()).timezone.value, "Etc/GMT+5");
}

#[test]
fn a_named_zone_is_its_iana_name() {
    let zi = "from zoneinfo import ZoneInfo\nk = datetime.now(ZoneInfo('Asia/Tokyo')).strftime('%Y-%m-%d')\n";
    let f = facts(&code(zi), &no_env());
    assert_eq!(
        f.timezone,
        Fact {
            value: "Asia/Tokyo".into(),
            from: in_code(2)
        }
    );
    let pytz = "import pytz\nk = datetime.now(pytz.timezone(\"Asia/Tokyo\"))\n";
    assert_eq!(facts(&code(pytz), &no_env()).timezone.value, "Asia/Tokyo");
}

#[test]
fn an_offset_not_of_whole_hours_is_a_problem_and_utc_is_assumed() {
    let india = "t = datetime.now(timezone(timedelta(hours=5, minutes=30)))\n";
    let f = facts(&code(india), &no_env());
    assert_eq!(f.timezone.value, "UTC");
    assert!(matches!(f.timezone.from, From::Assumed { .. }));
    assert!(
        f.problems.iter().any(|p| p.contains("330 minutes")),
        "{:?}",
        f.problems
    );
}

#[test]
fn the_environments_tz_sets_a_naive_now_not_utcnow() {
    let utc = facts(
        &code("k = datetime.utcnow().strftime('%Y-%m')\n"),
        &env(&[("TZ", "Asia/Tokyo")]),
    );
    assert_eq!(
        utc.timezone,
        Fact {
            value: "UTC".into(),
            from: in_code(1)
        }
    );
    let posix = facts(&code(&ARTICLE), &env(&[("TZ", "JST-9")]));
    assert!(
        posix.problems.iter().any(|p| p.contains("TZ=JST-9")),
        "{:?}",
        posix.problems
    );
    let f = facts(&code(&ARTICLE), &env(&[("TZ", "Asia/Tokyo")]));
    let tz = f.timezone;
    assert_eq!(
        (tz.value.as_str(), tz.from.to_string()),
        ("Asia/Tokyo", "environment TZ".into())
    );
}

#[test]
fn the_environment_overrides_a_constant_of_the_same_name() {
    let f = facts(
        &code(&ARTICLE),
        &env(&[("COUNT_MAX", "20"), ("TARGET_FILE", ".flush")]),
    );
    let max = f.count_max.unwrap();
    assert_eq!(
        (max.value, max.from.to_string()),
        (20, "environment COUNT_MAX".into())
    );
    assert_eq!(f.target_file.unwrap().value, ".flush");
    assert_eq!(f.problems, Vec::<String>::new());
}

#[test]
fn a_variable_the_code_reads_wins_over_its_default() {
    let text = "import os\nCOUNT_BUCKET_NAME = os.environ.get('PURGE_BUCKET', 'counts')\n\
                COUNT_MAX = int(os.getenv(\"MAX\", '10'))\nTARGET_FILE = os.environ['MARKER']\n";
    let set = facts(
        &code(text),
        &env(&[("PURGE_BUCKET", "b2"), ("MAX", "30"), ("MARKER", ".p")]),
    );
    let bucket = set.count_bucket.unwrap();
    assert_eq!(
        (bucket.value.as_str(), bucket.from.to_string()),
        ("b2", "environment PURGE_BUCKET".into())
    );
    assert_eq!(set.count_max.unwrap().value, 30);
    assert_eq!(set.target_file.unwrap().value, ".p");
    // Unset: the code's default, from its line; os.environ[...] unset is a problem.
    let unset = facts(&code(text), &no_env());
    assert_eq!(unset.count_bucket, said("counts".into(), 2));
    assert_eq!(unset.count_max.unwrap().value, 10);
    assert_eq!(unset.target_file, None);
    assert!(
        unset
            .problems
            .iter()
            .any(|p| p.starts_with("TARGET_FILE") && p.contains("MARKER")),
        "{:?}",
        unset.problems
    );
    // The code reads MAX, so a COUNT_MAX in the environment did not change what ran.
    let both = facts(&code(text), &env(&[("COUNT_MAX", "5")]));
    assert_eq!(both.count_max.unwrap().value, 10);
}

#[test]
fn a_count_max_from_the_environment_that_is_no_number_is_a_problem() {
    for bad in ["ten", "-1", "4294967296", ""] {
        let f = facts(&code(&ARTICLE), &env(&[("COUNT_MAX", bad)]));
        assert_eq!(f.count_max, None, "{bad}");
        assert!(
            f.problems
                .iter()
                .any(|p| p.contains("COUNT_MAX") && p.contains("environment")),
            "{:?}",
            f.problems
        );
    }
}

#[test]
fn only_top_level_assignments_count() {
    let text = "'''A docstring.\nCOUNT_MAX = 99\n'''\n# COUNT_MAX = 98\nx = 'COUNT_MAX = 97'\n\
                def f():\n    COUNT_MAX = 96\nif True:\n    TARGET_FILE = '.x'\nclass C:\n    COUNT_BUCKET_NAME = 'c'\n\
                COUNT_MAX = 5  # COUNT_MAX = 95\n";
    let f = facts(&code(text), &no_env());
    assert_eq!(f.count_max, said(5, 12));
    assert_eq!((f.target_file, f.count_bucket), (None, None));
}

#[test]
fn strings_read_as_python_reads_them() {
    let text = r#"A = 'it\'s'
B = "say \"hi\""
C = r'\d\''
D = 'a\\b' "c" 'd'
E = '(?:\A|\/)'
F = '''multi
line'''
G = 'tab\there'
DISTRIBUTION_ID = A + "|" + B + "|" + C + "|" + D + "|" + E + "|" + F + "|" + G
"#;
    let f = facts(&code(text), &no_env());
    let want = "it's|say \"hi\"|\\d\\'|a\\bcd|(?:\\A|\\/)|multi\nline|tab\there";
    assert_eq!(f.distribution_id.unwrap().value, want);
}

#[test]
fn names_ints_and_calls_the_article_would_use() {
    let text = "PREFIX = 'purge-'\nCOUNT_BUCKET_NAME = PREFIX + 'counts'\nCOUNT_MAX = int('1_0')\n\
                TARGET_FILE: str = ('.pu'\n    'rge')\nORIGIN_BUCKET_NAME = \\\n    'origin'\n";
    let f = facts(&code(text), &no_env());
    assert_eq!(f.count_bucket, said("purge-counts".into(), 2));
    assert_eq!(f.count_max.unwrap().value, 10);
    assert_eq!(f.target_file, said(".purge".into(), 4));
    assert_eq!(f.origin_bucket.unwrap().value, "origin");
    let windows = "COUNT_MAX = 7\r\nTARGET_FILE = '.p'\r\n";
    let f = facts(&code(windows), &no_env());
    assert_eq!(
        (f.count_max.unwrap().value, f.target_file.unwrap().from),
        (7, in_code(2))
    );
    assert_eq!(
        facts(&code("COUNT_MAX = 1_000\n"), &no_env())
            .count_max
            .unwrap()
            .value,
        1000
    );
}

#[test]
fn a_form_not_understood_is_a_problem_with_its_line_not_a_guess() {
    let text = "COUNT_MAX = 10\nCOUNT_MAX = get_max()\nCOUNT_BUCKET_NAME = f'{x}-counts'\nTARGET_FILE = 5\n\
                DISTRIBUTION_ID = 'a'; DISTRIBUTION_ID += 'b'\nORIGIN_BUCKET_NAME = b'bytes'\n";
    let f = facts(&code(text), &no_env());
    assert_eq!(
        (f.count_max, f.count_bucket, f.target_file),
        (None, None, None)
    );
    assert_eq!((f.distribution_id, f.origin_bucket), (None, None));
    let p = f.problems.join("\n");
    assert!(
        p.contains("COUNT_MAX (lambda_function.py line 2: `COUNT_MAX = get_max()`)"),
        "{p}"
    );
    assert!(
        p.contains("COUNT_BUCKET_NAME (lambda_function.py line 3"),
        "{p}"
    );
    assert!(
        p.contains("TARGET_FILE (lambda_function.py line 4) is the number 5"),
        "{p}"
    );
    assert!(
        p.contains("DISTRIBUTION_ID (lambda_function.py line 5"),
        "{p}"
    );
    assert!(
        p.contains("ORIGIN_BUCKET_NAME (lambda_function.py line 6"),
        "{p}"
    );
    // Reassigned with a form understood: the last value is the one that ran.
    let again = facts(&code("COUNT_MAX = x()\nCOUNT_MAX = 3\n"), &no_env());
    assert_eq!(again.count_max, said(3, 2));
}

// ---- Hostile input --------------------------------------------------------------------------

/// A zip of one entry whose data is `data` as stored (method 8: deflated), declaring `size`.
fn raw_zip(name: &str, data: &[u8], size: u32, crc: u32) -> Vec<u8> {
    let (n, len) = (name.len() as u16, data.len() as u32);
    let mut z = Vec::new();
    let put = |z: &mut Vec<u8>, fields: &[(u32, usize)]| {
        for &(v, width) in fields {
            z.extend_from_slice(&v.to_le_bytes()[..width]);
        }
    };
    // Method 8, time, date, CRC, sizes, name length.
    let common = [
        (8, 2),
        (0, 2),
        (0x21, 2),
        (crc, 4),
        (len, 4),
        (size, 4),
        (n as u32, 2),
    ];
    put(&mut z, &[(0x0403_4b50, 4), (20, 2), (0, 2)]);
    put(&mut z, &common);
    put(&mut z, &[(0, 2)]);
    z.extend_from_slice(name.as_bytes());
    z.extend_from_slice(data);
    let cd = z.len() as u32;
    put(&mut z, &[(0x0201_4b50, 4), (20, 2), (20, 2), (0, 2)]);
    put(&mut z, &common);
    put(&mut z, &[(0, 2), (0, 2), (0, 2), (0, 2), (0, 4), (0, 4)]);
    z.extend_from_slice(name.as_bytes());
    let cd_len = z.len() as u32 - cd;
    put(
        &mut z,
        &[
            (0x0605_4b50, 4),
            (0, 2),
            (0, 2),
            (1, 2),
            (1, 2),
            (cd_len, 4),
            (cd, 4),
            (0, 2),
        ],
    );
    z
}

fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |mut c, &b| {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 == 1 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
        c
    })
}

/// A deflate stream (fixed Huffman codes) of one zero and `matches` copies of 258 more:
/// 13 bits per 258 bytes, so 100 MiB of zeros in 650 KB, made without inflating anything.
fn zeros_deflated(matches: usize) -> Vec<u8> {
    let (mut out, mut acc, mut n) = (Vec::new(), 0u32, 0);
    let mut bits = |value: u32, len: u32, msb_first: bool| {
        for i in 0..len {
            let bit = if msb_first {
                value >> (len - 1 - i)
            } else {
                value >> i
            } & 1;
            acc |= bit << n;
            n += 1;
            if n == 8 {
                out.push(acc as u8);
                (acc, n) = (0, 0);
            }
        }
    };
    bits(0b011, 3, false); // the last block, fixed codes
    bits(0b0011_0000, 8, true); // the literal 0
    for _ in 0..matches {
        bits(0b1100_0101, 8, true); // length 258
        bits(0, 5, true); // distance 1
    }
    bits(0, 7, true); // end of block
    bits(0, 7, false); // pad to a byte
    out
}

#[test]
fn a_zip_bomb_is_refused_without_inflating_it() {
    // The bomb's maker is right: a small one inflates to what it says.
    let small = raw_zip(
        "lambda_function.py",
        &zeros_deflated(10),
        2581,
        crc32(&[0; 2581]),
    );
    assert_eq!(
        code_from_bytes(&small, "z", None).unwrap().text,
        "\0".repeat(2581)
    );
    let bomb = zeros_deflated(406_425); // 100 MiB of zeros
    let honest = raw_zip("lambda_function.py", &bomb, 1 + 258 * 406_425, 0);
    let err = code_from_bytes(&honest, "z", None).unwrap_err();
    assert!(
        matches!(err, LambdaError::TooBig { limit: MAX_PY, .. }),
        "{err:?}"
    );
    // Its header lies (it declares the limit itself): the read still stops there.
    let lying = raw_zip("lambda_function.py", &bomb, MAX_PY as u32, 0);
    let started = std::time::Instant::now();
    let err = code_from_bytes(&lying, "z", Some("lambda_function.handler")).unwrap_err();
    assert!(
        matches!(err, LambdaError::TooBig { .. } | LambdaError::Zip(_)),
        "{err:?}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn code_that_is_not_utf8_is_refused_with_its_line() {
    let err = code_from_bytes(b"COUNT_MAX = 10\nX = '\x82\xa0'\n", "sjis.py", None).unwrap_err();
    assert!(
        matches!(&err, LambdaError::NotUtf8 { file, line: 2 } if file == "sjis.py"),
        "{err:?}"
    );
    let zip = zip_of(&[("lambda_function.py", b"A = '\xff'\n")]);
    let err = code_from_bytes(&zip, "z", None).unwrap_err();
    assert!(
        matches!(err, LambdaError::NotUtf8 { line: 1, .. }),
        "{err:?}"
    );
}

#[test]
fn a_zip_without_python_names_what_it_holds() {
    let zip = zip_of(&[
        ("index.js", b"exports.handler = 1"),
        ("package.json", b"{}"),
    ]);
    let err = code_from_bytes(&zip, "z", None).unwrap_err();
    let shown = err.to_string();
    assert!(
        matches!(&err, LambdaError::NoPython { entries, more: 0 } if entries.len() == 2),
        "{err:?}"
    );
    assert!(shown.contains("index.js, package.json"), "{shown}");
    let empty = code_from_bytes(b"PK\x05\x06\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", "z", None);
    assert!(
        matches!(empty, Err(LambdaError::NoPython { .. })),
        "{empty:?}"
    );
}

#[test]
fn sizes_over_the_limits_are_refused_before_reading() {
    let mut huge = b"PK\x03\x04".to_vec();
    huge.resize(MAX_ZIP as usize + 1, 0);
    assert!(matches!(
        code_from_bytes(&huge, "z", None),
        Err(LambdaError::TooBig { .. })
    ));
    let py = vec![b'#'; MAX_PY as usize + 1];
    assert!(matches!(
        code_from_bytes(&py, "a.py", None),
        Err(LambdaError::TooBig { .. })
    ));
    let broken = code_from_bytes(b"PK\x03\x04 not a zip at all", "z", None);
    assert!(matches!(broken, Err(LambdaError::Zip(_))), "{broken:?}");
}

#[test]
fn only_the_first_entries_are_looked_at() {
    let names: Vec<String> = (0..MAX_ENTRIES + 5).map(|i| format!("f{i}.txt")).collect();
    let files: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), &b""[..])).collect();
    let err = code_from_bytes(&zip_of(&files), "z", None).unwrap_err();
    assert!(
        matches!(&err, LambdaError::NoPython { entries, more: 5 } if entries.len() == MAX_ENTRIES),
        "{err:?}"
    );
}

proptest! {
    #[test]
    fn any_text_is_read_without_panic(text in "\\PC*") {
        let _ = facts(&code(&text), &env(&[("COUNT_MAX", "1")]));
    }

    #[test]
    fn python_like_soup_is_read_without_panic(parts in prop::collection::vec(prop::sample::select(vec![
        "COUNT_MAX", " = ", "=", "'", "\"", "'''", "\\", "\n", "    ", "(", ")", "[", "]", "+", ",",
        "os.environ.get(", "int(", "timedelta(hours=", "timezone(", "strftime(", "9", "#", "r'", "f'",
        ";", ":", "now()", "ZoneInfo(", "-", "_",
    ]), 0..60)) {
        let _ = facts(&code(&parts.concat()), &no_env());
    }

    #[test]
    fn any_bytes_after_the_zip_magic_are_refused_or_read_without_panic(tail in prop::collection::vec(any::<u8>(), 0..400)) {
        let mut bytes = b"PK\x03\x04".to_vec();
        bytes.extend(tail);
        let _ = code_from_bytes(&bytes, "z", None);
    }
}
