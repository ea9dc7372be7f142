//! `--format` templates as the docker CLI takes them: Go's text/template
//! over a listing's rows (`{{.Names}}`, `table {{.ID}}\t{{.Image}}`,
//! `{{json .}}`) or an inspected object's JSON (`{{.State.Status}}`,
//! `{{range .IPAM.Config}}{{.Subnet}}{{end}}`).
//!
//! The subset scripts use: text; actions with Go's `{{-`/`-}}` trimming;
//! operands `.`, `.Field.Path`, strings ("…" or `…`), integers, `true` and
//! `false`; pipelines (`{{.Name | upper}}`: the value is the last argument),
//! parenthesized ones as operands (`{{index (split .Image ":") 0}}`, with
//! fields after them: `{{(index .Mounts 0).Source}}`); the listings' one
//! method, `{{.Label "com.docker.compose.service"}}`;
//! `if`/`else if`/`else`/`end`, `range`/`else`/`end` (declaring `$v` or `$k, $v`),
//! `with`/`else`/`end`; `$` and range variables; comments;
//! and the functions of Go (`index`, `len`, `print`, `printf`, `println`,
//! `eq`, `ne`, `not`, `and`, `or`) and of the docker CLI (`json`, `join`,
//! `split`, `lower`, `upper`, `title`, `truncate`, `pad`). Anything else is
//! refused when the format is parsed, saying what is supported. Values print
//! as Go prints decoded JSON: `<nil>`, `[a b]`, `map[k:v]`, and a missing
//! key of an object as `<no value>` — except in a listing's row, whose fields
//! are fixed, where an unknown field is an error naming the ones there are.

use std::fmt::Write as _;

use std::collections::BTreeMap;

use serde_json::Value;

