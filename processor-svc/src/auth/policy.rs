//! How Register and Login spend hashing time and refuse guessing: the
//! [`LoginPolicy`] read from the environment, and the [`Throttle`]'s pure
//! decisions on a customer id's stored [`ThrottleState`].

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use ordermesh_runtime::config::{self, ConfigError, Env};

pub const ENV_HASH_WAIT_MS: &str = "AUTH_HASH_WAIT_MS";
pub const DEFAULT_HASH_WAIT: Duration = Duration::from_secs(2);
pub const ENV_LOGIN_MAX_FAILURES: &str = "AUTH_LOGIN_MAX_FAILURES";
pub const DEFAULT_LOGIN_MAX_FAILURES: u32 = 5;
pub const ENV_LOGIN_LOCKOUT_MS: &str = "AUTH_LOGIN_LOCKOUT_MS";
pub const DEFAULT_LOGIN_LOCKOUT: Duration = Duration::from_secs(30);
pub const ENV_LOGIN_LOCKOUT_MAX_MS: &str = "AUTH_LOGIN_LOCKOUT_MAX_MS";
pub const DEFAULT_LOGIN_LOCKOUT_MAX: Duration = Duration::from_secs(15 * 60);
pub const ENV_LOGIN_FAILURE_WINDOW_MS: &str = "AUTH_LOGIN_FAILURE_WINDOW_MS";
pub const DEFAULT_LOGIN_FAILURE_WINDOW: Duration = Duration::from_secs(60 * 60);
/// Longest duration any of the above takes: keeps time arithmetic far
/// from overflowing.
const MAX_POLICY_DURATION: Duration = Duration::from_secs(366 * 24 * 60 * 60);

/// How Register and Login spend hashing time and refuse guessing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginPolicy {
    /// How long a call waits for a hashing slot (`AUTH_HASH_WAIT_MS`)
    /// before RESOURCE_EXHAUSTED: under a flood, callers are told to come
    /// back rather than queued without end.
    pub hash_wait: Duration,
    pub throttle: Throttle,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        Self {
            hash_wait: DEFAULT_HASH_WAIT,
            throttle: Throttle::default(),
        }
    }
}

impl LoginPolicy {
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let duration = |name: &str, default: Duration| {
            let d = config::millis(env, name, default)?;
            if d > MAX_POLICY_DURATION {
                return Err(config::invalid(
                    name,
                    d.as_millis(),
                    format!("must be at most {} ms", MAX_POLICY_DURATION.as_millis()),
                ));
            }
            Ok(d)
        };
        let at_least_1ms = |name: &str, d: Duration| {
            if d < Duration::from_millis(1) {
                Err(config::invalid(name, 0, "must be at least 1"))
            } else {
                Ok(d)
            }
        };
        let max_failures = config::parse(env, ENV_LOGIN_MAX_FAILURES, DEFAULT_LOGIN_MAX_FAILURES)?;
        if max_failures == 0 {
            return Err(config::invalid(
                ENV_LOGIN_MAX_FAILURES,
                0,
                "must be at least 1",
            ));
        }
        let lockout = at_least_1ms(
            ENV_LOGIN_LOCKOUT_MS,
            duration(ENV_LOGIN_LOCKOUT_MS, DEFAULT_LOGIN_LOCKOUT)?,
        )?;
        let max_lockout = duration(
            ENV_LOGIN_LOCKOUT_MAX_MS,
            DEFAULT_LOGIN_LOCKOUT_MAX.max(lockout),
        )?;
        if max_lockout < lockout {
            return Err(config::invalid(
                ENV_LOGIN_LOCKOUT_MAX_MS,
                max_lockout.as_millis(),
                format!(
                    "must be at least {ENV_LOGIN_LOCKOUT_MS} ({} ms)",
                    lockout.as_millis()
                ),
            ));
        }
        let window = at_least_1ms(
            ENV_LOGIN_FAILURE_WINDOW_MS,
            duration(ENV_LOGIN_FAILURE_WINDOW_MS, DEFAULT_LOGIN_FAILURE_WINDOW)?,
        )?;
        Ok(Self {
            hash_wait: duration(ENV_HASH_WAIT_MS, DEFAULT_HASH_WAIT)?,
            throttle: Throttle {
                max_failures,
                lockout,
                max_lockout,
                window,
            },
        })
    }
}

