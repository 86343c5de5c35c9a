//! The retry policy (how often, after what pauses) and its retry queues,
//! `<queue>.retry.<ms>ms`, one per distinct pause.

use std::time::Duration;

use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable};

use crate::broker::{BrokerConfig, QueueType};
use ordermesh_runtime::config::{self, ConfigError, Env};

pub const ENV_MAX_ATTEMPTS: &str = "AMQP_MAX_ATTEMPTS";
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
pub const ENV_RETRY_BASE_MS: &str = "AMQP_RETRY_BASE_MS";
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_secs(1);
pub const ENV_RETRY_MAX_MS: &str = "AMQP_RETRY_MAX_MS";
pub const DEFAULT_RETRY_MAX: Duration = Duration::from_secs(60);
/// Most attempts a policy may allow.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// Longest delay: RabbitMQ's `x-message-ttl` is a signed 32-bit count of ms.
pub const MAX_DELAY: Duration = Duration::from_millis(i32::MAX as u64);

/// How often, and after what pauses, a transiently failing message is
/// tried again before it is parked in the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Handler runs a message gets, the first included (1: no retries).
    pub max_attempts: u32,
    /// Pause after the first failure; it doubles after each further one.
    pub base_delay: Duration,
    /// Cap on the pause.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            base_delay: DEFAULT_RETRY_BASE,
            max_delay: DEFAULT_RETRY_MAX,
        }
    }
}

impl RetryPolicy {
    /// Reads `AMQP_MAX_ATTEMPTS`, `AMQP_RETRY_BASE_MS` and `AMQP_RETRY_MAX_MS`.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        let max_attempts = config::parse(env, ENV_MAX_ATTEMPTS, DEFAULT_MAX_ATTEMPTS)?;
        if !(1..=MAX_ATTEMPTS_LIMIT).contains(&max_attempts) {
            return Err(config::invalid(
                ENV_MAX_ATTEMPTS,
                max_attempts,
                format!("must be between 1 and {MAX_ATTEMPTS_LIMIT}"),
            ));
        }
        let base_delay = config::millis(env, ENV_RETRY_BASE_MS, DEFAULT_RETRY_BASE)?;
        if base_delay.is_zero() || base_delay > MAX_DELAY {
            return Err(config::invalid(
                ENV_RETRY_BASE_MS,
                base_delay.as_millis(),
                format!("must be between 1 and {}", MAX_DELAY.as_millis()),
            ));
        }
        let max_delay = config::millis(env, ENV_RETRY_MAX_MS, DEFAULT_RETRY_MAX.max(base_delay))?;
        if max_delay < base_delay || max_delay > MAX_DELAY {
            return Err(config::invalid(
                ENV_RETRY_MAX_MS,
                max_delay.as_millis(),
                format!(
                    "must be between {ENV_RETRY_BASE_MS} ({}) and {}",
                    base_delay.as_millis(),
                    MAX_DELAY.as_millis()
                ),
            ));
        }
        Ok(Self {
            max_attempts,
            base_delay,
            max_delay,
        })
    }

    /// The pause after the `attempt`-th failure (1-based): the base delay
    /// doubled `attempt - 1` times, at most the maximum.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let factor = 1u64
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u64::MAX);
        let ms = (self.base_delay.as_millis() as u64).saturating_mul(factor);
        Duration::from_millis(ms).min(self.max_delay)
    }

    /// The distinct pauses a message can wait, shortest first: one retry
    /// queue each.
    pub fn delays(&self) -> Vec<Duration> {
        let mut delays: Vec<Duration> = (1..self.max_attempts)
            .map(|a| self.delay_after(a))
            .collect();
        delays.dedup();
        delays
    }
}

/// Name of the retry queue of `queue` that holds messages for `delay`.
pub fn retry_queue(queue: &str, delay: Duration) -> String {
    format!("{queue}.retry.{}ms", delay.as_millis())
}

/// Declares the retry queues of `queue` under `policy` (idempotent): each
/// holds messages for its delay, then dead-letters them through the default
/// exchange back to `queue`.
pub async fn declare_retry_queues(
    channel: &Channel,
    config: &BrokerConfig,
    queue: &str,
    policy: &RetryPolicy,
) -> lapin::Result<()> {
    for delay in policy.delays() {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(config.queue_type.as_str().into()),
        );
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongInt(delay.as_millis().min(MAX_DELAY.as_millis()) as i32),
        );
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(queue.into()),
        );
        if config.queue_type == QueueType::Quorum {
            // Quorum queues dead-letter at most once unless told otherwise.
            args.insert(
                "x-dead-letter-strategy".into(),
                AMQPValue::LongString("at-least-once".into()),
            );
            args.insert(
                "x-overflow".into(),
                AMQPValue::LongString("reject-publish".into()),
            );
        }
        channel
            .queue_declare(
                retry_queue(queue, delay).into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&'static str, &str)]) -> HashMap<&'static str, String> {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn defaults_are_five_attempts_from_one_second_doubling() {
        let p = RetryPolicy::from_env(&env(&[])).unwrap();
        assert_eq!(p, RetryPolicy::default());
        assert_eq!(p.delays(), [ms(1000), ms(2000), ms(4000), ms(8000)]);
    }

    #[test]
    fn delays_double_up_to_the_cap_and_share_queues_there() {
        let p = RetryPolicy::from_env(&env(&[
            (ENV_MAX_ATTEMPTS, "8"),
            (ENV_RETRY_BASE_MS, "100"),
            (ENV_RETRY_MAX_MS, "500"),
        ]))
        .unwrap();
        let each: Vec<_> = (1..8).map(|a| p.delay_after(a)).collect();
        assert_eq!(
            each,
            [
                ms(100),
                ms(200),
                ms(400),
                ms(500),
                ms(500),
                ms(500),
                ms(500)
            ]
        );
        assert_eq!(p.delays(), [ms(100), ms(200), ms(400), ms(500)]);
        assert_eq!(p.delay_after(200), ms(500), "no overflow");
        assert_eq!(retry_queue("q", ms(400)), "q.retry.400ms");
    }

    #[test]
    fn one_attempt_means_no_retry_queues() {
        let p = RetryPolicy::from_env(&env(&[(ENV_MAX_ATTEMPTS, "1")])).unwrap();
        assert!(p.delays().is_empty());
    }

    #[test]
    fn a_base_above_the_default_cap_raises_the_cap() {
        let p = RetryPolicy::from_env(&env(&[(ENV_RETRY_BASE_MS, "120000")])).unwrap();
        assert_eq!(p.max_delay, ms(120_000));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (var, pairs) in [
            (ENV_MAX_ATTEMPTS, vec![(ENV_MAX_ATTEMPTS, "0")]),
            (ENV_MAX_ATTEMPTS, vec![(ENV_MAX_ATTEMPTS, "many")]),
            (ENV_MAX_ATTEMPTS, vec![(ENV_MAX_ATTEMPTS, "101")]),
            (ENV_RETRY_BASE_MS, vec![(ENV_RETRY_BASE_MS, "0")]),
            (ENV_RETRY_BASE_MS, vec![(ENV_RETRY_BASE_MS, "-1")]),
            (ENV_RETRY_MAX_MS, vec![(ENV_RETRY_MAX_MS, "10")]),
            (ENV_RETRY_MAX_MS, vec![(ENV_RETRY_MAX_MS, "99999999999")]),
        ] {
            let err = RetryPolicy::from_env(&env(&pairs)).unwrap_err();
            assert!(err.to_string().contains(var), "{pairs:?}: {err}");
        }
    }
}
