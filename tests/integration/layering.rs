//! The dependency rule of ARCHITECTURE.md ("## Layers"), held by a test in the
//! spirit of rust-analyzer's tidy tests: every `crate::…` path under `src/`
//! (in `use` items, grouped or not, and in code), and every `super::…` path
//! that climbs out of its top-level module, must name a module of the
//! importer's layer or one below. The layers and the debt list (known
//! violations still to be removed) are read from ARCHITECTURE.md itself, so
//! the document and the test cannot drift apart. Unit tests beside the code
//! follow the same rule as the code they test. The same tidy file holds the
//! length rule: no source file over 500 lines unless ARCHITECTURE.md says why.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One path into another top-level module: where it is and what it names.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Import {
    line: usize,
    module: String,
}

/// One known violation, as the debt list writes it: file, importer, imported.
type Debt = (String, String, String);

/// The layer table and the debt list of ARCHITECTURE.md's "## Layers" section.
struct Rule {
    rank: BTreeMap<String, usize>,
    debt: BTreeSet<Debt>,
}

fn section<'a>(doc: &'a str, heading: &str) -> &'a str {
    // The heading as a line of its own, not a mention of it.
    let line = format!("\n{heading}\n");
    let start = doc.find(&line).unwrap_or_else(|| panic!("ARCHITECTURE.md has no {heading:?}"));
    let body = &doc[start + line.len()..];
    // A section ends at the next heading of the same or a higher level.
    let level = heading.chars().take_while(|c| *c == '#').count();
    let mut end = body.len();
    let mut at = 0;
    for line in body.split_inclusive('\n') {
        let hashes = line.chars().take_while(|c| *c == '#').count();
        if hashes > 0 && hashes <= level && line[hashes..].starts_with(' ') {
            end = at;
            break;
        }
        at += line.len();
    }
    &body[..end]
}

/// The backticked words of `s`, in order.
fn ticked(s: &str) -> Vec<String> {
    s.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

fn parse_rule(doc: &str) -> Rule {
    let layers = section(doc, "## Layers");
    let mut rank = BTreeMap::new();
    for row in layers.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let Ok(n) = cells[0].parse::<usize>() else { continue };
        for m in ticked(cells.get(1).expect("a layer row names its modules")) {
            assert!(rank.insert(m.clone(), n).is_none(), "ARCHITECTURE.md places {m} twice");
        }
    }
    assert!(!rank.is_empty(), "ARCHITECTURE.md's layer table has no rows");
    let mut debt = BTreeSet::new();
    for item in section(layers, "### Debt").lines().filter(|l| l.starts_with("- `")) {
        let (file, rest) = item[3..].split_once("`: ").unwrap_or_else(|| panic!("bad debt line {item:?}"));
        let (from, to) = rest.split_once(" → ").unwrap_or_else(|| panic!("bad debt line {item:?}"));
        debt.insert((file.to_owned(), from.trim().to_owned(), to.trim().trim_end_matches('.').to_owned()));
    }
    Rule { rank, debt }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    Punct(char),
}

