//! What Weir reads from Rego source before compiling it (host only, at `weir bundle`):
//! which input fields a policy reads, and imports spelled out so regorus's VM can call
//! the imported rules directly.
//!
//! This is a scanner, not a parser: it only has to tell code from strings and comments
//! and split code into words and symbols. Every answer errs on the safe side (all input
//! fields; an import left as it is), and the VM's decisions are checked against the
//! interpreter's on the original source anyway.

/// A word (identifier, keyword or number), a double-quoted string (quotes included) or
/// one other character of Rego code, outside comments and raw strings, with its byte
/// offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Token<'a> {
    text: &'a str,
    at: usize,
}

impl Token<'_> {
    fn end(&self) -> usize {
        self.at + self.text.len()
    }

    /// An identifier (not a number).
    fn is_name(&self) -> bool {
        self.text
            .bytes()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn tokens(text: &str) -> Vec<Token<'_>> {
    let b = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(b.len());
                // Ends after an ASCII quote, or at the end of the text: a char boundary.
                if let Some(string) = text.get(start..i) {
                    out.push(Token {
                        text: string,
                        at: start,
                    });
                }
            }
            b'`' => {
                i += 1;
                while i < b.len() && b[i] != b'`' {
                    i += 1;
                }
                i += 1;
            }
            c if c.is_ascii_whitespace() => i += 1,
            c if is_word_byte(c) => {
                let start = i;
                while i < b.len() && is_word_byte(b[i]) {
                    i += 1;
                }
                out.push(Token {
                    text: &text[start..i],
                    at: start,
                });
            }
            _ => {
                let len = text[i..].chars().next().map_or(1, char::len_utf8);
                out.push(Token {
                    text: &text[i..i + len],
                    at: i,
                });
                i += len;
            }
        }
    }
    out
}

/// The top-level fields of `input` that Rego sources read, when every use of `input` is
/// `input.<field>` outside strings and comments; `None` (all fields) for any other use
/// (`input[x]`, `f(input)`, `x := input`), so the answer never leaves out a field.
///
/// The members of the fields in [`INPUT_FIELDS_BY_MEMBER`] are found too, when spelled
/// `input.<field>.<member>` (`"directives.user"`); any other use of such a field reads it
/// whole (`"directives"`).
pub fn referenced_input_fields<'a>(texts: impl Iterator<Item = &'a str>) -> Option<Vec<String>> {
    let mut fields = std::collections::BTreeSet::new();
    for text in texts {
        let toks = tokens(text);
        for (i, t) in toks.iter().enumerate() {
            if t.text != "input" {
                continue;
            }
            // Any use but `input.<name>` could read any field.
            let field = dotted_name(&toks, i)?;
            match dotted_name(&toks, i + 2) {
                Some("headers") if field == "request" => match header_name(&toks, i + 4) {
                    Some(name) => fields.insert(format!("request.headers.{name}")),
                    None => fields.insert("request.headers".to_string()),
                },
                Some(member) if INPUT_FIELDS_BY_MEMBER.contains(&field) => {
                    fields.insert(format!("{field}.{member}"))
                }
                _ => fields.insert(field.to_string()),
            };
        }
    }
    Some(fields.into_iter().collect())
}

/// Input fields whose members are told apart: each holds one member that changes with
/// every request (`request.id`, `directives.run_id`) beside members that repeat.
pub const INPUT_FIELDS_BY_MEMBER: [&str; 2] = ["request", "directives"];

/// The name after token `i` when it is `.name`, written without spaces.
fn dotted_name<'a>(toks: &[Token<'a>], i: usize) -> Option<&'a str> {
    let (t, dot, name) = (toks.get(i)?, toks.get(i + 1)?, toks.get(i + 2)?);
    (dot.text == "." && dot.at == t.end() && name.at == dot.end() && name.is_name())
        .then_some(name.text)
}

