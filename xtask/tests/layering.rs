//! The xtask crate's shape: no two modules use each other (directly or
//! around a longer cycle), and every module's file opens with a comment
//! saying its job.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Module path (`guest::vm`) -> file, for every `.rs` under src/.
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files
        .into_iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(&src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|l| l == "mod") {
                parts.pop();
            }
            let name = parts.join("::");
            (name != "main" && name != "lib").then_some((name, f))
        })
        .collect()
}

/// The modules a file `use`s, resolved against the known module paths.
fn uses(module: &str, text: &str, known: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let parent: Vec<&str> = {
        let mut p: Vec<&str> = module.split("::").collect();
        p.pop();
        p
    };
    let mut out = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("use ") else {
            continue;
        };
        let (base, rest) = if let Some(r) = rest.strip_prefix("crate::") {
            (Vec::new(), r)
        } else if let Some(r) = rest.strip_prefix("super::") {
            (parent.clone(), r)
        } else {
            continue;
        };
        // `a::b::{c, d}` or `a::{self, X}`: the longest known module prefix
        // of each named path.
        let (prefix, group) = match rest.split_once("::{") {
            Some((p, g)) => (p.to_string(), g.trim_end_matches("};").to_string()),
            None => (rest.trim_end_matches(';').to_string(), String::new()),
        };
        let mut candidates = vec![prefix.clone()];
        for item in group.split(',').map(str::trim).filter(|i| !i.is_empty()) {
            let item = item.split(" as ").next().unwrap();
            if item != "self" {
                candidates.push(format!("{prefix}::{item}"));
            }
        }
        for cand in candidates {
            let mut parts: Vec<&str> = base.clone();
            parts.extend(cand.split("::"));
            while !parts.is_empty() {
                let name = parts.join("::");
                if known.contains_key(&name) {
                    if name != module {
                        out.insert(name);
                    }
                    break;
                }
                parts.pop();
            }
        }
    }
    out
}

#[test]
fn no_module_cycles() {
    let known = modules();
    let graph: BTreeMap<String, BTreeSet<String>> = known
        .iter()
        .map(|(m, f)| (m.clone(), uses(m, &fs::read_to_string(f).unwrap(), &known)))
        .collect();
    assert!(
        graph["guest::run"].contains("guest::vm"),
        "the use parser misses edges: {graph:#?}"
    );
    // Depth-first search for a back edge.
    fn visit(
        m: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(i) = stack.iter().position(|s| s == m) {
            panic!("module cycle: {} -> {m}", stack[i..].join(" -> "));
        }
        stack.push(m.to_string());
        for n in &graph[m] {
            visit(n, graph, stack, done);
        }
        stack.pop();
        done.insert(m.to_string());
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        visit(m, &graph, &mut Vec::new(), &mut done);
    }
}

#[test]
fn every_module_says_its_job() {
    for (m, f) in modules() {
        let text = fs::read_to_string(&f).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} (module {m}) does not open with a `//!` comment",
            f.display()
        );
    }
}
