//! Configuration from environment variables, read through [`Env`] so tests
//! pass a map instead of mutating the process environment.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&'static str, &str)]) -> HashMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_apply_when_unset_or_blank() {
        let e = env(&[("B", "  ")]);
        assert_eq!(string(&e, "A", "x"), "x");
        assert_eq!(parse(&e, "B", 7u32).unwrap(), 7);
    }

    #[test]
    fn bad_number_names_the_variable() {
        let e = env(&[("PREFETCH", "many")]);
        let err = parse(&e, "PREFETCH", 1u16).unwrap_err();
        assert!(err.to_string().contains("PREFETCH"), "{err}");
    }

    #[test]
    fn lists_split_on_commas() {
        let e = env(&[("L", "a, b,,c ")]);
        assert_eq!(list(&e, "L", &[]), ["a", "b", "c"]);
        assert_eq!(list(&e, "M", &["d"]), ["d"]);
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret(***)");
    }
}