/// The tokens of Rust source that matter to paths, with their lines:
/// comments, strings, characters, lifetimes and numbers are skipped, so a
/// path in a doc comment or a literal is not an import.
fn tokens(src: &str) -> Vec<(usize, Tok)> {
    let s: Vec<char> = src.chars().collect();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    let at = |i: usize| s.get(i).copied().unwrap_or('\0');
    // Skips a string body from just after its opening quote, `hashes` being
    // the `#`s of a raw string (None for an ordinary one), counting lines.
    let skip_string = |mut i: usize, hashes: Option<usize>, line: &mut usize| -> usize {
        while i < s.len() {
            match s[i] {
                '\n' => *line += 1,
                '\\' if hashes.is_none() => {
                    if at(i + 1) == '\n' {
                        *line += 1;
                    }
                    i += 1;
                }
                '"' => {
                    let n = hashes.unwrap_or(0);
                    if (1..=n).all(|k| at(i + k) == '#') {
                        return i + 1 + n;
                    }
                }
                _ => {}
            }
            i += 1;
        }
        i
    };
    while i < s.len() {
        let c = s[i];
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            c if c.is_whitespace() => i += 1,
            '/' if at(i + 1) == '/' => {
                while i < s.len() && s[i] != '\n' {
                    i += 1;
                }
            }
            '/' if at(i + 1) == '*' => {
                let mut depth = 0;
                loop {
                    if i >= s.len() {
                        break;
                    }
                    if s[i] == '/' && at(i + 1) == '*' {
                        depth += 1;
                        i += 2;
                    } else if s[i] == '*' && at(i + 1) == '/' {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if s[i] == '\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                }
            }
            '"' => i = skip_string(i + 1, None, &mut line),
            '\'' => {
                if at(i + 1) == '\\' {
                    // An escaped character (`'\''`, `'\u{1F}'`): up to its closing quote.
                    i += 3;
                    while i < s.len() && s[i] != '\'' {
                        i += 1;
                    }
                    i += 1;
                } else if at(i + 2) == '\'' {
                    i += 3;
                } else {
                    // A lifetime or a label: its name lexes as an identifier.
                    i += 1;
                }
            }
            ':' if at(i + 1) == ':' => {
                out.push((line, Tok::Sep));
                i += 2;
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = i;
                while i < s.len() && (s[i].is_alphanumeric() || s[i] == '_') {
                    i += 1;
                }
                let word: String = s[start..i].iter().collect();
                let raw_prefix = matches!(word.as_str(), "r" | "br" | "cr");
                if raw_prefix && (at(i) == '"' || (at(i) == '#' && matches!(at(i + 1), '#' | '"'))) {
                    let mut hashes = 0;
                    while at(i) == '#' {
                        hashes += 1;
                        i += 1;
                    }
                    i = skip_string(i + 1, Some(hashes), &mut line);
                } else if matches!(word.as_str(), "b" | "c") && at(i) == '"' {
                    i = skip_string(i + 1, None, &mut line);
                } else if word == "b" && at(i) == '\'' {
                    // A byte literal: its quote is lexed as a character's.
                } else {
                    out.push((line, Tok::Ident(word)));
                }
            }
            c if c.is_ascii_digit() => {
                while i < s.len()
                    && (s[i].is_alphanumeric() || s[i] == '_' || s[i] == '.' && at(i + 1).is_ascii_digit())
                {
                    i += 1;
                }
            }
            c => {
                out.push((line, Tok::Punct(c)));
                i += 1;
            }
        }
    }
    out
}

/// The top-level modules that `src`'s paths name outside `own`, the module
/// path of the file (`["store", "journal"]` for `src/store/journal.rs`,
/// `["store"]` for `src/store/mod.rs`). Inline modules (`mod tests { … }`)
/// count for `super::`.
fn imports(src: &str, own: &[String]) -> Vec<Import> {
    let toks = tokens(src);
    let ident = |i: usize| match toks.get(i) {
        Some((_, Tok::Ident(w))) => Some(w.as_str()),
        _ => None,
    };
    let is = |i: usize, t: &Tok| toks.get(i).map(|(_, x)| x) == Some(t);
    let mut out = Vec::new();
    // The module path where each token stands: the file's, then inline modules.
    let mut path: Vec<String> = own.to_vec();
    let mut inline: Vec<usize> = Vec::new(); // brace depth at each inline module's `{`
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i].1 {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                if inline.last() == Some(&depth) {
                    inline.pop();
                    path.pop();
                }
                depth = depth.saturating_sub(1);
            }
            Tok::Ident(w) if w == "mod" => {
                if let (Some(name), true) = (ident(i + 1), is(i + 2, &Tok::Punct('{'))) {
                    path.push(name.to_owned());
                    inline.push(depth + 1);
                }
            }
            Tok::Ident(w) if (w == "crate" || w == "super") && is(i + 1, &Tok::Sep) => {
                // Only a path's first segment, and not `$crate` in a macro.
                let continues = i > 0 && (is(i - 1, &Tok::Sep) || is(i - 1, &Tok::Punct('$')));
                if !continues {
                    let mut j = i;
                    let mut at = path.clone();
                    if w == "crate" {
                        at.clear();
                        j += 2;
                    } else {
                        while ident(j) == Some("super") && is(j + 1, &Tok::Sep) {
                            at.pop();
                            j += 2;
                        }
                    }
                    // A path that stays inside its top-level module imports nothing.
                    if at.is_empty() {
                        named(&toks, j, &mut out);
                    }
                    i = j;
                    continue;
                }
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The top-level modules named at token `j`, just after `crate::`: one
/// identifier, or each first identifier of a group `{a::b, c, d::{e, f}}`.
fn named(toks: &[(usize, Tok)], j: usize, out: &mut Vec<Import>) {
    let mut push = |k: usize| {
        if let Some((line, Tok::Ident(m))) = toks.get(k) {
            if m != "self" {
                out.push(Import { line: *line, module: m.clone() });
            }
        }
    };
    if toks.get(j).map(|t| &t.1) != Some(&Tok::Punct('{')) {
        push(j);
        return;
    }
    let mut depth = 0;
    for (k, (_, tok)) in toks.iter().enumerate().skip(j) {
        match tok {
            Tok::Punct('{') => {
                depth += 1;
                if depth == 1 {
                    push(k + 1);
                }
            }
            Tok::Punct('}') => {
                depth -= 1;
                if depth == 0 {
                    return;
                }
            }
            Tok::Punct(',') if depth == 1 => push(k + 1),
            _ => {}
        }
    }
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(rust_files(&p));
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
    out.sort();
    out
}

/// The module path of a file relative to `src/`: `store/journal.rs` →
/// `["store", "journal"]`, `store/mod.rs` → `["store"]`.
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" {
        parts.push(stem.to_owned());
    }
    parts
}

