//! The shape of the code, checked like behaviour: no module of either
//! program imports one that imports it back (directly or around a circle),
//! no function on the sidecar's data path is longer than a screen, and no
//! library function reports failure as a bare `String`.
//!
//! Read from the source as text: `use crate::…`, `crate::…` paths and
//! `super::…` paths name the files a file depends on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace")
        .to_path_buf()
}

/// Every `.rs` file below `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir") {
            let p = entry.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The module path of a file of a crate's `src/` (`proxy/outbound/mod.rs` →
/// `proxy::outbound`; `lib.rs` → ``).
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" && stem != "main" {
        parts.push(stem.to_string());
    }
    parts.join("::")
}

/// The source without comments and without `#[cfg(test)]` modules (tests
/// may reach anywhere).
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut skip_depth: Option<usize> = None;
    let mut depth = 0usize;
    let mut pending_cfg_test = false;
    for line in text.lines() {
        let l = line.split("//").next().unwrap_or("");
        let t = l.trim();
        if skip_depth.is_none() && t.starts_with("#[cfg(test)]") {
            pending_cfg_test = true;
            continue;
        }
        if pending_cfg_test && t.starts_with("mod ") && t.ends_with('{') {
            skip_depth = Some(depth);
            pending_cfg_test = false;
        } else if pending_cfg_test && !t.is_empty() {
            pending_cfg_test = false;
        }
        let opens = l.matches('{').count();
        let closes = l.matches('}').count();
        depth = depth + opens - closes.min(depth + opens);
        match skip_depth {
            Some(d) if depth <= d && closes > 0 => skip_depth = None,
            Some(_) => {}
            None => {
                out.push_str(l);
                out.push('\n');
            }
        }
    }
    out
}

/// The modules `text` (of module `me`) names: `crate::a::b::…` and
/// `super::…` paths, including inside `use crate::{a, b::c}` groups.
fn references(me: &str, is_mod_file: bool, text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let here: Vec<&str> = if me.is_empty() {
        vec![]
    } else {
        me.split("::").collect()
    };
    // The module `super` names: the parent of a `mod.rs`'s own module, or
    // of a plain file's module.
    let parent_of = |levels: usize| -> Vec<String> {
        let base = if is_mod_file {
            here.len()
        } else {
            here.len().saturating_sub(1)
        };
        here[..base.saturating_sub(levels.saturating_sub(1))]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !text.is_char_boundary(i) {
            i += 1;
            continue;
        }
        let rest = &text[i..];
        let (prefix, base): (&str, Vec<String>) = if rest.starts_with("crate::") {
            ("crate::", vec![])
        } else if rest.starts_with("super::super::") {
            ("super::super::", parent_of(2))
        } else if rest.starts_with("super::") {
            ("super::", parent_of(1))
        } else {
            i += 1;
            continue;
        };
        let prev_ok = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        i += prefix.len();
        if !prev_ok {
            continue;
        }
        for path in expand(&text[i..]) {
            let mut full = base.clone();
            full.extend(path);
            out.insert(full.join("::"));
        }
    }
    out
}

/// The paths written at the start of `s`: `a::b::C` or `{a, b::{c, d}}`.
fn expand(s: &str) -> Vec<Vec<String>> {
    let ident: String = s
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if s.starts_with('{') {
        let mut depth = 0;
        let mut end = 0;
        for (k, c) in s.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = k;
                        break;
                    }
                }
                _ => {}
            }
        }
        let inner = &s[1..end];
        let mut items = Vec::new();
        let (mut depth, mut start) = (0, 0);
        for (k, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    items.push(inner[start..k].trim());
                    start = k + 1;
                }
                _ => {}
            }
        }
        items.push(inner[start..].trim());
        return items
            .into_iter()
            .filter(|x| !x.is_empty())
            .flat_map(expand)
            .collect();
    }
    if ident.is_empty() {
        return vec![vec![]];
    }
    let after = &s[ident.len()..];
    if let Some(more) = after.strip_prefix("::") {
        return expand(more)
            .into_iter()
            .map(|mut p| {
                p.insert(0, ident.clone());
                p
            })
            .collect();
    }
    vec![vec![ident]]
}

/// File-level dependency graph of one crate's `src/`.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let files = files(src);
    let modules: BTreeMap<String, PathBuf> = files
        .iter()
        .filter(|f| !f.ends_with("main.rs") && !f.starts_with(src.join("bin")))
        .map(|f| (module_of(src, f), f.clone()))
        .collect();
    let mut g = BTreeMap::new();
    for (m, f) in &modules {
        let text = code(&std::fs::read_to_string(f).expect("read"));
        let is_mod = f.ends_with("mod.rs") || f.ends_with("lib.rs");
        let mut deps = BTreeSet::new();
        for r in references(m, is_mod, &text) {
            // The longest module that the path starts with.
            let mut parts: Vec<&str> = r.split("::").collect();
            while !parts.is_empty() {
                let cand = parts.join("::");
                if modules.contains_key(&cand) {
                    break;
                }
                parts.pop();
            }
            let target = parts.join("::");
            // A file's own children and the crate root are not edges of
            // interest: a parent declares its children.
            if target != *m && !target.is_empty() && !target.starts_with(&format!("{m}::")) {
                deps.insert(target);
            }
        }
        // A parent module that only declares and re-exports its children
        // is how Rust spells a folder: its edges to them are not imports.
        g.insert(m.clone(), deps);
    }
    g
}

