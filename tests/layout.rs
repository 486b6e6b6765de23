//! The shape of the source tree, checked: no import cycle between the files of
//! `src/` (a request reads top to bottom), and no file over 500 lines without a
//! one-line reason at its top (`//! Long because: …`).
//!
//! Each `.rs` file is a node. A path in the code (`crate::a::b`, `super::c`,
//! `self::d`) is an edge to the deepest file that path names. A directory's
//! `mod.rs` may re-export and drive its children, so its children must name
//! their siblings directly, never through it: that is what keeps facades out
//! of cycles.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Module path (e.g. `["server", "api"]`) of every file under `src/`.
fn modules(root: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let rel = path.strip_prefix(root).unwrap();
            let mut parts: Vec<String> = rel
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
                .collect();
            if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
                parts.pop();
            }
            // The binary's own modules (main.rs, cli.rs, demo.rs, config_file.rs) are a crate of
            // their own; they only use the library, so leave them out.
            if parts == ["main"]
                || parts == ["cli"]
                || parts == ["demo"]
                || parts == ["config_file"]
            {
                continue;
            }
            out.insert(parts, path);
        }
    }
    out
}

/// Code without comments, string literals (so doc text is not read as paths)
/// and the unit tests at the end of a file (their `super` is the file itself).
fn code_only(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or(text);
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// Paths mentioned in `code`, expanded through `use a::{b, c::{d}}` groups.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    // `use` trees; everything else is searched for inline paths below.
    let mut rest = String::new();
    for stmt in code.split(';') {
        let is_use = stmt.find("use ").filter(|&start| {
            let before = stmt[..start].trim_end();
            before.is_empty()
                || before.ends_with("pub")
                || before.ends_with(')')
                || before.ends_with('}')
                || before.ends_with(']')
        });
        match is_use {
            Some(start) => {
                rest.push_str(&stmt[..start]);
                expand(&stmt[start + 4..], Vec::new(), &mut found);
            }
            None => rest.push_str(stmt),
        }
        rest.push(';');
    }
    let code = rest.as_str();
    // Inline paths such as `crate::agent::X`, `super::reply::Failure` or a
    // child's `tunnel::SHUTDOWN_DRAIN`: every `a::b…` not itself inside a path.
    let chars: Vec<char> = code.chars().collect();
    let is_ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut i = 0;
    while i < chars.len() {
        let starts =
            is_ident(chars[i]) && (i == 0 || !(is_ident(chars[i - 1]) || chars[i - 1] == ':'));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < chars.len() && (is_ident(chars[j]) || chars[j] == ':') {
            j += 1;
        }
        let text: String = chars[i..j].iter().collect();
        // `a::{…}` (a group in a `use`) is expanded above, not here.
        if text.contains("::") && !text.ends_with("::") {
            found.push(
                text.split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            );
        }
        i = j;
    }
    found
}

fn expand(tree: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head: Vec<String> = tree[..open]
            .split("::")
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let mut base = prefix;
        base.extend(head);
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut depth = 0;
        let mut part = String::new();
        for c in inner.chars() {
            match c {
                '{' => {
                    depth += 1;
                    part.push(c)
                }
                '}' => {
                    depth -= 1;
                    part.push(c)
                }
                ',' if depth == 0 => {
                    expand(&part, base.clone(), out);
                    part.clear();
                }
                _ => part.push(c),
            }
        }
        expand(&part, base, out);
    } else if !tree.is_empty() {
        let mut path = prefix;
        let tree = tree.split(" as ").next().unwrap_or(tree);
        path.extend(
            tree.split("::")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string),
        );
        out.push(path);
    }
}

/// The file a path names, seen from module `here`: the deepest known module.
fn resolve(
    here: &[String],
    path: &[String],
    known: &BTreeMap<Vec<String>, PathBuf>,
) -> Option<Vec<String>> {
    let mut absolute: Vec<String> = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("super") | Some("self") => {
            // Resolved relative to the module `here` (a file's own module).
            let mut base = here.to_vec();
            let mut rest = path;
            loop {
                match rest.first().map(String::as_str) {
                    Some("super") => {
                        base.pop();
                        rest = &rest[1..];
                    }
                    Some("self") => rest = &rest[1..],
                    _ => break,
                }
            }
            let mut full = base;
            full.extend(rest.iter().cloned());
            return deepest(&full, known);
        }
        // A child module of this one, named without `self::` (2018 paths).
        Some(_) => {
            let mut full = here.to_vec();
            full.extend(path.iter().cloned());
            if !known.contains_key(&full[..here.len() + 1]) {
                return None; // another crate
            }
            return deepest(&full, known);
        }
        None => return None,
    };
    absolute.extend(path[1..].iter().cloned());
    deepest(&absolute, known)
}

fn deepest(path: &[String], known: &BTreeMap<Vec<String>, PathBuf>) -> Option<Vec<String>> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| known.contains_key(p))
}