/// The modules `lib.rs` declares: `mod x;` and `pub mod x;`.
fn lib_modules(lib: &str) -> BTreeSet<String> {
    lib.lines()
        .filter_map(|l| l.trim().trim_start_matches("pub ").strip_prefix("mod "))
        .map(|m| m.trim_end_matches(';').trim().to_owned())
        .collect()
}

/// What breaks the rule: (file, line, importer, imported) for each path into
/// a higher layer. Fails on a module the table does not place.
fn violations(root: &Path, rule: &Rule) -> Vec<(String, usize, String, String)> {
    let src = root.join("src");
    let lib = lib_modules(&std::fs::read_to_string(src.join("lib.rs")).unwrap());
    let mut out = Vec::new();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(&src).unwrap();
        let own = module_path(rel);
        let name = format!("src/{}", rel.display());
        if name == "src/lib.rs" {
            continue; // the root: declarations and re-exports, imported by nobody
        }
        let top = &own[0];
        let rank =
            *rule.rank.get(top).unwrap_or_else(|| panic!("ARCHITECTURE.md's layers do not place {top} ({name})"));
        if !lib.contains(top) {
            // The binary crates (main.rs with demo, bin/): `crate::` is their own root.
            continue;
        }
        for import in imports(&std::fs::read_to_string(&file).unwrap(), &own) {
            if &import.module == top {
                continue;
            }
            let theirs = *rule.rank.get(&import.module).unwrap_or_else(|| {
                panic!(
                    "{name}:{}: crate::{} is not a module ARCHITECTURE.md places: import it from its module",
                    import.line, import.module
                )
            });
            if theirs > rank {
                out.push((name.clone(), import.line, top.clone(), import.module));
            }
        }
    }
    out
}

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rule = parse_rule(&std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap());

    // Every module of lib.rs is placed, and every module placed exists.
    let lib = lib_modules(&std::fs::read_to_string(root.join("src/lib.rs")).unwrap());
    for m in &lib {
        assert!(rule.rank.contains_key(m), "ARCHITECTURE.md's layers do not place {m} (src/lib.rs)");
    }
    for m in rule.rank.keys() {
        let exists = root.join("src").join(m).is_dir() || root.join("src").join(format!("{m}.rs")).is_file();
        assert!(exists, "ARCHITECTURE.md's layers place {m}, which src/ does not have");
    }

    let found = violations(root, &rule);
    let layer = |m: &str| rule.rank[m];
    let mut failures: Vec<String> = found
        .iter()
        .filter(|(file, _, from, to)| !rule.debt.contains(&(file.clone(), from.clone(), to.clone())))
        .map(|(file, line, from, to)| {
            format!("{file}:{line}: {from} (layer {}) imports {to} (layer {})", layer(from), layer(to))
        })
        .collect();
    let occurring: BTreeSet<Debt> = found.into_iter().map(|(file, _, from, to)| (file, from, to)).collect();
    for (file, from, to) in rule.debt.difference(&occurring) {
        failures.push(format!("{file}: {from} → {to} no longer occurs: remove it from ARCHITECTURE.md's debt list"));
    }
    assert!(failures.is_empty(), "the layering rule of ARCHITECTURE.md is broken:\n{}", failures.join("\n"));
}

/// The longest a source file under `src/` may be, in lines, unless
/// ARCHITECTURE.md's "## Long files" says why.
const MAX_LINES: usize = 500;

/// Files of "## Long files": each item names its files in backticks before
/// a colon, then says why.
fn long_files(doc: &str) -> BTreeSet<String> {
    section(doc, "## Long files")
        .lines()
        .filter(|l| l.starts_with("- `"))
        .flat_map(|l| ticked(l.split_once("`:").map_or(l, |(files, _)| files)))
        .filter(|f| f.starts_with("src/"))
        .collect()
}

