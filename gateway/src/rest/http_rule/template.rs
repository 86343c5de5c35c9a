//! Path templates: parsed from a rule's pattern, matched against request
//! paths, and written as OpenAPI paths.

use std::fmt;

/// One segment of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one non-empty segment.
    One,
    /// `**`: the rest of the path (zero or more segments); last only.
    Rest,
}

/// A template variable: the request field it sets and the segments it spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    pub field_path: Vec<String>,
    start: usize,
    end: usize,
}

/// A parsed path template, e.g. `/v1/{name=shelves/*/books/*}:publish`.
#[derive(Debug, Clone)]
pub struct PathTemplate {
    raw: String,
    segments: Vec<Segment>,
    variables: Vec<Variable>,
    verb: Option<String>,
}

impl fmt::Display for PathTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// A variable's value, as matched in a request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Captured {
    /// Index into [`PathTemplate::variables`] (and [`super::Binding::variables`]).
    pub variable: usize,
    pub value: String,
}

impl PathTemplate {
    pub fn parse(template: &str) -> Result<Self, String> {
        let rest = template.strip_prefix('/').ok_or("must start with '/'")?;
        // The verb is a ':' outside braces after the last '/'.
        let mut depth = 0usize;
        let mut verb_at = None;
        let mut last_slash = 0;
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth = depth.checked_sub(1).ok_or("unbalanced '}'")?,
                '/' if depth == 0 => last_slash = i,
                ':' if depth == 0 && i >= last_slash && verb_at.is_none() => verb_at = Some(i),
                _ => {}
            }
        }
        if depth != 0 {
            return Err("unbalanced '{'".into());
        }
        let (path, verb) = match verb_at {
            Some(i) => {
                let verb = &rest[i + 1..];
                if verb.is_empty() || verb.contains(['/', '{', '}', '*', ':']) {
                    return Err(format!("invalid verb {verb:?}"));
                }
                (&rest[..i], Some(verb.to_owned()))
            }
            None => (rest, None),
        };
        let mut segments = Vec::new();
        let mut variables = Vec::new();
        for part in split_outside_braces(path) {
            if let Some(inner) = part.strip_prefix('{') {
                let inner = inner
                    .strip_suffix('}')
                    .ok_or_else(|| format!("bad variable {part:?}"))?;
                let (name, pattern) = inner.split_once('=').unwrap_or((inner, "*"));
                let field_path: Vec<String> = name.split('.').map(str::to_owned).collect();
                if field_path.iter().any(|f| !is_ident(f)) {
                    return Err(format!("bad field path {name:?}"));
                }
                let start = segments.len();
                for sub in pattern.split('/') {
                    if sub.contains(['{', '}']) {
                        return Err("variables cannot nest".into());
                    }
                    segments.push(segment(sub)?);
                }
                variables.push(Variable {
                    field_path,
                    start,
                    end: segments.len(),
                });
            } else {
                segments.push(segment(part)?);
            }
        }
        if let Some(i) = segments.iter().position(|s| *s == Segment::Rest)
            && i + 1 != segments.len()
        {
            return Err("'**' must be the last segment".into());
        }
        for (i, v) in variables.iter().enumerate() {
            if variables[..i].iter().any(|w| w.field_path == v.field_path) {
                return Err(format!("variable {} appears twice", v.field_path.join(".")));
            }
        }
        Ok(Self {
            raw: template.to_owned(),
            segments,
            variables,
            verb,
        })
    }

    pub fn variables(&self) -> &[Variable] {
        &self.variables
    }

    pub fn verb(&self) -> Option<&str> {
        self.verb.as_deref()
    }

    /// The template with variable names erased, for conflict checks:
    /// `/v1/{a}` and `/v1/{b}` are the same route.
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        for s in &self.segments {
            out.push('/');
            match s {
                Segment::Literal(l) => out.push_str(l),
                Segment::One => out.push('*'),
                Segment::Rest => out.push_str("**"),
            }
        }
        if let Some(v) = &self.verb {
            out.push(':');
            out.push_str(v);
        }
        out
    }

    /// How specific the template is; among templates matching one path the
    /// highest wins: a verb, then more literal segments, then no `**`.
    pub fn specificity(&self) -> (bool, usize, bool) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        (
            self.verb.is_some(),
            literals,
            !self.segments.contains(&Segment::Rest),
        )
    }

    /// The path as OpenAPI writes it: each variable as `{field.path}`.
    pub fn openapi_path(&self) -> String {
        let mut out = String::new();
        let mut i = 0;
        while i < self.segments.len() {
            out.push('/');
            if let Some(v) = self.variables.iter().find(|v| v.start == i) {
                out.push('{');
                out.push_str(&v.field_path.join("."));
                out.push('}');
                i = v.end.max(i + 1);
                continue;
            }
            match &self.segments[i] {
                Segment::Literal(l) => out.push_str(l),
                Segment::One => out.push('*'),
                Segment::Rest => out.push_str("**"),
            }
            i += 1;
        }
        if let Some(v) = &self.verb {
            out.push(':');
            out.push_str(v);
        }
        out
    }

    /// The pattern a variable's value must have, when it spans more than a
    /// plain single segment (e.g. `shelves/[^/]+` for `{name=shelves/*}`).
    pub fn variable_pattern(&self, variable: usize) -> Option<String> {
        let v = &self.variables[variable];
        let segs = &self.segments[v.start..v.end];
        if segs == [Segment::One] {
            return None;
        }
        let parts: Vec<String> = segs
            .iter()
            .map(|s| match s {
                Segment::Literal(l) => regex_escape(l),
                Segment::One => "[^/]+".to_owned(),
                Segment::Rest => ".*".to_owned(),
            })
            .collect();
        Some(format!("^{}$", parts.join("/")))
    }

    /// Matches a request path (as sent: percent-encoded, no query). On a
    /// match returns the value of every variable, percent-decoded (a
    /// multi-segment value keeps `%2F` so its `/` separators stay clear).
    pub fn matches(&self, path: &str) -> Option<Vec<Captured>> {
        let mut rest = path.strip_prefix('/')?;
        if let Some(verb) = &self.verb {
            rest = rest.strip_suffix(verb.as_str())?.strip_suffix(':')?;
        }
        let parts: Vec<&str> = rest.split('/').collect();
        let has_rest = self.segments.last() == Some(&Segment::Rest);
        let fixed = self.segments.len() - usize::from(has_rest);
        if parts.len() < fixed || (!has_rest && parts.len() != fixed) {
            return None;
        }
        for (segment, part) in self.segments[..fixed].iter().zip(&parts) {
            match segment {
                Segment::Literal(l) => {
                    if decode(part, true)? != *l {
                        return None;
                    }
                }
                Segment::One => {
                    if part.is_empty() {
                        return None;
                    }
                }
                Segment::Rest => unreachable!("'**' is last"),
            }
        }
        let mut captured = Vec::with_capacity(self.variables.len());
        for (i, v) in self.variables.iter().enumerate() {
            let end = if v.end == self.segments.len() && has_rest {
                parts.len()
            } else {
                v.end
            };
            let span = &parts[v.start..end];
            let value = if span.len() == 1 && self.segments[v.start..v.end] == [Segment::One] {
                decode(span[0], true)?
            } else {
                span.iter()
                    .map(|p| decode(p, false))
                    .collect::<Option<Vec<_>>>()?
                    .join("/")
            };
            captured.push(Captured { variable: i, value });
        }
        Some(captured)
    }
}

