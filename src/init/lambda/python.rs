//! The Python the old Lambda is written in, as far as reading its constants needs: a
//! tokenizer (strings with their prefixes and escapes, comments, brackets, logical lines and
//! their indentation) and the few expression forms the article's kind of code assigns.

use std::borrow::Borrow;
use std::collections::BTreeMap;

pub(super) type Env = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Tok {
    Name(String),
    /// A number as written (`1_000`, `1.5`).
    Num(String),
    /// The text (escapes resolved unless raw; an f-string's braces kept) and its kind.
    Str(String, StrKind),
    Op(String),
}

impl Tok {
    pub(super) fn is_name(&self, n: &str) -> bool {
        matches!(self, Tok::Name(s) if s == n)
    }
    pub(super) fn is_op(&self, o: &str) -> bool {
        matches!(self, Tok::Op(s) if s == o)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum StrKind {
    Plain,
    Bytes,
    Format,
}

#[derive(Debug, Clone)]
pub(super) struct Token {
    pub(super) tok: Tok,
    pub(super) line: usize,
}

pub(super) fn toks<T: Borrow<Token>>(t: &[T]) -> Vec<&Tok> {
    t.iter().map(|t| &t.borrow().tok).collect()
}

/// A logical line: physical lines joined by brackets, backslashes and multi-line strings.
#[derive(Debug)]
pub(super) struct Line {
    /// Column of its first token: 0 for a top-level statement.
    pub(super) indent: usize,
    pub(super) tokens: Vec<Token>,
}

const OPS: [&str; 25] = [
    "**=", "//=", ">>=", "<<=", "...", "==", "!=", "<=", ">=", "+=", "-=", "*=", "/=", "%=", "&=",
    "|=", "^=", "@=", "->", ":=", "**", "//", "<<", ">>", "<>",
];

struct Lexer {
    c: Vec<char>,
    i: usize,
    line: usize,
}

/// Never fails: the code ran on Lambda, so it is Python; what is odd anyway (an unclosed
/// string) is read as far as it goes.
pub(super) fn tokenize(src: &str) -> Vec<Line> {
    let c = src.replace("\r\n", "\n").replace('\r', "\n");
    let mut lx = Lexer {
        c: c.chars().collect(),
        i: 0,
        line: 1,
    };
    let (mut lines, mut cur, mut depth) = (Vec::new(), Vec::<Token>::new(), 0usize);
    let (mut col, mut indent, mut bol) = (0, 0, true);
    while let Some(ch) = lx.at(0) {
        if bol {
            col = lx.run(|c| matches!(c, ' ' | '\t' | '\x0c')).len();
            bol = false;
            continue;
        }
        let line = lx.line;
        lx.i += 1;
        let tok = match ch {
            ' ' | '\t' | '\x0c' => continue,
            '#' => {
                lx.run(|c| c != '\n');
                continue;
            }
            '\\' if lx.at(0) == Some('\n') => {
                (lx.i, lx.line) = (lx.i + 1, lx.line + 1);
                continue;
            }
            '\n' => {
                lx.line += 1;
                bol = depth == 0;
                if bol && !cur.is_empty() {
                    let tokens = std::mem::take(&mut cur);
                    lines.push(Line { indent, tokens });
                }
                continue;
            }
            '\'' | '"' => lx.string(""),
            c if c.is_alphabetic() || c == '_' => {
                let word = format!("{c}{}", lx.run(|c| c.is_alphanumeric() || c == '_'));
                let prefix = ["r", "u", "b", "f", "t", "br", "rb", "fr", "rf", "tr", "rt"];
                let quote = matches!(lx.at(0), Some('\'' | '"'));
                if quote && prefix.contains(&&*word.to_ascii_lowercase()) {
                    lx.i += 1;
                    lx.string(&word)
                } else {
                    Tok::Name(word)
                }
            }
            c if c.is_ascii_digit() => {
                let digits = lx.run(|d| d.is_alphanumeric() || d == '_' || d == '.');
                Tok::Num(format!("{c}{digits}"))
            }
            _ => {
                let next: String = lx.c[lx.i - 1..].iter().take(3).collect();
                let op = OPS.into_iter().find(|op| next.starts_with(op));
                let op = op.map_or(ch.to_string(), str::to_owned);
                lx.i += op.len() - 1;
                match ch {
                    '(' | '[' | '{' => depth += 1,
                    ')' | ']' | '}' => depth = depth.saturating_sub(1),
                    _ => {}
                }
                Tok::Op(op)
            }
        };
        if cur.is_empty() {
            indent = col;
        }
        cur.push(Token { tok, line });
    }
    let tokens = cur;
    if !tokens.is_empty() {
        lines.push(Line { indent, tokens });
    }
    lines
}

impl Lexer {
    fn at(&self, k: usize) -> Option<char> {
        self.c.get(self.i + k).copied()
    }

    /// The characters from `i` on that `more` accepts.
    fn run(&mut self, more: impl Fn(char) -> bool) -> String {
        let start = self.i;
        while self.at(0).is_some_and(&more) {
            self.i += 1;
        }
        self.c[start..self.i].iter().collect()
    }

    /// A string whose opening quote is at `i - 1`.
    fn string(&mut self, prefix: &str) -> Tok {
        let p = prefix.to_ascii_lowercase();
        let kind = match () {
            _ if p.contains('b') => StrKind::Bytes,
            _ if p.contains('f') || p.contains('t') => StrKind::Format,
            _ => StrKind::Plain,
        };
        let q = self.c[self.i - 1];
        let triple = self.at(0) == Some(q) && self.at(1) == Some(q);
        let len = 1 + 2 * usize::from(triple);
        self.i += len - 1;
        let mut out = String::new();
        loop {
            let ch = match self.at(0) {
                Some(c) if c == q && (1..len).all(|k| self.at(k) == Some(q)) => {
                    self.i += len;
                    break;
                }
                Some('\n') if !triple => break,
                None => break,
                Some(c) => c,
            };
            self.i += 1;
            self.line += usize::from(ch == '\n');
            let Some(e) = self.at(0).filter(|_| ch == '\\') else {
                out.push(ch);
                continue;
            };
            self.i += 1;
            self.line += usize::from(e == '\n');
            let escapes = "\\\\''\"\"n\nt\tr\ra\x07b\x08f\x0cv\x0b";
            let pair = escapes.chars().step_by(2).position(|k| k == e);
            match pair.and_then(|k| escapes.chars().nth(2 * k + 1)) {
                // A raw string keeps its backslashes (though one still keeps a quote in it).
                _ if p.contains('r') => out.extend(['\\', e]),
                // `\` at the end of a line joins the next.
                _ if e == '\n' => {}
                Some(v) => out.push(v),
                // Python keeps an unknown escape as written (`'\A'` is 2 characters); `\x41`,
                // `\u`, octal and `\N{...}` are kept so too: no bucket name holds one.
                None => out.extend(['\\', e]),
            }
        }
        Tok::Str(out, kind)
    }
}

// ---- Top-level assignments --------------------------------------------------------------------

/// Each name's value (or why it is not understood) and the line of its assignment.
pub(super) type Scope = BTreeMap<String, (Result<Ev, String>, usize)>;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Value {
    Str(String),
    Int(i64),
}

/// An expression's value as the Lambda saw it; the environment variable that supplied it (or
/// part of it); whether the code reads the environment there at all, set or not.
#[derive(Debug, Clone)]
pub(super) struct Ev(pub(super) Value, pub(super) Option<String>, pub(super) bool);

/// The names the top-level statements bind, in order: what the module holds once imported.
pub(super) fn top_level(lines: &[Line], env: &Env) -> Scope {
    let mut scope = Scope::new();
    // `if x: A = 1; B = 2` is all the if's body: only simple statements are split at `;`.
    let compound = "if elif else for while with def class try except finally async match";
    for l in lines.iter().filter(|l| l.indent == 0) {
        if !compound.split(' ').any(|k| l.tokens[0].tok.is_name(k)) {
            for stmt in split_top(&l.tokens, ";") {
                assign(stmt, env, &mut scope);
            }
        }
    }
    scope
}

/// `t` split at each `sep` outside brackets.
pub(super) fn split_top<'a, T: Borrow<Token>>(t: &'a [T], sep: &str) -> Vec<&'a [T]> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0usize, 0);
    for (i, tok) in toks(t).into_iter().enumerate() {
        let Tok::Op(o) = tok else { continue };
        match o.as_str() {
            o if depth == 0 && o == sep => {
                out.push(&t[start..i]);
                start = i + 1;
            }
            "(" | "[" | "{" => depth += 1,
            ")" | "]" | "}" => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    out.push(&t[start..]);
    out
}

/// What is inside the bracket `t[0]` opens, and what follows its close.
pub(super) fn inside<'a, T: Borrow<Token>>(t: &'a [T], open: &str, close: &str) -> Inside<'a, T> {
    let parts = split_top(t.get(1..).filter(|_| t[0].borrow().tok.is_op(open))?, close);
    let inner = parts.first().filter(|_| parts.len() > 1)?;
    Some((inner, &t[inner.len() + 2..]))
}

