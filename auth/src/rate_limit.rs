//! A token bucket per caller.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock as _;
use ordermesh_runtime::config::{self, ConfigError, Env};

use crate::caller::Caller;

pub const ENV_RATE_LIMIT_PER_S: &str = "RATE_LIMIT_PER_S";
pub const DEFAULT_RATE_LIMIT_PER_S: u32 = 50;
pub const ENV_RATE_LIMIT_BURST: &str = "RATE_LIMIT_BURST";
pub const DEFAULT_RATE_LIMIT_BURST: u32 = 100;
pub const ENV_RATE_LIMIT_ADMIN: &str = "RATE_LIMIT_ADMIN";
pub const DEFAULT_RATE_LIMIT_ADMIN: bool = false;

/// The token bucket every caller gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Tokens added per second (`RATE_LIMIT_PER_S`); 0 turns limits off.
    pub per_second: u32,
    /// Bucket size (`RATE_LIMIT_BURST`); 0 turns limits off.
    pub burst: u32,
    /// Whether admins are limited too (`RATE_LIMIT_ADMIN`).
    pub limit_admins: bool,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_second: DEFAULT_RATE_LIMIT_PER_S,
            burst: DEFAULT_RATE_LIMIT_BURST,
            limit_admins: DEFAULT_RATE_LIMIT_ADMIN,
        }
    }
}

impl RateLimitConfig {
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        Ok(Self {
            per_second: config::parse(env, ENV_RATE_LIMIT_PER_S, DEFAULT_RATE_LIMIT_PER_S)?,
            burst: config::parse(env, ENV_RATE_LIMIT_BURST, DEFAULT_RATE_LIMIT_BURST)?,
            limit_admins: config::parse(env, ENV_RATE_LIMIT_ADMIN, DEFAULT_RATE_LIMIT_ADMIN)?,
        })
    }

    pub fn is_enabled(&self) -> bool {
        self.per_second > 0 && self.burst > 0
    }
}

/// A token bucket per key (a caller's subject, or an anonymous peer's IP).
pub struct RateLimiter {
    limiter: Option<governor::DefaultKeyedRateLimiter<String>>,
    limit_admins: bool,
    /// Calls since the start, to forget idle keys now and then.
    checks: AtomicU64,
}

/// Idle keys are forgotten every this many checks.
const SWEEP_EVERY: u64 = 4096;

impl RateLimiter {
    pub fn new(config: RateLimitConfig) -> Self {
        let limiter = config.is_enabled().then(|| {
            let per_second = std::num::NonZeroU32::new(config.per_second).expect("checked above");
            let burst = std::num::NonZeroU32::new(config.burst).expect("checked above");
            governor::RateLimiter::keyed(governor::Quota::per_second(per_second).allow_burst(burst))
        });
        Self {
            limiter,
            limit_admins: config.limit_admins,
            checks: AtomicU64::new(0),
        }
    }

    /// Takes one token from `key`'s bucket, or says how long until one is
    /// there.
    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            limiter.retain_recent();
        }
        limiter
            .check_key(&key.to_owned())
            .map_err(|not_until| not_until.wait_time_from(limiter.clock().now()))
    }

    pub(crate) fn applies_to(&self, caller: Option<&Caller>) -> bool {
        self.limit_admins || !caller.is_some_and(Caller::is_admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::Role;

    #[test]
    fn buckets_run_out_per_key() {
        let limiter = RateLimiter::new(RateLimitConfig {
            per_second: 1,
            burst: 2,
            limit_admins: false,
        });
        assert!(limiter.check("a").is_ok() && limiter.check("a").is_ok());
        let wait = limiter.check("a").unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert!(
            limiter.check("b").is_ok(),
            "other keys have their own bucket"
        );
        let admin = Caller {
            subject: "ops".into(),
            role: Role::Admin,
        };
        assert!(!limiter.applies_to(Some(&admin)) && limiter.applies_to(None));
        let off = RateLimiter::new(RateLimitConfig {
            per_second: 0,
            ..RateLimitConfig::default()
        });
        assert!((0..1000).all(|_| off.check("a").is_ok()));
    }
}