/// The header named after token `i` (`headers`): `.name` or `["name"]`, written without
/// spaces, the name of letters, digits, `-` and `_` only (no escapes, no dots).
fn header_name<'a>(toks: &[Token<'a>], i: usize) -> Option<&'a str> {
    if let Some(name) = dotted_name(toks, i) {
        return Some(name);
    }
    let (t, open, string, close) = (
        toks.get(i)?,
        toks.get(i + 1)?,
        toks.get(i + 2)?,
        toks.get(i + 3)?,
    );
    let name = string.text.strip_prefix('"')?.strip_suffix('"')?;
    let simple = !name.is_empty()
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    (open.text == "["
        && open.at == t.end()
        && string.at == open.end()
        && close.text == "]"
        && close.at == string.end()
        && simple)
        .then_some(name)
}

/// `data.a.b` for a module that starts with `package a.b`.
fn package_of(toks: &[Token<'_>]) -> Option<String> {
    if toks.first()?.text != "package" {
        return None;
    }
    let mut path = String::from("data");
    let mut i = 1;
    while toks.get(i).is_some_and(Token::is_name) {
        path.push('.');
        path.push_str(toks[i].text);
        if toks.get(i + 1).is_none_or(|t| t.text != ".") {
            break;
        }
        i += 2;
    }
    (path != "data").then_some(path)
}

/// The `data.a.b` paths a module names (in imports or in code), each as far as it is
/// spelled with dots; `None` when it uses `data` otherwise (`data[x]`, bare `data`),
/// which could reach any package.
fn data_paths(toks: &[Token<'_>]) -> Option<Vec<String>> {
    let mut paths = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        // `x.data` is a field of `x`, not the root document.
        if t.text != "data" || (i > 0 && toks[i - 1].text == "." && toks[i - 1].end() == t.at) {
            continue;
        }
        let mut path = String::from("data");
        let mut j = i;
        while toks.get(j + 1).is_some_and(|d| d.text == ".")
            && toks.get(j + 2).is_some_and(Token::is_name)
        {
            path.push('.');
            path.push_str(toks[j + 2].text);
            j += 2;
        }
        if j == i {
            return None;
        }
        paths.push(path);
    }
    Some(paths)
}

/// Whether a reference to `path` may reach rules of package `package`: one is the other
/// or inside it.
fn reaches(path: &str, package: &str) -> bool {
    let inside = |a: &str, b: &str| a.strip_prefix(b).is_some_and(|rest| rest.starts_with('.'));
    path == package || inside(path, package) || inside(package, path)
}

/// The indices of the modules whose rules package `package` (`data.a.b`) may use: its own
/// modules and, transitively, every module whose package one of them names. `None` (all
/// of them) when a module has no package line, uses `data` dynamically, or none is
/// `package`'s own.
pub fn modules_used_by(texts: &[&str], package: &str) -> Option<Vec<usize>> {
    let mut packages = Vec::new();
    let mut paths = Vec::new();
    for text in texts {
        let toks = tokens(text);
        packages.push(package_of(&toks)?);
        paths.push(data_paths(&toks)?);
    }
    let mut used: Vec<usize> = (0..texts.len())
        .filter(|&i| packages[i] == package)
        .collect();
    if used.is_empty() {
        return None;
    }
    let mut next = 0;
    while next < used.len() {
        let module = used[next];
        next += 1;
        for path in &paths[module] {
            for (j, p) in packages.iter().enumerate() {
                if !used.contains(&j) && reaches(path, p) {
                    used.push(j);
                }
            }
        }
    }
    used.sort_unstable();
    Some(used)
}

/// One `import data.a.b [as c]`: tokens `first..=last`, the name it binds, its path.
struct Import {
    first: usize,
    last: usize,
    alias: String,
    path: String,
}

/// `import data.<name>(.<name>)* [as <name>]` starting at token `i`.
fn import_at(toks: &[Token<'_>], i: usize) -> Option<Import> {
    let is = |j: usize, s: &str| toks.get(j).is_some_and(|t| t.text == s);
    if !is(i, "import") || (i > 0 && is(i - 1, ".")) || !is(i + 1, "data") {
        return None;
    }
    let mut path = String::from("data");
    let mut last = i + 1;
    while is(last + 1, ".") && toks.get(last + 2).is_some_and(Token::is_name) {
        path.push('.');
        path.push_str(toks[last + 2].text);
        last += 2;
    }
    if last == i + 1 || is(last + 1, "[") || is(last + 1, ".") {
        return None;
    }
    let mut alias = toks[last].text.to_string();
    if is(last + 1, "as") && toks.get(last + 2).is_some_and(Token::is_name) {
        alias = toks[last + 2].text.to_string();
        last += 2;
    }
    Some(Import {
        first: i,
        last,
        alias,
        path,
    })
}

/// `text` with every `alias.x` / `alias[x]` of a `data` import written as the full
/// `data.a.b.x`. Same meaning, but regorus's VM resolves an import alias by building the
/// whole imported package as one object (every rule in it, on every request) and then
/// indexing it; a full path calls just the rule. An alias used any other way (bare, as a
/// variable or a rule name) is left alone; so is everything outside code.
pub fn inline_imports(text: &str) -> String {
    let toks = tokens(text);
    let imports: Vec<Import> = (0..toks.len())
        .filter_map(|i| import_at(&toks, i))
        .collect();
    let in_import = |j: usize| imports.iter().any(|m| (m.first..=m.last).contains(&j));
    let mut edits: Vec<(usize, usize, &str)> = Vec::new();
    for import in &imports {
        // Two imports binding one name is an error Rego reports; leave that source alone.
        if imports.iter().filter(|m| m.alias == import.alias).count() > 1 {
            continue;
        }
        let mut uses = Vec::new();
        let mut only_as_prefix = true;
        for (j, t) in toks.iter().enumerate() {
            if t.text != import.alias || in_import(j) || (j > 0 && toks[j - 1].text == ".") {
                continue;
            }
            match toks.get(j + 1) {
                Some(next) if (next.text == "." || next.text == "[") && next.at == t.end() => {
                    uses.push((t.at, t.end(), import.path.as_str()));
                }
                _ => only_as_prefix = false,
            }
        }
        if only_as_prefix {
            edits.extend(uses);
        }
    }
    edits.sort_unstable();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (start, end, path) in edits {
        if start < copied {
            continue; // never two edits of one token (see above); never a panic either
        }
        out.push_str(&text[copied..start]);
        out.push_str(path);
        copied = end;
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_modules_a_policy_uses_are_found() {
        let lib = "package weir.lib.baseline\nimport data.weir.lib.util\ndeny contains 1 if data.plans[input.caller.team]";
        let util = "package weir.lib.util\nf(x) := x";
        let standard = "package weir.policy.standard\nimport data.weir.lib.baseline\ndeny contains m if some m in baseline.deny";
        let dlp = "package weir.policy.dlp\ndeny contains 1 if input.messages";
        let dlp_more = "package weir.policy.dlp\ndeny contains 2 if data.weir.lib.util.f(1)";
        let texts = [lib, util, standard, dlp, dlp_more];
        // Through the import, and on through the library's own import.
        assert_eq!(
            modules_used_by(&texts, "data.weir.policy.standard"),
            Some(vec![0, 1, 2])
        );
        // Every module of the package, and a full path in code.
        assert_eq!(
            modules_used_by(&texts, "data.weir.policy.dlp"),
            Some(vec![1, 3, 4])
        );
        // A path above a package reaches it; `x.data` is not the root document.
        let parent = "package weir.policy.p\nx := data.weir.lib\ny := input.data.z";
        assert_eq!(
            modules_used_by(&[util, parent], "data.weir.policy.p"),
            Some(vec![0, 1])
        );
        let own = "package weir.policy.p\ny := input.data.z";
        assert_eq!(
            modules_used_by(&[util, own], "data.weir.policy.p"),
            Some(vec![1])
        );
        // Anything the scanner cannot follow means every module.
        for other in [
            "package weir.lib.x\ny := data[\"weir\"]",
            "package weir.lib.x\ny := data",
            "x := 1",
        ] {
            assert_eq!(
                modules_used_by(&[own, other], "data.weir.policy.p"),
                None,
                "{other}"
            );
        }
        assert_eq!(modules_used_by(&[util], "data.weir.policy.p"), None);
    }

    #[test]
    fn the_input_fields_read_are_found() {
        let of = |t: &str| referenced_input_fields([t].into_iter());
        // Strings and comments do not count; imports do.
        assert_eq!(
            of("import input.request as r\n# input[x]\np := \"input\" if `input` == r.id\n"),
            Some(vec!["request".to_string()])
        );
        assert_eq!(
            of("a if input.caller.team == \"x\"\nb if input.model.requested\nc := input.caller"),
            Some(vec!["caller".to_string(), "model".to_string()])
        );
        // Any other use of `input` means every field.
        for t in [
            "x := input[\"caller\"]",
            "x := object.get(input, \"caller\", 1)",
            "x := input",
            "x := input.",
            "x := input . caller",
            "x := input.1",
        ] {
            assert_eq!(of(t), None, "{t}");
        }
        assert_eq!(of("my_input := 1\ninputs := 2"), Some(vec![]));
        // The members of `request` and `directives` are told apart; any other use of them
        // (a bracket, a bare reference, an import) reads them whole.
        let fields = |v: &[&str]| Some(v.iter().map(|f| f.to_string()).collect::<Vec<_>>());
        assert_eq!(
            of("a if input.directives.user == \"m\"\nb if input.request.endpoint\nc if input.caller.team.x"),
            fields(&["caller", "directives.user", "request.endpoint"])
        );
        assert_eq!(
            of("t if input.directives.tags[_] == \"x\"\nh := input.request.headers[k]"),
            fields(&["directives.tags", "request.headers"])
        );
        // Headers by name, when named plainly; else all of them.
        assert_eq!(
            of("a if input.request.headers[\"user-agent\"] == \"x\"\nb := input.request.headers.x_team"),
            fields(&["request.headers.user-agent", "request.headers.x_team"])
        );
        for t in [
            "a := input.request.headers",
            "a := input.request.headers[\"a.b\"]",
            "a := input.request.headers[\"a\\u0041\"]",
            "a := input.request.headers[\"\"]",
            "a := input.request.headers [\"a\"]",
            "a := input.request.headers[ \"a\"]",
            "a := input.request.headers[\"a\" ]",
            "a := input.request.headers[\"a\"",
            "a := input.request.headers[\"a",
        ] {
            assert_eq!(of(t), fields(&["request.headers"]), "{t}");
        }
        for (t, whole) in [
            ("a if input.directives[\"user\"]", "directives"),
            ("d := input.directives\nx := d.user", "directives"),
            ("a if input.directives .user", "directives"),
            ("a if input.directives. user", "directives"),
            ("import input.request\nx := request.id", "request"),
            ("a if input.request.1", "request"),
        ] {
            assert_eq!(of(t), fields(&[whole]), "{t}");
        }
        assert_eq!(
            of("a if input.directives.user\nb if input.directives[k]"),
            fields(&["directives", "directives.user"])
        );
        assert_eq!(of("s := \"é input\" # ü input\n"), Some(vec![]));
    }

    #[test]
    fn imports_are_spelled_out() {
        let text = "package p\n\nimport data.weir.lib.baseline\nimport data.caps as limits\n\n\
                    deny contains m if some m in baseline.deny\n\
                    cap := limits[input.team]\n\
                    x := y.baseline.z # baseline.deny\n\
                    s := \"baseline.deny\"\n";
        assert_eq!(
            inline_imports(text),
            "package p\n\nimport data.weir.lib.baseline\nimport data.caps as limits\n\n\
             deny contains m if some m in data.weir.lib.baseline.deny\n\
             cap := data.caps[input.team]\n\
             x := y.baseline.z # baseline.deny\n\
             s := \"baseline.deny\"\n"
        );
    }

    #[test]
    fn imports_used_otherwise_are_left_alone() {
        for text in [
            // Bare, shadowed by a variable, or a rule of that name.
            "import data.lib\nx := lib\ny := lib.a\n",
            "import data.lib\nf(lib) := lib.a\n",
            "import data.lib\nx if { some lib in [1]; lib.a }\n",
            // Spaced out, or not a plain dotted path.
            "import data.lib\nx := lib .a\n",
            "import data.lib[\"a-b\"]\nx := lib.c\n",
            "import data\nx := data.a\n",
            // Not data.
            "import input.request as r\nx := r.id\n",
            // One name bound twice.
            "import data.a.lib\nimport data.b.lib\nx := lib.c\n",
            "import data.a as l\nimport data.b as l\nx := l.c\n",
            "import rego.v1\nx := v1.a\n",
        ] {
            assert_eq!(inline_imports(text), text, "{text}");
        }
    }
}