/// No source file is over 500 lines unless ARCHITECTURE.md says why, and
/// the list holds only files that are (so it shrinks as they are split).
#[test]
fn no_source_file_is_over_500_lines_unless_architecture_says_why() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let listed = long_files(&std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap());
    let mut failures = Vec::new();
    let mut long = BTreeSet::new();
    for file in rust_files(&root.join("src")) {
        let name = format!("src/{}", file.strip_prefix(root.join("src")).unwrap().display());
        let lines = std::fs::read_to_string(&file).unwrap().lines().count();
        if lines > MAX_LINES {
            long.insert(name.clone());
            if !listed.contains(&name) {
                failures.push(format!(
                    "{name}: {lines} lines, over {MAX_LINES}: split it, or say why in ARCHITECTURE.md's long files"
                ));
            }
        }
    }
    for name in listed.difference(&long) {
        failures.push(format!(
            "{name} is not over {MAX_LINES} lines (or is gone): remove it from ARCHITECTURE.md's long files"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// ARCHITECTURE.md's codemap matches the tree: every source file is named
/// there in backticks (a `mod.rs` by its folder, any other file by its path
/// or its tail; unit-test files are their module's), and every `src/…` path
/// it names exists.
#[test]
fn the_codemap_names_every_source_file_and_only_files_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let named: BTreeSet<String> = ticked(section(&doc, "## Codemap")).into_iter().collect();
    let mut failures = Vec::new();
    for file in rust_files(&root.join("src")) {
        let rel = file.strip_prefix(root.join("src")).unwrap();
        let full = format!("src/{}", rel.display());
        let base = rel.file_name().unwrap().to_string_lossy().into_owned();
        if base == "tests.rs" {
            continue; // a module's unit tests, beside the code the codemap names
        }
        // A `mod.rs` is named by its folder (`src/agent/joint/` or `joint/`),
        // any other file by its path or the tail of it (`demo/closing.rs`,
        // `closing.rs`).
        let target = if base == "mod.rs" { format!("{}/", full.trim_end_matches("/mod.rs")) } else { full.clone() };
        let found = named.iter().any(|n| target == *n || target.ends_with(&format!("/{n}")));
        if !found {
            failures.push(format!("{full} is not in ARCHITECTURE.md's codemap"));
        }
    }
    for path in named.iter().filter(|p| p.starts_with("src/")) {
        let path = path.split_whitespace().next().unwrap();
        if !root.join(path.trim_end_matches('/')).exists() {
            failures.push(format!("ARCHITECTURE.md's codemap names {path}, which does not exist"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

mod parser {
    use super::*;

    #[test]
    fn reads_every_file_of_a_long_files_item_and_none_of_its_reason() {
        let doc = "# Architecture\n\n## Long files\n\n- `src/a.rs`, `src/b.rs`: one backend each, like `src/c.rs`.\n- `src/d.rs`: why\n\n## Next\n- `src/e.rs`: not this section\n";
        let files: Vec<String> = long_files(doc).into_iter().collect();
        assert_eq!(files, ["src/a.rs", "src/b.rs", "src/d.rs"]);
    }

    fn own(p: &str) -> Vec<String> {
        module_path(Path::new(p))
    }

    #[test]
    fn finds_grouped_multi_line_and_inline_paths_but_not_comments_or_strings() {
        let src = r####"//! Talks of `crate::eval` in a doc comment.
use crate::{
    bandit::Stats,
    agent::{self, Agent},
};
use super::spec::Raw; // stays inside space
/* crate::runtime in a block comment */
fn f() -> &'static str {
    let _ = crate::eval::ab::MIN_OUTCOMES;
    let _ = 'x';
    r#"crate::service in a raw string"#
}
mod tests {
    use super::super::super::store::Store;
    use super::*;
}
"####;
        let found: Vec<(usize, String)> =
            imports(src, &own("space/spec.rs")).into_iter().map(|i| (i.line, i.module)).collect();
        let expected = [(3, "bandit"), (4, "agent"), (9, "eval"), (14, "store")];
        assert_eq!(found, expected.map(|(l, m)| (l, m.to_owned())));
    }

    #[test]
    fn a_top_level_file_climbs_to_the_root_with_one_super() {
        let found = imports("use super::agent::Agent;\nuse self::x::Y;", &own("runtime.rs"));
        assert_eq!(found, vec![Import { line: 1, module: "agent".into() }]);
    }

    #[test]
    fn reads_the_layer_table_and_the_debt_list() {
        let doc = "# A\n## Layers\n| Layer | Modules |\n|---|---|\n| 0 | `space`, `bandit` |\n| 1 | `eval` |\n\
                   ### Debt\n- `src/space/spec.rs`: space → eval.\n## Next\n| 9 | `ignored` |\n";
        let rule = parse_rule(doc);
        assert_eq!(
            rule.rank.into_iter().collect::<Vec<_>>(),
            [("bandit".into(), 0), ("eval".into(), 1), ("space".into(), 0)]
        );
        let debt: Vec<Debt> = rule.debt.into_iter().collect();
        assert_eq!(debt, [("src/space/spec.rs".into(), "space".into(), "eval".into())]);
    }
}