/// Login attempts per customer id: after `max_failures` attempts without a
/// success, a lock that starts at `lockout` and doubles with every further
/// failure, up to `max_lockout`. The decisions are a pure function of the
/// stored [`ThrottleState`] and the database's clock; the store keeps the
/// state (see
/// [`Store::count_login_attempt`](crate::store::Store::count_login_attempt)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Throttle {
    /// Attempts allowed before the first lock (`AUTH_LOGIN_MAX_FAILURES`).
    pub max_failures: u32,
    /// The first lock (`AUTH_LOGIN_LOCKOUT_MS`).
    pub lockout: Duration,
    /// The longest lock (`AUTH_LOGIN_LOCKOUT_MAX_MS`): someone guessing
    /// can keep a customer locked out, but for this long at a time only.
    pub max_lockout: Duration,
    /// Quiet time after which failures are forgotten
    /// (`AUTH_LOGIN_FAILURE_WINDOW_MS`), counted from the last failure or
    /// the end of its lock, whichever is later.
    pub window: Duration,
}

impl Default for Throttle {
    fn default() -> Self {
        Self {
            max_failures: DEFAULT_LOGIN_MAX_FAILURES,
            lockout: DEFAULT_LOGIN_LOCKOUT,
            max_lockout: DEFAULT_LOGIN_LOCKOUT_MAX,
            window: DEFAULT_LOGIN_FAILURE_WINDOW,
        }
    }
}

/// A customer id's row of `login_throttle`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleState {
    /// Attempts since the last success.
    pub failures: u32,
    pub last_failure: DateTime<Utc>,
    pub locked_until: Option<DateTime<Utc>>,
    /// From then on the row counts as gone.
    pub forget_time: DateTime<Utc>,
}

/// What [`Throttle::admit`] decided about one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Locked: refuse without checking the password, count nothing.
    Refused { retry_after: Duration },
    /// Go ahead; this is the state to store (the attempt counted).
    Counted(ThrottleState),
}

impl Throttle {
    /// The lock the `failures`-th attempt in a row starts, if any.
    pub fn lockout_after(&self, failures: u32) -> Option<Duration> {
        let beyond = failures.checked_sub(self.max_failures)?;
        let factor = 1u32.checked_shl(beyond).unwrap_or(u32::MAX);
        Some(self.lockout.saturating_mul(factor).min(self.max_lockout))
    }

    /// How long logins of a customer whose row is `state` stay refused.
    pub fn locked_for(state: Option<&ThrottleState>, now: DateTime<Utc>) -> Option<Duration> {
        let state = state.filter(|s| s.forget_time > now)?;
        let until = state.locked_until.filter(|until| *until > now)?;
        (until - now).to_std().ok()
    }

    /// Decides one attempt at `now` on the stored `state` (none, or one
    /// past its forget time: a fresh start).
    pub fn admit(&self, state: Option<&ThrottleState>, now: DateTime<Utc>) -> Admission {
        if let Some(retry_after) = Self::locked_for(state, now) {
            return Admission::Refused { retry_after };
        }
        let failures = state
            .filter(|s| s.forget_time > now)
            .map_or(0, |s| s.failures)
            .saturating_add(1);
        let locked_until = self.lockout_after(failures).map(|d| now + delta(d));
        let forget_time = locked_until.unwrap_or(now) + delta(self.window);
        Admission::Counted(ThrottleState {
            failures,
            last_failure: now,
            locked_until,
            forget_time,
        })
    }
}