fn split_outside_braces(path: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0;
    let mut start = 0;
    for (i, c) in path.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            '/' if depth == 0 => {
                parts.push(&path[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&path[start..]);
    parts
}

fn segment(s: &str) -> Result<Segment, String> {
    match s {
        "*" => Ok(Segment::One),
        "**" => Ok(Segment::Rest),
        "" => Err("empty segment".into()),
        lit if lit.contains(['*', '{', '}', ':', '=']) => Err(format!("bad segment {lit:?}")),
        lit => Ok(Segment::Literal(lit.to_owned())),
    }
}

fn is_ident(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Percent-decodes one path segment; `all` false keeps `%2F` encoded.
/// `None` for invalid UTF-8.
fn decode(segment: &str, all: bool) -> Option<String> {
    if all {
        return percent_encoding::percent_decode_str(segment)
            .decode_utf8()
            .ok()
            .map(|s| s.into_owned());
    }
    let pieces: Option<Vec<String>> = split_keep_slash(segment)
        .into_iter()
        .map(|p| {
            percent_encoding::percent_decode_str(p)
                .decode_utf8()
                .ok()
                .map(|s| s.into_owned())
        })
        .collect();
    Some(pieces?.join("%2F"))
}

fn split_keep_slash(segment: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i + 3 <= bytes.len() {
        if bytes[i] == b'%'
            && bytes[i + 1] == b'2'
            && (bytes[i + 2] == b'F' || bytes[i + 2] == b'f')
        {
            out.push(&segment[start..i]);
            start = i + 3;
            i += 3;
        } else {
            i += 1;
        }
    }
    out.push(&segment[start..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(t: &PathTemplate, path: &str) -> Option<Vec<String>> {
        t.matches(path)
            .map(|c| c.into_iter().map(|c| c.value).collect())
    }

    #[test]
    fn simple_variable() {
        let t = PathTemplate::parse("/v1/orders/{order_id}").unwrap();
        assert_eq!(vars(&t, "/v1/orders/abc"), Some(vec!["abc".into()]));
        assert_eq!(vars(&t, "/v1/orders/a%20b"), Some(vec!["a b".into()]));
        assert_eq!(vars(&t, "/v1/orders/a%2Fb"), Some(vec!["a/b".into()]));
        assert_eq!(vars(&t, "/v1/orders/"), None);
        assert_eq!(vars(&t, "/v1/orders"), None);
        assert_eq!(vars(&t, "/v1/orders/a/b"), None);
        assert_eq!(vars(&t, "/v2/orders/a"), None);
        assert_eq!(t.openapi_path(), "/v1/orders/{order_id}");
        assert_eq!(t.variable_pattern(0), None);
    }

    #[test]
    fn verb_suffix() {
        let t = PathTemplate::parse("/v1/accounts/{customer_id}:deposit").unwrap();
        assert_eq!(t.verb(), Some("deposit"));
        assert_eq!(
            vars(&t, "/v1/accounts/alice:deposit"),
            Some(vec!["alice".into()])
        );
        assert_eq!(vars(&t, "/v1/accounts/alice"), None);
        assert_eq!(vars(&t, "/v1/accounts/alice:withdraw"), None);
        assert_eq!(t.openapi_path(), "/v1/accounts/{customer_id}:deposit");
        // Without a verb in the template a colon is part of the value.
        let plain = PathTemplate::parse("/v1/accounts/{customer_id}").unwrap();
        assert_eq!(vars(&plain, "/v1/accounts/a:b"), Some(vec!["a:b".into()]));
        assert!(t.specificity() > plain.specificity());
    }

    #[test]
    fn multi_segment_variables() {
        let t = PathTemplate::parse("/v1/{name=shelves/*/books/*}").unwrap();
        assert_eq!(
            vars(&t, "/v1/shelves/s1/books/b%201"),
            Some(vec!["shelves/s1/books/b 1".into()])
        );
        assert_eq!(vars(&t, "/v1/shelves/s1/books"), None);
        assert_eq!(vars(&t, "/v1/shelves/s1/cds/b1"), None);
        assert_eq!(t.openapi_path(), "/v1/{name}");
        assert_eq!(
            t.variable_pattern(0).as_deref(),
            Some("^shelves/[^/]+/books/[^/]+$")
        );

        let t = PathTemplate::parse("/v1/{name=accounts/*}/orders/{order.id}").unwrap();
        assert_eq!(
            vars(&t, "/v1/accounts/a1/orders/o1"),
            Some(vec!["accounts/a1".into(), "o1".into()])
        );
        assert_eq!(t.variables()[1].field_path, ["order", "id"]);
    }

    #[test]
    fn wildcards() {
        let t = PathTemplate::parse("/v1/files/{path=**}").unwrap();
        assert_eq!(
            vars(&t, "/v1/files/a/b/c.txt"),
            Some(vec!["a/b/c.txt".into()])
        );
        assert_eq!(vars(&t, "/v1/files/a%2Fb/c"), Some(vec!["a%2Fb/c".into()]));
        assert_eq!(vars(&t, "/v1/files/x"), Some(vec!["x".into()]));

        let t = PathTemplate::parse("/v1/*/items/**:scan").unwrap();
        assert!(t.variables().is_empty());
        assert_eq!(vars(&t, "/v1/x/items/a/b:scan"), Some(vec![]));
        assert_eq!(vars(&t, "/v1/x/items:scan"), Some(vec![]));
        assert_eq!(vars(&t, "/v1/x/items/a/b"), None);
    }

    #[test]
    fn bad_templates_are_refused() {
        for bad in [
            "v1/orders",
            "/v1/{id",
            "/v1/id}",
            "/v1/**/x",
            "/v1/{a={b}}",
            "/v1/{a}/{a}",
            "/v1//x",
            "/v1/x:",
            "/v1/{1a}",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad} parsed");
        }
    }

    #[test]
    fn canonical_ignores_variable_names() {
        let a = PathTemplate::parse("/v1/{a}/x").unwrap();
        let b = PathTemplate::parse("/v1/{b=*}/x").unwrap();
        assert_eq!(a.canonical(), b.canonical());
    }
}