/// The strongly connected sets of more than one module (Tarjan).
fn circles(g: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.g.contains_key(w) {
                continue;
            }
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(lw));
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low[v];
                t.low.insert(v, lv.min(iw));
            }
        }
        if t.low[v] == t.index[v] {
            let mut set = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                set.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if set.len() > 1 {
                set.sort();
                t.out.push(set);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

/// Which modules of a circle name which: the evidence for a failure.
fn explain(g: &BTreeMap<String, BTreeSet<String>>, circle: &[String]) -> String {
    let mut lines = Vec::new();
    for a in circle {
        for b in circle {
            if g.get(a).is_some_and(|d| d.contains(b)) {
                lines.push(format!("  {a} -> {b}"));
            }
        }
    }
    lines.join("\n")
}

/// The same graph between top-level modules (a folder counts as one).
fn folders(g: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    let top = |m: &str| m.split("::").next().unwrap_or("").to_string();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, deps) in g {
        let entry = out.entry(top(m)).or_default();
        entry.extend(deps.iter().map(|d| top(d)).filter(|d| *d != top(m)));
    }
    out
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let mut problems = Vec::new();
    for krate in ["sidecar", "control-plane", "proto"] {
        let src = root().join(krate).join("src");
        let files = graph(&src);
        for g in [folders(&files), files] {
            for c in circles(&g) {
                problems.push(format!("{krate}: {}\n{}", c.join(", "), explain(&g, &c)));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "import circles:\n{}",
        problems.join("\n")
    );
}

/// The functions of a file longer than `max` lines, with their lengths.
fn long_functions(text: &str, max: usize) -> Vec<(String, usize)> {
    let code = code(text);
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        let indent = lines[i].len() - t.len();
        let head = t
            .trim_start_matches("pub(crate) ")
            .trim_start_matches("pub(super) ")
            .trim_start_matches("pub ")
            .trim_start_matches("const ")
            .trim_start_matches("async ");
        if !head.starts_with("fn ") || t.ends_with('}') || t.ends_with(';') {
            i += 1;
            continue;
        }
        let name: String = t
            .split("fn ")
            .nth(1)
            .unwrap_or("")
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // The body ends at the first line that closes at the same indent.
        let close = " ".repeat(indent) + "}";
        let end = (i + 1..lines.len()).find(|&k| lines[k] == close);
        match end {
            Some(k) => {
                let len = k - i + 1;
                if len > max {
                    out.push((name, len));
                }
                i = k + 1;
            }
            None => i += 1, // a declaration without a body
        }
    }
    out
}

#[test]
fn no_function_on_the_data_path_is_longer_than_a_screen() {
    const MAX: usize = 80;
    let mut problems = Vec::new();
    for dir in ["sidecar/src/proxy", "sidecar/src/resilience"] {
        for f in files(&root().join(dir)) {
            let text = std::fs::read_to_string(&f).expect("read");
            for (name, len) in long_functions(&text, MAX) {
                problems.push(format!("{}: fn {name}: {len} lines", f.display()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "functions over {MAX} lines:\n{}",
        problems.join("\n")
    );
}

#[test]
fn libraries_name_their_errors() {
    let mut problems = Vec::new();
    for krate in ["sidecar", "control-plane", "proto"] {
        for f in files(&root().join(krate).join("src")) {
            let text = code(&std::fs::read_to_string(&f).expect("read"));
            for (n, line) in text.lines().enumerate() {
                let flat: String = line.split_whitespace().collect();
                if flat.contains(",String>") && flat.contains("Result<") {
                    problems.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "Result<_, String> (give the error a type that says what failed):\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checks_see_what_they_check() {
    // A circle of three is found, and names its edges.
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["c".to_string()]));
    g.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    g.insert("d".to_string(), BTreeSet::from(["a".to_string()]));
    assert_eq!(circles(&g), vec![vec!["a", "b", "c"]]);
    // Paths in groups, `super`, and test modules left out.
    let text = "use crate::{a::B, b::{c::D, E}};\nfn f() { super::x::y(); }\n#[cfg(test)]\nmod tests {\n    use crate::z;\n}\n";
    let refs = references("m::n", false, &code(text));
    assert!(refs.contains("a::B") && refs.contains("b::c::D") && refs.contains("b::E"));
    assert!(refs.contains("m::x::y"), "{refs:?}");
    assert!(!refs.iter().any(|r| r.starts_with('z')), "{refs:?}");
    // A long function is measured; a short one is not.
    let long = format!(
        "fn long() {{\n{}}}\nfn short() {{\n}}\n",
        "    x();\n".repeat(90)
    );
    assert_eq!(long_functions(&long, 80), vec![("long".to_string(), 92)]);
}
