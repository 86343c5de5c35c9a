//! `ordermesh.auth.v1.AuthService`: customers register with a password and
//! log in for a bearer token. Passwords are kept only as argon2id PHC
//! strings ([`store`](crate::store) `credentials`), hashed on the blocking
//! pool, a few at a time: a call waits at most [`LoginPolicy::hash_wait`]
//! for its turn, then gets RESOURCE_EXHAUSTED with a RetryInfo. Tokens are
//! signed by the platform's [`Signer`].
//!
//! Register refuses an id that has credentials or an account (an account an
//! admin opened is not anyone's to claim): ALREADY_EXISTS, found by a cheap
//! lookup before any hashing, and checked again by the insert itself.
//!
//! Login is throttled per customer id ([`Throttle`]), on top of the
//! per-caller token buckets of the platform's auth layer: every attempt is
//! counted, in PostgreSQL and so across replicas, before its password is
//! checked, and a success forgets the count. After
//! [`Throttle::max_failures`] attempts the id is locked for
//! [`Throttle::lockout`], doubling with each further failed attempt up to
//! [`Throttle::max_lockout`]; while locked, attempts are refused unchecked
//! with RESOURCE_EXHAUSTED, a RetryInfo and `retry-after`. Failures are
//! forgotten [`Throttle::window`] after the last one (and the end of its
//! lock). Unknown ids are counted and locked alike, and a login with an
//! unknown id costs a hash too and fails with the same status as a wrong
//! password, so registered ids cannot be probed.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use argon2::{Argon2, PasswordHasher as _, PasswordVerifier as _};
use chrono::{DateTime, TimeDelta, Utc};
use ordermesh_platform::auth::{ClientIp, Issued, Role, Signer, retry_later};
use ordermesh_platform::config::{self, ConfigError, Env};
use ordermesh_proto::auth::v1 as pb;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status};

use crate::Error;
use crate::account::parse_customer_id;
use crate::store::Store;

/// Shortest password Register accepts, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password Register accepts, in characters.
pub const MAX_PASSWORD_CHARS: usize = 256;

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
/// How long a caller refused for a busy hashing pool is told to wait.
const HASH_BUSY_RETRY: Duration = Duration::from_secs(1);

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
/// state (see [`Store::count_login_attempt`]).
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

/// RESOURCE_EXHAUSTED for a locked customer id: the same, word for word,
/// whether the id is registered or not.
fn locked_out(retry_after: Duration) -> Status {
    retry_later("too many failed logins for this customer_id", retry_after)
}

/// The AuthService implementation.
#[derive(Clone)]
pub struct AuthApi {
    store: Store,
    signer: Arc<Signer>,
    policy: LoginPolicy,
    /// Hashes in flight at once: each takes ~19 MiB and a core for a while.
    hashing: Arc<Semaphore>,
}

impl AuthApi {
    pub fn new(store: Store, signer: Arc<Signer>, policy: LoginPolicy) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            store,
            signer,
            policy,
            hashing: Arc::new(Semaphore::new(cores)),
        }
    }

    /// The service, ready to be added to a router.
    pub fn into_server(self) -> pb::auth_service_server::AuthServiceServer<Self> {
        pb::auth_service_server::AuthServiceServer::new(self)
    }

    /// A hashing slot, or RESOURCE_EXHAUSTED once [`LoginPolicy::hash_wait`]
    /// has passed without one.
    async fn hashing_slot(&self) -> Result<OwnedSemaphorePermit, Status> {
        match tokio::time::timeout(self.policy.hash_wait, self.hashing.clone().acquire_owned())
            .await
        {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(closed)) => Err(Error::PasswordHash(closed.to_string()).into()),
            Err(_) => {
                tracing::info!("password hashing busy: call refused");
                Err(retry_later(
                    "too many password checks at once",
                    HASH_BUSY_RETRY,
                ))
            }
        }
    }

    /// Runs `f` (a hash or a verification) on the blocking pool, holding
    /// `slot` until it is done, even if the caller has gone.
    async fn hash<T: Send + 'static>(
        slot: OwnedSemaphorePermit,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        tokio::task::spawn_blocking(move || {
            let result = f();
            drop(slot);
            result
        })
        .await
        .map_err(|e| Error::PasswordHash(e.to_string()))
    }
}