/// A parsed template; `table` when it began with `table` (a header line,
/// columns aligned at its tabs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    nodes: Vec<Node>,
    pub table: bool,
    /// As given: what a listing asks for only when shown looks here (`.Size`).
    pub source: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Text(String),
    Action(Pipe),
    If(Pipe, Vec<Node>, Vec<Node>),
    /// The variables it declares (`$v` or `$k, $v`), the pipeline, the body, the else.
    Range(Vec<String>, Pipe, Vec<Node>, Vec<Node>),
    With(Pipe, Vec<Node>, Vec<Node>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Pipe(Vec<Cmd>);

#[derive(Clone, Debug, PartialEq, Eq)]
struct Cmd {
    func: Option<Func>,
    args: Vec<Arg>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Arg {
    /// `.` followed by these keys (none: `.` itself).
    Field(Vec<String>),
    /// `$name` (`$` alone: the whole object) followed by these keys.
    Var(String, Vec<String>),
    /// A parenthesized pipeline followed by these keys.
    Sub(Pipe, Vec<String>),
    Lit(Value),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Func {
    Json,
    Join,
    Split,
    Lower,
    Upper,
    Title,
    Truncate,
    Pad,
    Index,
    Len,
    Print,
    Printf,
    Println,
    Eq,
    Ne,
    Not,
    And,
    Or,
    /// The method `.Label "key"`: a label of the row's `.Labels`.
    Label,
}

const FUNCS: [(&str, Func); 18] = [
    ("json", Func::Json),
    ("join", Func::Join),
    ("split", Func::Split),
    ("lower", Func::Lower),
    ("upper", Func::Upper),
    ("title", Func::Title),
    ("truncate", Func::Truncate),
    ("pad", Func::Pad),
    ("index", Func::Index),
    ("len", Func::Len),
    ("print", Func::Print),
    ("printf", Func::Printf),
    ("println", Func::Println),
    ("eq", Func::Eq),
    ("ne", Func::Ne),
    ("not", Func::Not),
    ("and", Func::And),
    ("or", Func::Or),
];

/// What a piece of the source is, before the tree is built.
enum Item {
    Text(String),
    If(Pipe),
    Range(Vec<String>, Pipe),
    With(Pipe),
    Else,
    ElseIf(Pipe),
    End,
    Pipe(Pipe),
}

impl Template {
    /// Parses a `--format` value that is neither `table` nor `json`: a
    /// leading `table` makes it a table; `\t` and `\n` written as two
    /// characters are a tab and a newline, as in the docker CLI.
    pub fn parse(format: &str) -> Result<Template, String> {
        let (table, src) = match format.strip_prefix("table") {
            Some(rest) => (true, rest),
            None => (false, format),
        };
        let src = src.trim_matches(' ').replace("\\t", "\t").replace("\\n", "\n");
        let items = lex(&src)?;
        let mut at = 0;
        let (nodes, stop) = tree(&items, &mut at)?;
        match stop {
            None => Ok(Template { nodes, table, source: format.to_string() }),
            Some(Stop::Else) => Err("{{else}} outside an if, range or with".into()),
            Some(Stop::ElseIf(_)) => Err("{{else if}} outside an if".into()),
            Some(Stop::End) => Err("{{end}} without an if, range or with".into()),
        }
    }

    /// The template applied to `dot`, an inspected object's JSON (a missing
    /// field is `<no value>`), or with `strict` a listing's row without labels
    /// (a missing field is an error).
    pub fn render(&self, dot: &Value, strict: bool) -> Result<String, String> {
        self.run(
            dot,
            Scope { root: dot, vars: Vec::new(), strict, labels: if strict { Labels::Row(None) } else { Labels::Doc } },
        )
    }

    /// The template applied to a listing's row, whose `{{.Label "key"}}`
    /// reads `labels`; or (`header`) to its headers, where `.Label "key"` is
    /// the key's last part in capitals, as the docker CLI heads it.
    pub fn render_row(
        &self,
        row: &Value,
        labels: Option<&BTreeMap<String, String>>,
        header: bool,
    ) -> Result<String, String> {
        let labels = if header { Labels::Header } else { Labels::Row(labels) };
        self.run(row, Scope { root: row, vars: Vec::new(), strict: true, labels })
    }

    fn run(&self, dot: &Value, mut sc: Scope) -> Result<String, String> {
        let mut out = String::new();
        exec(&self.nodes, dot, &mut sc, &mut out)?;
        Ok(out)
    }
}

fn lex(src: &str) -> Result<Vec<Item>, String> {
    let mut items = Vec::new();
    let mut rest = src;
    let mut trim_next = false;
    while !rest.is_empty() {
        let Some(open) = rest.find("{{") else {
            items.push(Item::Text(trimmed(rest, trim_next, false)));
            break;
        };
        let after = &rest[open + 2..];
        let trim_before = after.starts_with("- ") || after.starts_with("-\t") || after.starts_with("-\n");
        items.push(Item::Text(trimmed(&rest[..open], trim_next, trim_before)));
        let body_start = if trim_before { 1 } else { 0 };
        let Some(close) = find_close(after) else {
            return Err(format!("unclosed action: {{{{{}", after.chars().take(20).collect::<String>()));
        };
        let mut body = &after[body_start..close];
        trim_next = body.ends_with(" -") || body.ends_with("\t-") || body.ends_with("\n-");
        if trim_next {
            body = &body[..body.len() - 1];
        }
        rest = &after[close + 2..];
        let body = body.trim();
        if body.starts_with("/*") {
            if !body.ends_with("*/") {
                return Err(format!("unclosed comment: {{{{{body}}}}}"));
            }
            continue;
        }
        // A keyword ends at the first character no name has (`{{if(eq .A 1)}}`, as Go's).
        let word = body.find(|c: char| !c.is_alphanumeric() && c != '_').unwrap_or(body.len());
        let item = match (&body[..word], body[word..].trim()) {
            ("if", p) => Item::If(pipe(p)?),
            ("range", p) => {
                let (vars, p) = declared(p)?;
                Item::Range(vars, pipe(p)?)
            }
            ("with", p) => Item::With(pipe(p)?),
            ("else", "") => Item::Else,
            ("else", more) if more.strip_prefix("if").is_some_and(|r| r.starts_with([' ', '\t', '\n', '('])) => {
                Item::ElseIf(pipe(more[2..].trim())?)
            }
            ("end", "") => Item::End,
            ("else" | "end", more) => return Err(format!("unexpected {more:?} in {{{{{body}}}}}")),
            ("define" | "template" | "block", _) => return Err(format!("{{{{{body}}}}}: templates are not supported")),
            _ if body.starts_with('$') && body.contains(":=") => {
                return Err(format!("{{{{{body}}}}}: only range declares variables ({{{{range $k, $v := .Labels}}}})"));
            }
            _ => Item::Pipe(pipe(body)?),
        };
        items.push(item);
    }
    Ok(items)
}

/// A `range`'s declaration, if any: `$v := PIPE` or `$k, $v := PIPE`.
fn declared(src: &str) -> Result<(Vec<String>, &str), String> {
    let Some((vars, rest)) = src.split_once(":=") else { return Ok((Vec::new(), src)) };
    let vars: Vec<String> = vars.split(',').map(|v| v.trim().to_string()).collect();
    let ok = |v: &String| v.len() > 1 && v.starts_with('$') && v[1..].chars().all(|c| c.is_alphanumeric() || c == '_');
    if vars.len() > 2 || !vars.iter().all(ok) {
        return Err(format!("{{{{range {src}}}}}: declare $value or $key, $value"));
    }
    Ok((vars.iter().map(|v| v[1..].to_string()).collect(), rest.trim()))
}

/// The text between two actions, with Go's trimming on either side.
fn trimmed(text: &str, start: bool, end: bool) -> String {
    let t = if start { text.trim_start() } else { text };
    let t = if end { t.trim_end() } else { t };
    t.to_string()
}

/// Where an action's `}}` is, skipping any inside a quoted string.
fn find_close(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    let mut quote = None;
    let mut i = 0;
    while i < b.len() {
        match (quote, b[i]) {
            (None, b'"' | b'`') => quote = Some(b[i]),
            (Some(b'"'), b'\\') => i += 1,
            (Some(q), c) if c == q => quote = None,
            (None, b'}') if b.get(i + 1) == Some(&b'}') => return Some(i),
            _ => {}
        }
        i += 1;
    }
    None
}

/// A piece of an action's pipeline.
#[derive(Debug)]
enum Tok {
    Word(String),
    Str(String),
    Bar,
    Open,
    /// `)`, with the fields chained to it (`(index .Tasks 0).Name`).
    Close(Vec<String>),
}

fn tokens(src: &str) -> Result<Vec<Tok>, String> {
    let mut toks = Vec::new();
    let mut chars = src.chars().peekable();
    let word_end = |c: char| c.is_whitespace() || matches!(c, '|' | '"' | '`' | '(' | ')');
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '|' => toks.push(Tok::Bar),
            '(' => toks.push(Tok::Open),
            ')' => {
                let mut chain = String::new();
                while let Some(&c) = chars.peek().filter(|&&c| !word_end(c)) {
                    chain.push(c);
                    chars.next();
                }
                let keys: Vec<String> = chain.split('.').skip(1).map(str::to_string).collect();
                if !chain.is_empty() && (!chain.starts_with('.') || keys.iter().any(String::is_empty)) {
                    return Err(format!("bad field {chain:?} after ) in {{{{{src}}}}}"));
                }
                toks.push(Tok::Close(keys));
            }
            '"' => {
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err(format!("unterminated string in {{{{{src}}}}}")),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('n') => s.push('\n'),
                            Some('t') => s.push('\t'),
                            Some(c @ ('"' | '\\')) => s.push(c),
                            other => return Err(format!("bad escape \\{} in {{{{{src}}}}}", other.unwrap_or(' '))),
                        },
                        Some(c) => s.push(c),
                    }
                }
                toks.push(Tok::Str(s));
            }
            '`' => toks.push(Tok::Str(chars.by_ref().take_while(|&c| c != '`').collect())),
            c => {
                let mut w = c.to_string();
                while let Some(&c) = chars.peek().filter(|&&c| !word_end(c)) {
                    w.push(c);
                    chars.next();
                }
                toks.push(Tok::Word(w));
            }
        }
    }
    Ok(toks)
}

