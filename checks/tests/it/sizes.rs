//! The size rules: no source file over 600 lines and no function over 80
//! lines outside tests, except those docs/ARCHITECTURE.md lists with their
//! reason under "Size exceptions" (a line `` - `path` `` for a file, or
//! `` - `path` `function` `` for a function, then the reason).

use std::path::{Path, PathBuf};

use syn::visit::Visit;

const MAX_FILE_LINES: usize = 600;
const MAX_FN_LINES: usize = 80;

/// Every `.rs` file under a `src/` directory of the workspace.
fn sources() -> Vec<PathBuf> {
    let root = super::root();
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read a directory") {
            let path = entry.expect("a directory entry").path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if path.is_dir() {
                if !name.starts_with('.') && !["target", "node_modules", "tests"].contains(&name) {
                    dirs.push(path);
                }
            } else if name.ends_with(".rs")
                && path
                    .strip_prefix(&root)
                    .is_ok_and(|p| p.components().any(|c| c.as_os_str() == "src"))
            {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The exceptions listed in docs/ARCHITECTURE.md: (path, function or "").
fn exceptions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(super::root().join("docs/ARCHITECTURE.md"))
        .expect("read docs/ARCHITECTURE.md");
    let Some(section) = text.split("Size exceptions").nth(1) else {
        return Vec::new();
    };
    section
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("- `"))
        .map(|l| {
            let mut quoted = l.split('`');
            let path = quoted.next().unwrap_or_default().to_owned();
            let function = match (quoted.next(), quoted.next()) {
                (Some(" "), Some(f)) => f.to_owned(),
                _ => String::new(),
            };
            (path, function)
        })
        .collect()
}

fn relative(path: &Path) -> String {
    path.strip_prefix(super::root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Functions (free, in impls and traits) outside test code, with their
/// length in lines.
#[derive(Default)]
struct Functions {
    found: Vec<(String, usize, usize)>,
}

fn is_test_code(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        let path = a.path();
        if path.is_ident("test") || path.segments.last().is_some_and(|s| s.ident == "test") {
            return true;
        }
        path.is_ident("cfg")
            && a.parse_args::<syn::Meta>()
                .is_ok_and(|m| m.path().is_ident("test"))
    })
}

impl Functions {
    fn record(&mut self, name: &syn::Ident, block: &syn::Block) {
        let start = name.span().start().line;
        let end = block.brace_token.span.close().end().line;
        self.found.push((name.to_string(), start, end + 1 - start));
    }
}

impl<'ast> Visit<'ast> for Functions {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if !is_test_code(&item.attrs) {
            syn::visit::visit_item_mod(self, item);
        }
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        if !is_test_code(&item.attrs) {
            self.record(&item.sig.ident, &item.block);
            syn::visit::visit_item_fn(self, item);
        }
    }

    fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
        if !is_test_code(&item.attrs) {
            self.record(&item.sig.ident, &item.block);
            syn::visit::visit_impl_item_fn(self, item);
        }
    }

    fn visit_trait_item_fn(&mut self, item: &'ast syn::TraitItemFn) {
        if let Some(block) = &item.default {
            self.record(&item.sig.ident, block);
        }
        syn::visit::visit_trait_item_fn(self, item);
    }
}

#[test]
fn no_file_or_function_is_over_its_limit_unless_listed() {
    let exceptions = exceptions();
    let excepted =
        |path: &str, function: &str| exceptions.iter().any(|(p, f)| p == path && f == function);
    let mut over = Vec::new();
    for file in sources() {
        let path = relative(&file);
        let text = std::fs::read_to_string(&file).expect("read a source file");
        let lines = text.lines().count();
        if lines > MAX_FILE_LINES && !excepted(&path, "") {
            over.push(format!("{path}: {lines} lines (at most {MAX_FILE_LINES})"));
        }
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("parse {path}: {e}"));
        let mut functions = Functions::default();
        functions.visit_file(&ast);
        for (name, line, length) in functions.found {
            if length > MAX_FN_LINES && !excepted(&path, &name) {
                over.push(format!(
                    "{path}:{line} {name}: {length} lines (at most {MAX_FN_LINES})"
                ));
            }
        }
    }
    assert!(
        over.is_empty(),
        "over the size rules (or list them in docs/ARCHITECTURE.md, Size exceptions): {over:#?}"
    );
}

#[test]
fn every_listed_exception_exists() {
    let root = super::root();
    for (path, _) in exceptions() {
        assert!(
            root.join(&path).is_file(),
            "docs/ARCHITECTURE.md lists a size exception for {path}, which does not exist"
        );
    }
}
