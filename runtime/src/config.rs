//! Configuration from environment variables, read through [`Env`] so tests
//! pass a map instead of mutating the process environment. Each binary
//! lists the variables it reads as [`Var`]s: [`help`] renders them for
//! `--help`, and [`check_listed`] holds the list against the readers.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;

/// A source of configuration variables.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Env for HashMap<&str, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Name-value pairs, as tests write them: `Config::from_env(&[("A", "1")])`.
impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        let mut pairs = self.iter();
        pairs
            .find(|(n, _)| *n == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

/// A variable that is set but cannot be used. The message names it.
#[derive(Debug, thiserror::Error)]
#[error("invalid value for environment variable {name}={value:?}: {reason}")]
pub struct ConfigError {
    pub name: String,
    pub value: String,
    pub reason: String,
}

/// Reads `name`, falling back to `default` when unset or empty.
pub fn string(env: &impl Env, name: &str, default: &str) -> String {
    match env.var(name) {
        Some(v) if !v.trim().is_empty() => v.trim().to_owned(),
        _ => default.to_owned(),
    }
}

/// Reads and parses `name`, falling back to `default` when unset or empty.
pub fn parse<T>(env: &impl Env, name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    match env.var(name) {
        Some(v) if !v.trim().is_empty() => v.trim().parse().map_err(|e: T::Err| ConfigError {
            name: name.to_owned(),
            value: v.clone(),
            reason: e.to_string(),
        }),
        _ => Ok(default),
    }
}

/// Reads a comma-separated list, dropping empty entries.
pub fn list(env: &impl Env, name: &str, default: &[&str]) -> Vec<String> {
    match env.var(name) {
        Some(v) if !v.trim().is_empty() => v
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => default.iter().map(|s| (*s).to_owned()).collect(),
    }
}

/// Reads and parses `name` like [`parse`], refusing zero.
pub fn at_least_one<T>(env: &impl Env, name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr + PartialEq + From<u8> + fmt::Display,
    T::Err: fmt::Display,
{
    let value = parse(env, name, default)?;
    if value == T::from(0) {
        return Err(invalid(name, value, "must be at least 1"));
    }
    Ok(value)
}

/// Reads a duration in milliseconds.
pub fn millis(
    env: &impl Env,
    name: &str,
    default: std::time::Duration,
) -> Result<std::time::Duration, ConfigError> {
    let ms = parse(env, name, default.as_millis() as u64)?;
    Ok(std::time::Duration::from_millis(ms))
}

/// Rejects a value with a reason, naming the variable.
pub fn invalid(name: &str, value: impl fmt::Display, reason: impl fmt::Display) -> ConfigError {
    ConfigError {
        name: name.to_owned(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// A string that never prints, for passwords and URLs carrying them.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One environment variable a binary reads, as its `--help` and
/// docs/CONFIGURATION.md list it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Var {
    pub name: &'static str,
    pub default: Fallback,
    /// One of a few words: `ms`, `s`, `hours`, `bytes`, `count`, `address`,
    /// `URL`, `path`, `name`, `list`, ...
    pub unit: &'static str,
    pub meaning: &'static str,
}

/// What a [`Var`] is when unset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// This value, as it would be written in the variable.
    Value(&'static str),
    /// No value: what happens then.
    Unset(&'static str),
}

impl Var {
    /// A variable whose default is `default`, written as a user would.
    pub const fn new(
        name: &'static str,
        default: &'static str,
        unit: &'static str,
        meaning: &'static str,
    ) -> Self {
        let default = Fallback::Value(default);
        Self {
            name,
            default,
            unit,
            meaning,
        }
    }

    /// A variable with no default value; `when_unset` says what happens.
    pub const fn unset(
        name: &'static str,
        when_unset: &'static str,
        unit: &'static str,
        meaning: &'static str,
    ) -> Self {
        let default = Fallback::Unset(when_unset);
        Self {
            name,
            default,
            unit,
            meaning,
        }
    }
}

impl fmt::Display for Var {
    /// `  NAME (unit, default D)` and the meaning indented below.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let default = match self.default {
            Fallback::Value(value) => format!("default {value}"),
            Fallback::Unset(then) => format!("unset: {then}"),
        };
        let (name, unit, meaning) = (self.name, self.unit, self.meaning);
        write!(f, "  {name} ({unit}, {default})\n          {meaning}")
    }
}

/// The `after_help` of a binary: every variable of `vars` (the first
/// listing of a name wins), one after the other.
pub fn help(vars: &[Var]) -> String {
    let mut seen = BTreeSet::new();
    let mut text = String::from("Environment variables (unit, default):");
    for var in vars {
        if seen.insert(var.name) {
            text.push('\n');
            text.push_str(&var.to_string());
        }
    }
    text
}

/// A map of variables that remembers which names were asked for, so a test
/// can compare what a reader reads with what its binary lists.
#[derive(Debug, Default)]
pub struct Recording {
    values: HashMap<String, String>,
    read: Mutex<BTreeSet<String>>,
}

impl Recording {
    pub fn new(values: HashMap<String, String>) -> Self {
        Self {
            values,
            read: Mutex::default(),
        }
    }

    /// Every name asked for so far.
    pub fn read(&self) -> BTreeSet<String> {
        self.read.lock().expect("not poisoned").clone()
    }
}

impl Env for Recording {
    fn var(&self, name: &str) -> Option<String> {
        self.read
            .lock()
            .expect("not poisoned")
            .insert(name.to_owned());
        self.values.get(name).cloned()
    }
}

/// Holds a reader against values it must refuse: each `(name, value)`, set
/// alone, is refused with an error naming `name`. The error lists every
/// case accepted or blamed on another variable.
pub fn check_refused<C: fmt::Debug>(
    cases: &[(&str, &str)],
    read: impl Fn(&Recording) -> Result<C, ConfigError>,
) -> Result<(), String> {
    let wrong: Vec<String> = cases
        .iter()
        .filter_map(|&(name, value)| {
            let env = Recording::new(HashMap::from([(name.to_owned(), value.to_owned())]));
            match read(&env) {
                Err(e) if e.name == name => None,
                Err(e) => Some(format!("{name}={value:?} blamed {}", e.name)),
                Ok(c) => Some(format!("{name}={value:?} accepted: {c:?}")),
            }
        })
        .collect();
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(wrong.join("; "))
    }
}

/// Holds a binary's list of variables against its reader `read`: every
/// variable `read` asks for is listed; every listed one is asked for, except
/// those in `read_elsewhere` (read later, by other code); and setting every
/// listed default explicitly reads the same configuration (by its `Debug`)
/// as setting nothing. The error names each variable out of line.
pub fn check_listed<C: fmt::Debug>(
    vars: &[Var],
    read_elsewhere: &[&str],
    read: impl Fn(&Recording) -> Result<C, ConfigError>,
) -> Result<(), String> {
    let listed: BTreeSet<String> = vars.iter().map(|v| v.name.to_owned()).collect();
    let unset = Recording::default();
    let by_default = read(&unset).map_err(|e| e.to_string())?;
    let mut problems = Vec::new();
    for name in unset.read().difference(&listed) {
        problems.push(format!("{name} is read but not listed"));
    }
    for name in listed.difference(&unset.read()) {
        if !read_elsewhere.contains(&name.as_str()) {
            problems.push(format!("{name} is listed but not read"));
        }
    }
    let defaults = vars.iter().filter_map(|v| match v.default {
        Fallback::Value(value) => Some((v.name.to_owned(), value.to_owned())),
        Fallback::Unset(_) => None,
    });
    let explicit = read(&Recording::new(defaults.collect())).map_err(|e| e.to_string())?;
    if format!("{explicit:?}") != format!("{by_default:?}") {
        problems.push(format!(
            "a listed default is not the default read: {explicit:?} != {by_default:?}"
        ));
    }
    match problems.is_empty() {
        true => Ok(()),
        false => Err(problems.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply_when_unset_or_blank() {
        let e = [("B", "  ")];
        assert_eq!(string(&e, "A", "x"), "x");
        assert_eq!(parse(&e, "B", 7u32).unwrap(), 7);
    }

    #[test]
    fn bad_number_names_the_variable() {
        let e = [("PREFETCH", "many")];
        let err = parse(&e, "PREFETCH", 1u16).unwrap_err();
        assert!(err.to_string().contains("PREFETCH"), "{err}");
    }

    #[test]
    fn lists_split_on_commas() {
        let e = [("L", "a, b,,c ")];
        assert_eq!(list(&e, "L", &[]), ["a", "b", "c"]);
        assert_eq!(list(&e, "M", &["d"]), ["d"]);
    }

    #[test]
    fn zero_is_refused_where_one_is_the_least() {
        let e = [("N", "0")];
        assert_eq!(at_least_one(&e, "M", 4u16).unwrap(), 4);
        let err = at_least_one(&e, "N", 4u16).unwrap_err();
        assert_eq!(err.name, "N");
        assert!(err.to_string().contains("must be at least 1"), "{err}");
    }

    const VARS: &[Var] = &[
        Var::new("A_MS", "10", "ms", "how long"),
        Var::unset("B_FILE", "plaintext", "path", "a file"),
    ];

    fn read(env: &Recording) -> Result<(u64, String), ConfigError> {
        Ok((parse(env, "A_MS", 10)?, string(env, "B_FILE", "")))
    }

    #[test]
    fn help_lists_each_variable_once_with_unit_and_default() {
        let text = help(&[VARS, &VARS[..1]].concat());
        assert_eq!(text.matches("A_MS").count(), 1, "{text}");
        assert!(
            text.contains("  A_MS (ms, default 10)\n          how long"),
            "{text}"
        );
        assert!(text.contains("  B_FILE (path, unset: plaintext)"), "{text}");
    }

    #[test]
    fn the_list_is_held_against_the_reader() {
        check_listed(VARS, &[], read).unwrap();
        let err = check_listed(&VARS[..1], &[], read).unwrap_err();
        assert!(err.contains("B_FILE is read but not listed"), "{err}");
        let more = [VARS, &[Var::new("C", "1", "count", "more")]].concat();
        let err = check_listed(&more, &[], read).unwrap_err();
        assert!(err.contains("C is listed but not read"), "{err}");
        check_listed(&more, &["C"], read).unwrap();
        let wrong = [Var::new("A_MS", "11", "ms", "how long"), VARS[1]];
        let err = check_listed(&wrong, &[], read).unwrap_err();
        assert!(err.contains("not the default read"), "{err}");
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }
}