#[test]
fn no_import_cycles_in_src() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let known = modules(&root);
    let mut edges: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = BTreeMap::new();
    // Which path made each edge, to say why in a failure.
    let mut because: BTreeMap<(Vec<String>, Vec<String>), String> = BTreeMap::new();
    for (module, file) in &known {
        let code = code_only(&std::fs::read_to_string(file).unwrap());
        let targets = edges.entry(module.clone()).or_default();
        for path in paths(&code) {
            if let Some(target) = resolve(module, &path, &known) {
                // A file naming an item of its own module, or its own child
                // through `self::`, is not an edge to something else.
                if &target != module {
                    because
                        .entry((module.clone(), target.clone()))
                        .or_insert_with(|| path.join("::"));
                    targets.insert(target);
                }
            }
        }
    }
    // Depth-first search for a cycle, reporting the first one found.
    fn visit(
        node: &Vec<String>,
        edges: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        trail: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        match state.get(node) {
            Some(2) => return None,
            Some(1) => {
                let start = trail.iter().position(|n| n == node).unwrap();
                let mut cycle = trail[start..].to_vec();
                cycle.push(node.clone());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(node.clone(), 1);
        trail.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, state, trail) {
                return Some(cycle);
            }
        }
        trail.pop();
        state.insert(node.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in edges.keys() {
        if let Some(cycle) = visit(node, &edges, &mut state, &mut Vec::new()) {
            let name = |m: &Vec<String>| {
                if m.is_empty() {
                    "lib".into()
                } else {
                    m.join("::")
                }
            };
            let steps: Vec<String> = cycle
                .windows(2)
                .map(|w| {
                    format!(
                        "{} → {} (by `{}`)",
                        name(&w[0]),
                        name(&w[1]),
                        because[&(w[0].clone(), w[1].clone())]
                    )
                })
                .collect();
            panic!("import cycle in src/: {}", steps.join("; "));
        }
    }
    // The checker itself sees edges (so a broken parser cannot pass vacuously).
    let server_route = vec!["server".to_string(), "route".to_string()];
    assert!(
        edges[&server_route].contains(&vec!["server".to_string(), "local".to_string()]),
        "server::route is seen to use server::local"
    );
}

#[test]
fn long_files_say_why() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut long = Vec::new();
    for dir in ["src", "proto/src"] {
        for file in modules(&root.join(dir)).into_values() {
            let text = std::fs::read_to_string(&file).unwrap();
            let lines = text.lines().count();
            let reason = text
                .lines()
                .take_while(|l| l.starts_with("//!"))
                .any(|l| l.contains("Long because:"));
            if lines > 500 && !reason {
                long.push(format!("{} ({lines} lines)", file.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "files over 500 lines need a `//! Long because: …` line at the top: {long:?}"
    );
}

#[test]
fn use_trees_expand() {
    let mut out = Vec::new();
    expand(
        "super::{agents::{AgentLink, TableFull}, state::Shared}",
        Vec::new(),
        &mut out,
    );
    assert_eq!(
        out,
        vec![
            vec!["super", "agents", "AgentLink"],
            vec!["super", "agents", "TableFull"],
            vec!["super", "state", "Shared"],
        ]
    );
}

/// Every error code the server answers with (`StatusCode::…, "code"` in
/// `src/server/`) is in the README's table (the admin API's, from
/// `src/server/admin.rs` and `src/admin/`, in the admin table), and neither table lists a
/// code the server never sends.
#[test]
fn readme_lists_every_error_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (mut client, mut admin) = (BTreeSet::new(), BTreeSet::new());
    for file in modules(&root.join("src")).into_values() {
        let name = file.to_string_lossy();
        let in_admin = name.ends_with("/server/admin.rs") || name.contains("/src/admin/");
        if !name.contains("/server/") && !in_admin {
            continue;
        }
        let sent = if in_admin { &mut admin } else { &mut client };
        let text = std::fs::read_to_string(&file).unwrap();
        let mut from = 0;
        while let Some(i) = text[from..].find("StatusCode::") {
            let at = from + i;
            from = at + 1;
            // The code is the first string literal after the status, when the
            // status is an argument (followed by a comma).
            let after = &text[at..];
            let Some(comma) = after.find(',') else {
                continue;
            };
            if after[..comma].contains([')', ';', '\n']) {
                continue;
            }
            let rest = after[comma + 1..].trim_start();
            if let Some(literal) = rest.strip_prefix('"') {
                let code: String = literal.chars().take_while(|c| *c != '"').collect();
                if code.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                    sent.insert(code);
                }
            }
        }
    }
    assert!(
        client.contains("agent_offline") && client.len() > 10,
        "found {client:?}"
    );
    assert!(admin.contains("bad_admin_token"), "found {admin:?}");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    for (sent, start, end) in [
        (&client, "* **Errors** are JSON", "\n\n  If the agent"),
        (&admin, "Admin API errors are JSON", "\n\n**Metrics**"),
    ] {
        let table = &readme[readme
            .find(start)
            .unwrap_or_else(|| panic!("no {start:?} in the README"))..];
        let table = &table[..table.find(end).unwrap_or(table.len())];
        let listed: BTreeSet<String> = table
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|s| s.chars().all(|c| c.is_ascii_lowercase() || c == '_') && s.contains('_'))
            .map(str::to_string)
            .collect();
        let missing: Vec<_> = sent.difference(&listed).collect();
        assert!(
            missing.is_empty(),
            "codes sent but not in the README's {start:?} table: {missing:?}"
        );
        let stale: Vec<_> = listed.difference(sent).collect();
        assert!(
            stale.is_empty(),
            "codes in the README's {start:?} table the server never sends: {stale:?}"
        );
    }
}