fn pipe(src: &str) -> Result<Pipe, String> {
    let toks = tokens(src)?;
    sub_pipe(&toks, &mut 0, src, false)
}

/// Commands separated by `|`, up to the end or (`nested`) the `)` that
/// closes the group, which is left for the caller.
fn sub_pipe(toks: &[Tok], at: &mut usize, src: &str, nested: bool) -> Result<Pipe, String> {
    let mut cmds = Vec::new();
    let mut cur: Vec<Arg> = Vec::new();
    let mut first_word: Option<String> = None;
    let mut finish = |cur: &mut Vec<Arg>, first: &mut Option<String>| -> Result<(), String> {
        if cur.is_empty() {
            return Err(format!("empty command in {{{{{src}}}}}"));
        }
        cmds.push(cmd(std::mem::take(cur), first.take(), src)?);
        Ok(())
    };
    loop {
        match toks.get(*at) {
            None if nested => return Err(format!("{{{{{src}}}}}: a ( with no ) after it")),
            Some(Tok::Close(_)) if !nested => return Err(format!("{{{{{src}}}}}: a ) with no ( before it")),
            None | Some(Tok::Close(_)) => break,
            Some(Tok::Bar) => finish(&mut cur, &mut first_word)?,
            Some(Tok::Open) => {
                *at += 1;
                let p = sub_pipe(toks, at, src, true)?;
                let Some(Tok::Close(keys)) = toks.get(*at) else { unreachable!("sub_pipe stops at a )") };
                cur.push(Arg::Sub(p, keys.clone()));
            }
            Some(Tok::Str(s)) => cur.push(Arg::Lit(Value::String(s.clone()))),
            Some(Tok::Word(w)) => {
                if cur.is_empty() {
                    first_word = Some(w.clone());
                }
                // A function's name is no operand; `cmd` sorts that out from the first word.
                cur.push(if cur.is_empty() && FUNCS.iter().any(|(n, _)| n == w) {
                    Arg::Lit(Value::Null)
                } else {
                    arg(w, src)?
                });
            }
        }
        *at += 1;
    }
    finish(&mut cur, &mut first_word)?;
    for c in &cmds[1..] {
        if c.func.is_none() {
            return Err(format!("{{{{{src}}}}}: only a function can follow |"));
        }
    }
    Ok(Pipe(cmds))
}

/// A command from its operands: a function and its arguments, a method
/// (`.Label "key"`, the one Docker's listings have) and its argument, or
/// one operand.
fn cmd(mut args: Vec<Arg>, first_word: Option<String>, src: &str) -> Result<Cmd, String> {
    if let Some(&(_, f)) = first_word.as_ref().and_then(|w| FUNCS.iter().find(|(n, _)| n == w)) {
        args.remove(0);
        return Ok(Cmd { func: Some(f), args });
    }
    if args.len() == 1 {
        return Ok(Cmd { func: None, args });
    }
    let label = |keys: &[String]| keys.last().is_some_and(|k| k == "Label");
    match &args[0] {
        // The row's own (`.` or `$`), with its one key.
        Arg::Field(keys) | Arg::Var(_, keys) if keys.len() == 1 && label(keys) && args.len() == 2 => {
            if matches!(&args[0], Arg::Var(name, _) if !name.is_empty()) {
                return Err(format!("{{{{{src}}}}}: .Label is a listing row's: {{{{.Label \"com.example.key\"}}}}"));
            }
            Ok(Cmd { func: Some(Func::Label), args: args.split_off(1) })
        }
        Arg::Field(keys) | Arg::Var(_, keys) if label(keys) => {
            Err(format!("{{{{{src}}}}}: .Label is a listing row's, with one key: {{{{.Label \"com.example.key\"}}}}"))
        }
        Arg::Field(_) | Arg::Var(..) | Arg::Sub(..) => {
            Err(format!("{{{{{src}}}}}: only .Label takes an argument ({{{{.Label \"com.example.key\"}}}})"))
        }
        Arg::Lit(_) => {
            let known: Vec<&str> = FUNCS.iter().map(|(n, _)| *n).collect();
            let what = first_word.map_or_else(|| "a string".to_string(), |w| format!("{w:?}"));
            Err(format!("{{{{{src}}}}}: {what} is not a function (there are {})", known.join(", ")))
        }
    }
}