/// A policy duration as chrono's (they are bounded by
/// [`MAX_POLICY_DURATION`], far from chrono's limits).
fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&'static str, &str)]) -> std::collections::HashMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    }

    #[test]
    fn the_policy_has_defaults_and_names_bad_variables() {
        let policy = LoginPolicy::from_env(&env(&[])).unwrap();
        assert_eq!(policy, LoginPolicy::default());
        assert_eq!(policy.hash_wait, Duration::from_secs(2));
        assert_eq!(policy.throttle.max_failures, 5);
        assert_eq!(policy.throttle.lockout, Duration::from_secs(30));
        assert_eq!(policy.throttle.max_lockout, Duration::from_secs(900));
        assert_eq!(policy.throttle.window, Duration::from_secs(3600));

        let policy = LoginPolicy::from_env(&env(&[
            (ENV_HASH_WAIT_MS, "0"),
            (ENV_LOGIN_MAX_FAILURES, "3"),
            (ENV_LOGIN_LOCKOUT_MS, "2000000"),
            (ENV_LOGIN_FAILURE_WINDOW_MS, "500"),
        ]))
        .unwrap();
        assert_eq!(policy.hash_wait, Duration::ZERO);
        assert_eq!(policy.throttle.max_failures, 3);
        // The cap follows a first lock longer than its default.
        assert_eq!(policy.throttle.max_lockout, Duration::from_secs(2000));
        assert_eq!(policy.throttle.window, Duration::from_millis(500));

        for (name, value) in [
            (ENV_HASH_WAIT_MS, "soon"),
            (ENV_LOGIN_MAX_FAILURES, "0"),
            (ENV_LOGIN_MAX_FAILURES, "-1"),
            (ENV_LOGIN_LOCKOUT_MS, "0"),
            (ENV_LOGIN_LOCKOUT_MAX_MS, "1000"),
            (ENV_LOGIN_FAILURE_WINDOW_MS, "0"),
            (ENV_LOGIN_FAILURE_WINDOW_MS, "99999999999999"),
        ] {
            let err = LoginPolicy::from_env(&env(&[(name, value)])).unwrap_err();
            assert_eq!(err.name, name, "{value}");
        }
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + seconds, 0).unwrap()
    }

    fn counted(admission: Admission) -> ThrottleState {
        match admission {
            Admission::Counted(state) => state,
            refused => panic!("refused: {refused:?}"),
        }
    }

    #[test]
    fn locks_start_after_max_failures_and_double() {
        let throttle = Throttle {
            max_failures: 3,
            lockout: Duration::from_secs(10),
            max_lockout: Duration::from_secs(35),
            window: Duration::from_secs(100),
        };
        let locks: Vec<_> = (1..=8).map(|n| throttle.lockout_after(n)).collect();
        let s = |n| Some(Duration::from_secs(n));
        assert_eq!(
            locks,
            [None, None, s(10), s(20), s(35), s(35), s(35), s(35)]
        );
        assert_eq!(throttle.lockout_after(u32::MAX), s(35));

        // Three attempts go through, the third starts a lock of 10 s.
        let mut state = None;
        for n in 1..=3 {
            let next = counted(throttle.admit(state.as_ref(), at(n)));
            assert_eq!(next.failures, n as u32);
            state = Some(next);
        }
        let locked = state.clone().unwrap();
        assert_eq!(locked.locked_until, Some(at(13)));
        assert_eq!(locked.forget_time, at(113));
        // While locked: refused with the time left, nothing counted.
        assert_eq!(
            throttle.admit(state.as_ref(), at(5)),
            Admission::Refused {
                retry_after: Duration::from_secs(8)
            }
        );
        assert_eq!(
            Throttle::locked_for(state.as_ref(), at(12)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(Throttle::locked_for(state.as_ref(), at(13)), None);
        // After it, one more attempt, and a lock twice as long.
        let next = counted(throttle.admit(state.as_ref(), at(13)));
        assert_eq!((next.failures, next.locked_until), (4, Some(at(33))));
        assert_eq!(next.forget_time, at(133));
        // Quiet for the window after the lock: a fresh start.
        let fresh = counted(throttle.admit(Some(&next), at(133)));
        assert_eq!((fresh.failures, fresh.locked_until), (1, None));
        assert_eq!(fresh.forget_time, at(233));
        // A row born forgotten (the store's placeholder) is a fresh start.
        let placeholder = ThrottleState {
            failures: 1,
            last_failure: at(0),
            locked_until: None,
            forget_time: at(0),
        };
        assert_eq!(
            counted(throttle.admit(Some(&placeholder), at(0))).failures,
            1
        );
        assert_eq!(counted(throttle.admit(None, at(0))).failures, 1);
    }
}
