//! The layering rules of `src/` as a test (issue 17; DESIGN §3): no import cycle between
//! the top-level modules (the composition root `context.rs` aside: it may name anything and
//! anything may name it), nothing in `session/` imports `server/`, and `context.rs` imports
//! nothing from `session/`.
//!
//! The graph is read from the source text: every `crate::X` path (also inside grouped
//! `crate::{X, Y::..}` imports) and every `super::` path that climbs to the crate root, in
//! code (comment lines are skipped, so doc links do not count), tests included.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The composition root: exempt from the cycle rule.
const ROOT: &str = "context";
/// Edges that must not exist whatever the graph looks like.
const FORBIDDEN: &[(&str, &str)] = &[("session", "server"), ("context", "session")];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `src/a/b/c.rs` is module `[a, b, c]`; `src/a/b/mod.rs` is `[a, b]`; `src/a.rs` is `[a]`.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).expect("file under src/");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if stem != "mod" {
            parts.push(stem.to_string());
        }
    }
    parts
}

fn ident_at(text: &str) -> Option<&str> {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    (end > 0).then(|| &text[..end])
}

/// The top-level modules one line of code names.
fn referenced(line: &str, module: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = line;
    while let Some(i) = rest.find("crate::") {
        let after = &rest[i + "crate::".len()..];
        if let Some(group) = after.strip_prefix('{') {
            // Top-level names of a grouped import: the segments at depth 0 of the braces.
            let mut depth = 0usize;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if c.is_whitespace() => {}
                    _ if start && depth == 0 => {
                        if let Some(id) = ident_at(&group[j..]) {
                            found.push(id.to_string());
                        }
                        start = false;
                    }
                    _ => {}
                }
            }
        } else if let Some(id) = ident_at(after) {
            found.push(id.to_string());
        }
        rest = after;
    }
    // `super::` from a file whose parent is the crate root names a top-level module.
    let mut rest = line;
    while let Some(i) = rest.find("super::") {
        let preceded_by_path = rest[..i].ends_with("::");
        let mut after = &rest[i..];
        let mut climbs = 0;
        while let Some(a) = after.strip_prefix("super::") {
            climbs += 1;
            after = a;
        }
        if !preceded_by_path
            && climbs == module.len()
            && let Some(id) = ident_at(after)
        {
            found.push(id.to_string());
        }
        rest = after;
    }
    found
}

fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let tops: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_path(src, f).into_iter().next())
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut g = Graph::new();
    for file in &files {
        let module = module_path(src, file);
        let Some(top) = module.first().cloned() else {
            continue;
        };
        if top == "lib" || top == "main" {
            continue;
        }
        let text = fs::read_to_string(file).expect("read source file");
        let deps = g.entry(top.clone()).or_default();
        for line in text.lines() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for dep in referenced(line, &module) {
                if dep != top && tops.contains(&dep) {
                    deps.insert(dep);
                }
            }
        }
    }
    g
}

/// A cycle through the graph without `ROOT`, as a path `a -> b -> .. -> a`, if any.
fn find_cycle(g: &Graph) -> Option<Vec<String>> {
    fn visit(
        g: &Graph,
        node: &str,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(pos) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[pos..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) || node == ROOT {
            return None;
        }
        stack.push(node.to_string());
        for next in g.get(node).into_iter().flatten() {
            if let Some(c) = visit(g, next, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in g.keys() {
        if let Some(c) = visit(g, node, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

fn show(g: &Graph) -> String {
    g.iter()
        .map(|(m, deps)| {
            format!(
                "{m} -> {}",
                deps.iter().cloned().collect::<Vec<_>>().join(" ")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn top_level_modules_form_no_cycle_and_keep_their_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&src);
    assert!(g.len() > 5, "the module graph was not read:\n{}", show(&g));
    if let Some(cycle) = find_cycle(&g) {
        panic!(
            "import cycle between top-level modules: {}\n\ngraph:\n{}",
            cycle.join(" -> "),
            show(&g)
        );
    }
    for (from, to) in FORBIDDEN {
        assert!(
            !g.get(*from).is_some_and(|d| d.contains(*to)),
            "{from} must not import {to}\n\ngraph:\n{}",
            show(&g)
        );
    }
}

#[test]
fn the_reader_sees_grouped_imports_and_super_paths() {
    let top = vec!["session".to_string()];
    let nested = vec!["session".to_string(), "relay".to_string()];
    assert_eq!(
        referenced("use crate::{cache::Cache, sql};", &nested),
        ["cache", "sql"]
    );
    assert_eq!(
        referenced("use crate::{a::{b, c}, d::e};", &nested),
        ["a", "d"]
    );
    assert_eq!(
        referenced("let x = crate::cdc::hub::State;", &nested),
        ["cdc"]
    );
    assert_eq!(referenced("use super::server::Workers;", &top), ["server"]);
    assert_eq!(
        referenced("use super::super::server::W;", &nested),
        ["server"]
    );
    assert!(referenced("use super::state::SessionState;", &nested).is_empty());
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert("b".into());
    g.entry("b".into()).or_default().insert("a".into());
    assert_eq!(
        find_cycle(&g),
        Some(vec!["a".into(), "b".into(), "a".into()])
    );
    let mut g = Graph::new();
    g.entry("a".into()).or_default().insert(ROOT.into());
    g.entry(ROOT.into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&g), None);
}