#[tonic::async_trait]
impl pb::auth_service_server::AuthService for AuthApi {
    #[tracing::instrument(skip_all, fields(customer_id = %request.get_ref().customer_id))]
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let r = request.into_inner();
        let customer_id = parse_customer_id(r.customer_id)?;
        check_password(&r.password)?;
        // A taken id costs a lookup, not a hash.
        if self.store.customer_id_taken(&customer_id).await? {
            return Err(Error::AlreadyRegistered(customer_id).into());
        }
        let slot = self.hashing_slot().await?;
        let password = r.password;
        let hash = Self::hash(slot, move || {
            Argon2::default()
                .hash_password(password.as_bytes())
                .map(|h| h.to_string())
        })
        .await?
        .map_err(|e| Error::PasswordHash(e.to_string()))?;
        // Checks both again: another Register or a CreateAccount may have
        // come in meanwhile.
        self.store
            .register(&customer_id, &hash, Role::Customer)
            .await?;
        tracing::info!(customer_id, "customer registered");
        let issued = self.signer.issue(&customer_id, Role::Customer);
        Ok(Response::new(pb::RegisterResponse {
            expire_time: Some(timestamp(&issued)),
            access_token: issued.token,
        }))
    }

    #[tracing::instrument(skip_all, fields(customer_id = %request.get_ref().customer_id))]
    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let client_ip = request.extensions().get::<ClientIp>().map(|c| c.0);
        let r = request.into_inner();
        let customer_id = parse_customer_id(r.customer_id)?;
        if r.password.is_empty() {
            return Err(Error::invalid("password", "is required").into());
        }
        // A locked id is refused before it takes a hashing slot.
        if let Some(wait) = self.store.login_locked_for(&customer_id).await? {
            tracing::info!(customer_id, ?client_ip, "login refused: locked");
            return Err(locked_out(wait));
        }
        let slot = self.hashing_slot().await?;
        // Counted before the check, so concurrent guesses cannot slip past
        // the limit; this re-checks the lock in the same transaction.
        let attempt = match self
            .store
            .count_login_attempt(&customer_id, &self.policy.throttle)
            .await?
        {
            Admission::Refused { retry_after } => {
                tracing::info!(customer_id, ?client_ip, "login refused: locked");
                return Err(locked_out(retry_after));
            }
            Admission::Counted(state) => state,
        };
        let stored = self.store.credentials(&customer_id).await?;
        let known = stored.is_some();
        let (hash, role) = match stored {
            Some((hash, role)) => (Some(hash), role),
            None => (None, Role::Customer),
        };
        let password = r.password;
        let matches = Self::hash(slot, move || {
            // No such customer: check against a hash nobody has, so the
            // answer takes as long as for a wrong password.
            let hash = match &hash {
                Some(hash) => hash.as_str(),
                None => unknown_customer_hash(),
            };
            password.chars().count() <= MAX_PASSWORD_CHARS
                && Argon2::default()
                    .verify_password(password.as_bytes(), hash)
                    .is_ok()
        })
        .await?;
        if !(known && matches) {
            if let Some(until) = attempt.locked_until {
                tracing::warn!(
                    customer_id,
                    ?client_ip,
                    failures = attempt.failures,
                    %until,
                    "login refused; the customer id is locked after repeated failures"
                );
            } else {
                tracing::info!(customer_id, ?client_ip, "login refused");
            }
            return Err(Error::WrongCredentials.into());
        }
        self.store.login_succeeded(&customer_id).await?;
        let issued = self.signer.issue(&customer_id, role);
        Ok(Response::new(pb::LoginResponse {
            expire_time: Some(timestamp(&issued)),
            access_token: issued.token,
        }))
    }
}