type Inside<'a, T> = Option<(&'a [T], &'a [T])>;

fn assign(stmt: &[Token], env: &Env, scope: &mut Scope) {
    let Some(line) = stmt.first().map(|t| t.line) else {
        return;
    };
    let parts = split_top(stmt, "=");
    match &toks(stmt)[..] {
        [Tok::Name(n), Tok::Op(op), ..] if op.ends_with('=') && !"===!=<=>=".contains(&**op) => {
            let changed = Err(format!("it is changed by `{op}`"));
            scope.insert(n.clone(), (changed, line));
        }
        _ if parts.len() > 1 => {
            let (value, targets) = parts.split_last().unwrap_or((&stmt, &[]));
            let ev = evaluate(value, env, scope);
            // `NAME = v`, `NAME: type = v`; `A, B = 1, 2`, `d[k] = v`, `o.a = v` are not followed.
            for target in targets {
                let annotated = target.get(1).is_none_or(|t| t.tok.is_op(":"));
                if let (Some(Tok::Name(n)), true) = (target.first().map(|t| &t.tok), annotated) {
                    scope.insert(n.clone(), (ev.clone(), line));
                }
            }
        }
        _ => {}
    }
}

/// The few forms the article's kind of code uses, and no others: literals (adjacent strings
/// joined), names bound before, `+`, `int(...)`, `str(...)`, `os.environ.get('X', default)`,
/// `os.getenv('X', default)`, `os.environ['X']`.
fn evaluate(t: &[Token], env: &Env, scope: &Scope) -> Result<Ev, String> {
    let terms = split_top(t, "+");
    if let [first, more @ ..] = &terms[..] {
        if !more.is_empty() {
            let first = evaluate(first, env, scope)?;
            return more
                .iter()
                .try_fold(first, |a, t| add(a, evaluate(t, env, scope)?));
        }
    }
    let tt = toks(t);
    let n = tt
        .iter()
        .take_while(|t| matches!(t, Tok::Name(_)) || t.is_op("."))
        .count();
    let path: String = tt[..n]
        .iter()
        .map(|t| if let Tok::Name(n) = t { n } else { "." })
        .collect();
    let rest = &t[n..];
    let call = inside(rest, "(", ")").filter(|(_, after)| after.is_empty());
    let call = call.map(|(inner, _)| split_top(inner, ","));
    let mut args = call.clone().unwrap_or_default();
    if args.last().is_some_and(|a| a.is_empty()) {
        args.pop(); // `f(a,)`
    }
    let code = |value| Ok(Ev(value, None, false));
    match (path.as_str(), &toks(rest)[..], &args[..]) {
        ("", [], _) => Err("a value is missing".into()),
        ("", [Tok::Num(n)], _) => int(n)
            .map(|n| code(Value::Int(n)))
            .unwrap_or(Err(format!("{n} is not a whole number"))),
        ("", [Tok::Str(..), ..], _) => {
            // Adjacent literals are one string: `'a' 'b'`.
            let part = |t: &&Tok| match t {
                Tok::Str(s, kind) => plain(s, *kind),
                _ => Err("more follows a string".into()),
            };
            code(Value::Str(
                toks(rest).iter().map(part).collect::<Result<_, _>>()?,
            ))
        }
        ("", _, [inner]) if call.is_some() => evaluate(inner, env, scope),
        ("int" | "str", _, [inner]) if call.is_some() => {
            let Ev(value, var, reads) = evaluate(inner, env, scope)?;
            let value = match (path.as_str(), value) {
                ("int", Value::Str(s)) => {
                    Value::Int(int(s.trim()).ok_or(format!("int({s:?}) fails"))?)
                }
                ("str", Value::Int(n)) => Value::Str(n.to_string()),
                (_, v) => v,
            };
            Ok(Ev(value, var, reads))
        }
        ("os.environ.get" | "environ.get" | "os.getenv" | "getenv", _, [var, default @ ..])
            if call.is_some() && default.len() < 2 =>
        {
            let default = default.first().map(|d| evaluate(d, env, scope));
            environment(var, default.transpose()?, env)
        }
        ("os.environ" | "environ", _, _) => match inside(rest, "[", "]") {
            Some((var, [])) => environment(var, None, env),
            _ => Err(format!("`{path}` is not understood")),
        },
        (name, [], _) => match scope.get(name) {
            Some((Ok(ev), _)) => Ok(ev.clone()),
            Some((Err(_), line)) => Err(format!("{name} (line {line}) is not understood")),
            None => Err(format!("`{name}` is not understood")),
        },
        (name, _, _) => Err(format!("`{name}...` is not understood")),
    }
}