fn arg(w: &str, src: &str) -> Result<Arg, String> {
    if w == "." {
        return Ok(Arg::Field(Vec::new()));
    }
    if let Some(var) = w.strip_prefix('$') {
        let mut parts = var.split('.');
        let name = parts.next().unwrap_or_default().to_string();
        let keys: Vec<String> = parts.map(str::to_string).collect();
        if keys.iter().any(String::is_empty) || w.contains(":=") {
            return Err(format!("{{{{{src}}}}}: only range declares variables ({{{{range $k, $v := .Labels}}}})"));
        }
        return Ok(Arg::Var(name, keys));
    }
    if let Some(path) = w.strip_prefix('.') {
        let keys: Vec<String> = path.split('.').map(str::to_string).collect();
        if keys.iter().any(String::is_empty) {
            return Err(format!("bad field {w:?} in {{{{{src}}}}}"));
        }
        return Ok(Arg::Field(keys));
    }
    match w {
        "true" => Ok(Arg::Lit(Value::Bool(true))),
        "false" => Ok(Arg::Lit(Value::Bool(false))),
        "nil" => Ok(Arg::Lit(Value::Null)),
        _ if FUNCS.iter().any(|(n, _)| *n == w) => {
            Err(format!("{{{{{src}}}}}: {w} is a function: call it in parentheses, ({w} …)"))
        }
        _ if w.starts_with(char::is_alphabetic) => {
            let known: Vec<&str> = FUNCS.iter().map(|(n, _)| *n).collect();
            Err(format!("{{{{{src}}}}}: unknown function {w:?} (there are {})", known.join(", ")))
        }
        _ => w
            .parse::<i64>()
            .map(|n| Arg::Lit(Value::from(n)))
            .map_err(|_| format!("{{{{{src}}}}}: {w:?} is not a field (.Name), a string or a number")),
    }
}

enum Stop {
    Else,
    ElseIf(Pipe),
    End,
}

/// An `if`'s branches after its pipeline: the nodes until `else`, `else if`
/// (an `if` of its own in the else branch, sharing the one `end`) or `end`.
fn branches(items: &[Item], at: &mut usize, what: &str, else_if: bool) -> Result<(Vec<Node>, Vec<Node>), String> {
    let no_end = || format!("{{{{{what}}}}} has no {{{{end}}}}");
    let (then, stop) = tree(items, at)?;
    let other = match stop {
        Some(Stop::Else) => match tree(items, at)? {
            (other, Some(Stop::End)) => other,
            _ => return Err(no_end()),
        },
        Some(Stop::ElseIf(p)) if else_if => {
            let (a, b) = branches(items, at, what, true)?;
            vec![Node::If(p, a, b)]
        }
        Some(Stop::ElseIf(_)) => return Err(format!("{{{{{what}}}}} takes {{{{else}}}}, not {{{{else if}}}}")),
        Some(Stop::End) => Vec::new(),
        None => return Err(no_end()),
    };
    Ok((then, other))
}

/// Nodes until an `else` or `end` (which is consumed and returned) or the end.
fn tree(items: &[Item], at: &mut usize) -> Result<(Vec<Node>, Option<Stop>), String> {
    let mut nodes = Vec::new();
    while *at < items.len() {
        let item = &items[*at];
        *at += 1;
        let block = |p: &Pipe, at: &mut usize, what: &str| -> Result<(Pipe, Vec<Node>, Vec<Node>), String> {
            let (then, other) = branches(items, at, what, what == "if")?;
            Ok((p.clone(), then, other))
        };
        match item {
            Item::Text(t) if t.is_empty() => {}
            Item::Text(t) => nodes.push(Node::Text(t.clone())),
            Item::Pipe(p) => nodes.push(Node::Action(p.clone())),
            Item::If(p) => {
                let (p, a, b) = block(p, at, "if")?;
                nodes.push(Node::If(p, a, b));
            }
            Item::Range(vars, p) => {
                let (p, a, b) = block(p, at, "range")?;
                nodes.push(Node::Range(vars.clone(), p, a, b));
            }
            Item::With(p) => {
                let (p, a, b) = block(p, at, "with")?;
                nodes.push(Node::With(p, a, b));
            }
            Item::Else => return Ok((nodes, Some(Stop::Else))),
            Item::ElseIf(p) => return Ok((nodes, Some(Stop::ElseIf(p.clone())))),
            Item::End => return Ok((nodes, Some(Stop::End))),
        }
    }
    Ok((nodes, None))
}

/// What actions see besides `.`: the whole object (`$`), the variables
/// ranges declared, and whether an unknown field is an error.
struct Scope<'a> {
    root: &'a Value,
    vars: Vec<(String, Value)>,
    strict: bool,
    labels: Labels<'a>,
}