/// INVALID_ARGUMENT naming `password` unless it has
/// [`MIN_PASSWORD_CHARS`] to [`MAX_PASSWORD_CHARS`] characters.
fn check_password(password: &str) -> Result<(), Error> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(Error::invalid(
            "password",
            format!("must be at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    if chars > MAX_PASSWORD_CHARS {
        return Err(Error::invalid(
            "password",
            format!("must be at most {MAX_PASSWORD_CHARS} characters"),
        ));
    }
    Ok(())
}

/// An argon2id hash of a random password, made once.
fn unknown_customer_hash() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        let password: [u8; 32] = rand::random();
        Argon2::default()
            .hash_password(&password)
            .expect("hashing a random password with the default parameters works")
            .to_string()
    })
}

fn timestamp(issued: &Issued) -> prost_types::Timestamp {
    let since_epoch = issued
        .expires_at
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: since_epoch.as_secs() as i64,
        nanos: since_epoch.subsec_nanos() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_have_a_length_range() {
        for bad in ["", "1234567", &"p".repeat(257)] {
            let status = Status::from(check_password(bad).unwrap_err());
            assert_eq!(status.code(), tonic::Code::InvalidArgument);
            assert!(status.message().contains("password"), "{status:?}");
        }
        // Characters, not bytes.
        assert!(check_password("ééééééé").is_err());
        assert!(check_password("éééééééé").is_ok());
        assert!(check_password(&"p".repeat(256)).is_ok());
    }

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

    /// An AuthApi on a fresh, migrated database holding an account
    /// `carol` an admin opened, with every hashing slot taken.
    async fn busy_api(
        policy: LoginPolicy,
    ) -> (
        AuthApi,
        OwnedSemaphorePermit,
        ordermesh_platform::testing::TestDatabase,
    ) {
        use ordermesh_platform::auth::{AuthConfig, TokenConfig};
        let db = ordermesh_platform::testing::TestDatabase::new();
        let config = db.url.parse().unwrap();
        let pool = ordermesh_platform::db::connect_and_migrate(
            &config,
            2,
            crate::store::migrations(),
            &tokio_util::sync::CancellationToken::new(),
        )
        .await
        .unwrap();
        db.client()
            .await
            .execute(
                "INSERT INTO accounts (customer_id, currency_code) VALUES ('carol', 'USD')",
                &[],
            )
            .await
            .unwrap();
        let signer = Signer::from_config(
            &AuthConfig::with_secret("processor-svc-unit-tests-hs256-secret-0123"),
            &TokenConfig::default(),
        )
        .unwrap();
        let api = AuthApi::new(Store::new(pool), Arc::new(signer), policy);
        let slots = u32::try_from(api.hashing.available_permits()).unwrap();
        let busy = api.hashing.clone().acquire_many_owned(slots).await.unwrap();
        (api, busy, db)
    }

    #[tokio::test]
    async fn a_busy_hashing_pool_refuses_after_the_wait_and_a_taken_id_first() {
        use pb::auth_service_server::AuthService as _;
        use tonic_types::StatusExt as _;
        let (api, busy, db) = busy_api(LoginPolicy {
            hash_wait: Duration::from_millis(50),
            ..LoginPolicy::default()
        })
        .await;
        let register = |customer_id: &str| {
            Request::new(pb::RegisterRequest {
                customer_id: customer_id.into(),
                password: "a long enough password".into(),
            })
        };
        // The id is taken: refused without asking for a hashing slot (else
        // this would be RESOURCE_EXHAUSTED).
        let status = api.register(register("carol")).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");

        // A new id waits for a slot as long as the policy says, then is
        // told to come back.
        let status = api.register(register("newcomer")).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        assert_eq!(
            status.get_details_retry_info().unwrap().retry_delay,
            Some(HASH_BUSY_RETRY)
        );
        assert_eq!(status.metadata().get("retry-after").unwrap(), "1");
        // Logins too; a login refused for want of a slot counts no failure.
        let status = api
            .login(Request::new(pb::LoginRequest {
                customer_id: "carol".into(),
                password: "a guess".into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
        let rows: i64 = db
            .client()
            .await
            .query_one("SELECT count(*) FROM login_throttle", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 0);

        // Once a slot is free, the same calls go through.
        drop(busy);
        api.register(register("newcomer")).await.unwrap();
    }

    #[test]
    fn the_decoy_hash_is_argon2id() {
        let hash = unknown_customer_hash();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(Argon2::default().verify_password(b"guess", hash).is_err());
    }
}