fn add(Ev(a, a_var, a_reads): Ev, Ev(b, b_var, b_reads): Ev) -> Result<Ev, String> {
    let value = match (a, b) {
        (Value::Str(x), Value::Str(y)) => Value::Str(x + &y),
        (Value::Int(x), Value::Int(y)) => Value::Int(x.checked_add(y).ok_or("a sum too large")?),
        _ => return Err("it adds a string and a number".into()),
    };
    Ok(Ev(value, a_var.or(b_var), a_reads || b_reads))
}

fn environment(var: &[Token], default: Option<Ev>, env: &Env) -> Result<Ev, String> {
    let [Tok::Str(var, StrKind::Plain)] = &toks(var)[..] else {
        return Err("the environment variable's name is not a literal".into());
    };
    match (env.get(var), default) {
        (Some(v), _) => Ok(Ev(Value::Str(v.clone()), Some(var.clone()), true)),
        (None, Some(Ev(value, from, _))) => Ok(Ev(value, from, true)),
        (None, None) => Err(format!("it reads environment {var}, which is not set")),
    }
}

/// A literal's text, when it is a str the code can use as it is.
pub(super) fn plain(s: &str, kind: StrKind) -> Result<String, String> {
    match kind {
        StrKind::Plain => Ok(s.to_owned()),
        StrKind::Format if !s.contains(['{', '}']) => Ok(s.to_owned()),
        StrKind::Format => Err("it is an f-string".into()),
        StrKind::Bytes => Err("it is bytes, not a string".into()),
    }
}

/// A whole number as Python writes it (`1_000`; `int()` also takes a sign).
pub(super) fn int(n: &str) -> Option<i64> {
    let digits = n.strip_prefix(['+', '-']).unwrap_or(n);
    let ok = digits
        .split('_')
        .all(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()));
    ok.then(|| n.replace('_', "").parse().ok())?
}