/// What `.Label "key"` reads.
#[derive(Clone, Copy)]
enum Labels<'a> {
    /// An inspected object: it has no such method.
    Doc,
    /// A listing's row: its labels, if the listing has any.
    Row(Option<&'a BTreeMap<String, String>>),
    /// A table template's header line.
    Header,
}

fn exec(nodes: &[Node], dot: &Value, sc: &mut Scope, out: &mut String) -> Result<(), String> {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Action(p) => out.push_str(&shown(&eval(p, dot, sc)?)),
            Node::If(p, a, b) => exec(if truth(&eval(p, dot, sc)?) { a } else { b }, dot, sc, out)?,
            Node::With(p, a, b) => {
                let v = eval(p, dot, sc)?;
                if truth(&v) { exec(a, &v, sc, out)? } else { exec(b, dot, sc, out)? }
            }
            Node::Range(vars, p, a, b) => {
                let v = eval(p, dot, sc)?;
                let items: Vec<(Value, &Value)> = match &v {
                    Value::Array(xs) => xs.iter().enumerate().map(|(i, x)| (Value::from(i), x)).collect(),
                    Value::Object(m) => m.iter().map(|(k, x)| (Value::String(k.clone()), x)).collect(),
                    Value::Null => Vec::new(),
                    other => return Err(format!("range can't iterate over {}", shown(other))),
                };
                if items.is_empty() {
                    exec(b, dot, sc, out)?;
                }
                for (key, item) in items {
                    let bound: Vec<(String, Value)> = match vars.as_slice() {
                        [v] => vec![(v.clone(), item.clone())],
                        [k, v] => vec![(k.clone(), key), (v.clone(), item.clone())],
                        _ => Vec::new(),
                    };
                    let n = bound.len();
                    sc.vars.extend(bound);
                    let r = exec(a, item, sc, out);
                    sc.vars.truncate(sc.vars.len() - n);
                    r?;
                }
            }
        }
    }
    Ok(())
}

/// A missing key of an object that is not a listing's row.
const NO_VALUE: &str = "<no value>";

fn eval(p: &Pipe, dot: &Value, sc: &Scope) -> Result<Value, String> {
    let mut last: Option<Value> = None;
    for c in &p.0 {
        if let Some(f @ (Func::And | Func::Or)) = c.func {
            // Go's: the first argument that decides (an empty one for `and`, a
            // non-empty one for `or`), else the last, evaluated in order and no
            // further (`and .Mounts (index .Mounts 0).Source` with no mounts).
            let piped = last.take();
            if c.args.is_empty() && piped.is_none() {
                return Err(format!("{} takes at least one argument", if f == Func::And { "and" } else { "or" }));
            }
            let (mut v, mut decided) = (Value::Null, false);
            for a in &c.args {
                v = operand(a, dot, sc)?;
                decided = truth(&v) == (f == Func::Or);
                if decided {
                    break;
                }
            }
            last = Some(match piped {
                Some(p) if !decided => p,
                _ => v,
            });
            continue;
        }
        let mut args = c.args.iter().map(|a| operand(a, dot, sc)).collect::<Result<Vec<_>, _>>()?;
        args.extend(last.take());
        last = Some(match c.func {
            None => args.pop().unwrap_or(Value::Null),
            Some(Func::Label) => label(sc.labels, &args)?,
            Some(f) => call(f, &args)?,
        });
    }
    Ok(last.unwrap_or(Value::Null))
}

/// `.Label "key"` of a listing's row (`""` when the row has no such label).
fn label(labels: Labels, args: &[Value]) -> Result<Value, String> {
    let [key] = want("Label", args)?;
    let key = shown(&key);
    match labels {
        Labels::Row(Some(m)) => Ok(Value::String(m.get(&key).cloned().unwrap_or_default())),
        Labels::Row(None) => Err("this listing has no labels for .Label to read".into()),
        Labels::Header => {
            let last = key.rsplit('.').next().unwrap_or_default();
            Ok(Value::String(last.replace(['-', '_'], " ").to_uppercase()))
        }
        Labels::Doc => Err(".Label is a listing's: here index the labels ({{index .Config.Labels \"key\"}})".into()),
    }
}

fn operand(a: &Arg, dot: &Value, sc: &Scope) -> Result<Value, String> {
    let (start, keys) = match a {
        Arg::Lit(v) => return Ok(v.clone()),
        Arg::Field(keys) => (dot, keys),
        Arg::Var(name, keys) if name.is_empty() => (sc.root, keys),
        Arg::Var(name, keys) => match sc.vars.iter().rev().find(|(n, _)| n == name) {
            Some((_, v)) => (v, keys),
            None => return Err(format!("undefined variable ${name}")),
        },
        Arg::Sub(p, keys) => return walk(&eval(p, dot, sc)?, keys, sc.strict),
    };
    walk(start, keys, sc.strict)
}

/// `v` followed down `keys`.
fn walk(mut v: &Value, keys: &[String], strict: bool) -> Result<Value, String> {
    for k in keys {
        match v {
            Value::Object(m) => match m.get(k) {
                Some(x) => v = x,
                None if strict => {
                    let fields: Vec<String> = m.keys().map(|k| format!(".{k}")).collect();
                    return Err(format!("no field .{k} here: there are {}", fields.join(" ")));
                }
                None => return Ok(Value::String(NO_VALUE.into())),
            },
            Value::Null => return Ok(Value::String(NO_VALUE.into())),
            other => return Err(format!("can't evaluate field {k} in {}", kind(other))),
        }
    }
    Ok(v.clone())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nil",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn want<const N: usize>(f: &str, args: &[Value]) -> Result<[Value; N], String> {
    <[Value; N]>::try_from(args.to_vec()).map_err(|_| format!("{f} takes {N} argument(s), got {}", args.len()))
}

fn number(f: &str, v: &Value) -> Result<i64, String> {
    v.as_i64().ok_or_else(|| format!("{f}: {} is not a whole number", shown(v)))
}

fn call(f: Func, args: &[Value]) -> Result<Value, String> {
    Ok(match f {
        Func::Json => {
            let [v] = want("json", args)?;
            // A missing key is Go's nil to `json`.
            let v = if v.as_str() == Some(NO_VALUE) { Value::Null } else { v };
            Value::String(serde_json::to_string(&v).map_err(|e| e.to_string())?)
        }
        Func::Join => {
            let [list, sep] = want("join", args)?;
            let Value::Array(xs) = list else { return Err(format!("join: {} is not a list", shown(&list))) };
            Value::String(xs.iter().map(shown).collect::<Vec<_>>().join(&shown(&sep)))
        }
        Func::Split => {
            let [s, sep] = want("split", args)?;
            Value::Array(shown(&s).split(&shown(&sep)).map(|x| Value::String(x.into())).collect())
        }
        Func::Lower => Value::String(shown(&want::<1>("lower", args)?[0]).to_lowercase()),
        Func::Upper => Value::String(shown(&want::<1>("upper", args)?[0]).to_uppercase()),
        Func::Title => {
            let [s] = want("title", args)?;
            Value::String(shown(&s).split(' ').map(crate::output::capitalize).collect::<Vec<_>>().join(" "))
        }
        Func::Truncate => {
            let [s, n] = want("truncate", args)?;
            let n = usize::try_from(number("truncate", &n)?).unwrap_or(0);
            Value::String(shown(&s).chars().take(n).collect())
        }
        Func::Pad => {
            let [s, before, after] = want("pad", args)?;
            let pad = |n: &Value| -> Result<String, String> {
                Ok(" ".repeat(usize::try_from(number("pad", n)?).unwrap_or(0)))
            };
            Value::String(format!("{}{}{}", pad(&before)?, shown(&s), pad(&after)?))
        }
        Func::Index => {
            let (first, keys) = args.split_first().ok_or("index takes a value and keys")?;
            let mut v = first.clone();
            for k in keys {
                v = match (&v, k) {
                    (Value::Object(m), Value::String(s)) => m.get(s).cloned().unwrap_or(Value::Null),
                    (Value::Array(xs), Value::Number(n)) => {
                        let i = n.as_u64().and_then(|i| usize::try_from(i).ok()).unwrap_or(usize::MAX);
                        xs.get(i).cloned().ok_or_else(|| format!("index {i} out of range ({} items)", xs.len()))?
                    }
                    (v, k) => return Err(format!("can't index {} with {}", kind(v), shown(k))),
                };
            }
            v
        }
        Func::Len => {
            let [v] = want("len", args)?;
            Value::from(match &v {
                Value::Array(xs) => xs.len(),
                Value::Object(m) => m.len(),
                Value::String(s) => s.len(),
                other => return Err(format!("len of {}", kind(other))),
            })
        }
        Func::Print => Value::String(go_print(args)),
        Func::Println => Value::String(format!("{}\n", args.iter().map(shown).collect::<Vec<_>>().join(" "))),
        Func::Printf => {
            let (fmt, rest) = args.split_first().ok_or("printf takes a format")?;
            Value::String(printf(&shown(fmt), rest)?)
        }
        Func::Eq | Func::Ne => {
            let (first, others) = args.split_first().ok_or("eq takes two arguments")?;
            if others.is_empty() {
                return Err("eq takes two arguments".into());
            }
            let eq = others.iter().any(|o| loose_eq(first, o));
            Value::Bool(if f == Func::Eq { eq } else { !eq })
        }
        Func::Not => Value::Bool(!truth(&want::<1>("not", args)?[0])),
        Func::Label | Func::And | Func::Or => unreachable!("eval calls these itself"),
    })
}

/// Go's `print`: a space between operands when neither is a string.
fn go_print(args: &[Value]) -> String {
    let mut s = String::new();
    for (i, a) in args.iter().enumerate() {
        if i > 0 && !args[i - 1].is_string() && !a.is_string() {
            s.push(' ');
        }
        s.push_str(&shown(a));
    }
    s
}

/// Numbers compare by value (1 and 1.0), everything else as JSON.
fn loose_eq(a: &Value, b: &Value) -> bool {
    match (a.as_f64(), b.as_f64()) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

/// Go's `printf` for the verbs scripts use: `%s %v %d %q %%`, with a `-`
/// flag and a width (`%-20s`).
fn printf(fmt: &str, args: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    let mut args = args.iter();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let left = chars.next_if_eq(&'-').is_some();
        let mut width = String::new();
        while let Some(d) = chars.next_if(char::is_ascii_digit) {
            width.push(d);
        }
        let verb = chars.next().ok_or_else(|| format!("printf {fmt:?}: a % at the end"))?;
        if verb == '%' {
            out.push('%');
            continue;
        }
        let v = args.next().ok_or_else(|| format!("printf {fmt:?}: too few arguments"))?;
        let s = match verb {
            's' | 'v' => shown(v),
            'd' => number("printf %d", v)?.to_string(),
            'q' => serde_json::to_string(&shown(v)).map_err(|e| e.to_string())?,
            other => return Err(format!("printf {fmt:?}: %{other} is not supported (use %s %v %d %q)")),
        };
        let w: usize = width.parse().unwrap_or(0);
        let pad = " ".repeat(w.saturating_sub(s.chars().count()));
        if left {
            let _ = write!(out, "{s}{pad}");
        } else {
            let _ = write!(out, "{pad}{s}");
        }
    }
    Ok(out)
}

/// Go's truth: false, 0, nil and empty strings, lists and objects are false.
fn truth(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|x| x != 0.0),
        Value::String(s) => !s.is_empty() && s != NO_VALUE,
        Value::Array(xs) => !xs.is_empty(),
        Value::Object(m) => !m.is_empty(),
    }
}

/// A value as Go's template prints decoded JSON.
pub fn shown(v: &Value) -> String {
    match v {
        Value::Null => "<nil>".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(xs) => format!("[{}]", xs.iter().map(shown).collect::<Vec<_>>().join(" ")),
        Value::Object(m) => {
            let mut kv: Vec<(&String, &Value)> = m.iter().collect();
            kv.sort_by_key(|(k, _)| *k);
            format!("map[{}]", kv.iter().map(|(k, v)| format!("{k}:{}", shown(v))).collect::<Vec<_>>().join(" "))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn render(t: &str, v: &Value) -> Result<String, String> {
        Template::parse(t)?.render(v, false)
    }

    #[test]
    fn templates_render_as_the_docker_cli_renders_them() {
        let ctr = json!({
            "Name": "/web", "State": {"Status": "running", "Pid": 42, "Running": true},
            "Config": {"Env": ["A=1", "B=2"], "Labels": {"tier": "front", "com.x": "y"}},
            "NetworkSettings": {"Networks": {"app": {"IPAddress": "10.0.1.5"}, "db": {"IPAddress": "10.0.2.7"}}},
            "Mounts": [], "Empty": null,
        });
        let cases: &[(&str, &str)] = &[
            ("{{.State.Status}}", "running"),
            ("{{.State.Pid}} {{.State.Running}}", "42 true"),
            ("{{json .State}}", r#"{"Pid":42,"Running":true,"Status":"running"}"#),
            ("{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", "10.0.1.5 10.0.2.7 "),
            ("{{range .Mounts}}m{{else}}none{{end}}", "none"),
            ("{{index .Config.Labels \"com.x\"}}", "y"),
            ("{{index .Config.Env 1}}", "B=2"),
            ("{{join .Config.Env \",\"}}", "A=1,B=2"),
            ("{{len .Config.Env}}", "2"),
            ("{{.Config.Env}}", "[A=1 B=2]"),
            ("{{.Config.Labels}}", "map[com.x:y tier:front]"),
            ("{{.Nope}} {{json .Nope}}", "<no value> null"),
            ("{{.Empty}}", "<nil>"),
            ("{{if .State.Running}}up{{else}}down{{end}}", "up"),
            ("{{if eq .State.Status \"exited\"}}x{{else}}y{{end}}", "y"),
            ("{{if .Nope}}a{{else if eq .State.Pid 7}}b{{else if .State.Running}}c{{else}}d{{end}}", "c"),
            ("{{if .Nope}}a{{else if .Empty}}b{{end}}", ""),
            ("{{with .Config.Labels}}{{.tier}}{{end}}", "front"),
            ("{{.Name | upper}}", "/WEB"),
            ("{{range $k, $v := .Config.Labels}}{{$k}}={{$v}};{{end}}", "com.x=y;tier=front;"),
            ("{{range $i, $e := .Config.Env}}{{$i}}:{{$e}} {{end}}", "0:A=1 1:B=2 "),
            (
                "{{range $n := .NetworkSettings.Networks}}{{$n.IPAddress}}/{{$.State.Pid}} {{end}}",
                "10.0.1.5/42 10.0.2.7/42 ",
            ),
            ("{{printf \"%-6s|%4d\" .State.Status .State.Pid}}", "running|  42"),
            ("{{- /* a comment */ -}} a  {{- .State.Pid -}}  b", "a42b"),
            ("{{title \"hello world\"}} {{lower \"AB\"}} {{truncate \"abcdef\" 3}}", "Hello World ab abc"),
            ("{{index (split .Name \"w\") 1}}", "eb"),
            ("{{if (eq .State.Status \"running\")}}up{{end}}", "up"),
            ("{{len (index .Config.Env 0)}}|{{(index .NetworkSettings.Networks \"db\").IPAddress}}", "3|10.0.2.7"),
            ("{{if and (ne .State.Pid 1) (not .Empty)}}ok{{end}}", "ok"),
            ("{{printf \"%s-%d\" (upper .Name) (len .Config.Env) | lower}}", "/web-2"),
            ("{{(.Name | upper)}} {{(index .NetworkSettings.Networks \"app\").IPAddress | len}}", "/WEB 8"),
            ("{{if(eq .State.Pid 42)}}a{{else if(.Nope)}}b{{end}}", "a"),
        ];
        for (t, want) in cases {
            assert_eq!(render(t, &ctr).as_deref(), Ok(*want), "{t}");
        }
    }

    #[test]
    fn a_table_format_says_so_and_tabs_may_be_written_as_backslash_t() {
        let t = Template::parse("table {{.ID}}\\t{{.Name}}").expect("parse");
        assert!(t.table);
        assert_eq!(t.render(&json!({"ID": "1", "Name": "a"}), true), Ok("1\ta".into()));
        assert!(!Template::parse("{{.ID}}").expect("parse").table);
    }

    #[test]
    fn a_listing_row_names_its_fields_when_asked_for_another() {
        let t = Template::parse("{{.Nmae}}").expect("parse");
        let e = t.render(&json!({"ID": "1", "Name": "a"}), true).expect_err("strict");
        assert_eq!(e, "no field .Nmae here: there are .ID .Name");
    }

    #[test]
    fn label_reads_a_rows_labels_as_the_docker_cli_does() {
        let row = json!({"Names": "web", "Labels": "com.docker.compose.service=web,note=a,b=c,tier=front"});
        let labels: BTreeMap<String, String> =
            [("com.docker.compose.service", "web"), ("note", "a,b=c"), ("tier", "front")]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let t = Template::parse("{{.Label \"com.docker.compose.service\"}}|{{.Label \"note\"}}|{{$.Label \"nope\"}}")
            .expect("parse");
        assert_eq!(t.render_row(&row, Some(&labels), false), Ok("web|a,b=c|".into()));
        assert_eq!(t.render_row(&row, Some(&labels), true), Ok("SERVICE|NOTE|NOPE".into()));
        let t = Template::parse("{{if eq (.Label \"tier\") \"front\"}}{{.Names | upper}}{{end}}").expect("parse");
        assert_eq!(t.render_row(&row, Some(&labels), false), Ok("WEB".into()));
        let t = Template::parse("{{.Label \"x\"}}").expect("parse");
        assert_eq!(t.render(&json!({"ID": "1"}), true), Err("this listing has no labels for .Label to read".into()));
        let e = t.render(&json!({"Config": {}}), false).expect_err("inspect has no .Label");
        assert!(e.contains("index .Config.Labels"), "{e}");
        for (bad, want) in [
            ("{{.Label}}", "no field .Label here"),
            ("{{.Label \"a\" \"b\"}}", ".Label is a listing row's, with one key"),
            ("{{.Config.Label \"a\"}}", ".Label is a listing row's, with one key"),
            ("{{$x.Label \"a\"}}", ".Label is a listing row's"),
        ] {
            let e = Template::parse(bad).and_then(|t| t.render_row(&row, Some(&labels), false)).expect_err(bad);
            assert!(e.contains(want), "{bad}: {e:?} does not say {want:?}");
        }
    }

    #[test]
    fn and_or_stop_at_the_argument_that_decides() {
        let v = json!({"Mounts": [], "Name": "web"});
        assert_eq!(render("{{if and .Mounts (index .Mounts 0).Source}}x{{else}}none{{end}}", &v), Ok("none".into()));
        assert_eq!(render("{{or .Name (index .Mounts 0)}}", &v), Ok("web".into()));
        assert_eq!(
            render("{{and .Name 3}}|{{or .Mounts 0}}|{{.Name | and 1}}|{{\"\" | or 0}}", &v),
            Ok("3|0|web|".into())
        );
        assert!(render("{{and}}", &v).expect_err("no argument").contains("and takes at least one argument"));
    }

    #[test]
    fn bad_templates_are_refused_when_parsed_with_the_reason() {
        for (t, want) in [
            ("{{.Name", "unclosed action"),
            ("{{if .A}}x", "{{if}} has no {{end}}"),
            ("x{{end}}", "{{end}} without"),
            ("{{range .A}}x{{else if .B}}y{{end}}", "{{range}} takes {{else}}, not {{else if}}"),
            ("{{else if .A}}", "{{else if}} outside an if"),
            ("{{frobnicate .A}}", "unknown function \"frobnicate\""),
            ("{{.A | .B}}", "only a function can follow |"),
            ("{{$x := .A}}", "only range declares variables"),
            ("{{range $a, $b, $c := .A}}{{end}}", "declare $value or $key, $value"),
            ("{{(.A}}", "a ( with no ) after it"),
            ("{{.A)}}", "a ) with no ( before it"),
            ("{{)}}", "a ) with no ( before it"),
            ("{{if not eq .A 1}}{{end}}", "eq is a function: call it in parentheses, (eq …)"),
            ("{{1 2}}", "\"1\" is not a function"),
            ("{{index () 1}}", "empty command"),
            ("{{(.A).}}", "bad field \".\" after )"),
            ("{{.Name \"x\"}}", "only .Label takes an argument"),
            ("{{\"a\" \"b\"}}", "a string is not a function"),
            ("{{\"abc}}", "unclosed action"),
            ("{{template \"x\"}}", "templates are not supported"),
        ] {
            let e = Template::parse(t).expect_err(t);
            assert!(e.contains(want), "{t}: {e:?} does not say {want:?}");
        }
        let e = render("{{printf \"%x\" 1}}", &json!({})).expect_err("verb");
        assert!(e.contains("%x is not supported"), "{e}");
        let e = render("{{.A.B}}", &json!({"A": "s"})).expect_err("field of a string");
        assert!(e.contains("can't evaluate field B in a string"), "{e}");
    }
}
