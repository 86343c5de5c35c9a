//! `ordermesh.auth.v1.AuthService`: customers register with a password and
//! log in for a bearer token. Passwords are kept only as argon2id PHC
//! strings ([`store`](crate::store) `credentials`), hashed on the blocking
//! pool, a few at a time: a call waits at most [`LoginPolicy::hash_wait`]
//! for its turn, then gets RESOURCE_EXHAUSTED with a RetryInfo. Tokens are
//! signed by ordermesh-auth's [`Signer`].
//!
//! Register refuses an id that has credentials or an account (an account an
//! admin opened is not anyone's to claim): ALREADY_EXISTS, found by a cheap
//! lookup before any hashing, and checked again by the insert itself.
//!
//! Login is throttled per customer id ([`Throttle`]), on top of the
//! per-caller token buckets of ordermesh-auth's layer: every attempt is
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
//!
//! This file holds the service; `policy.rs` the [`LoginPolicy`] and the
//! [`Throttle`]'s decisions.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, UNIX_EPOCH};

use argon2::{Argon2, PasswordHasher as _, PasswordVerifier as _};
use ordermesh_auth::{ClientIp, Issued, Role, Signer, retry_later};
use ordermesh_proto::auth::v1 as pb;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::{Request, Response, Status};

use crate::Error;
use crate::account::parse_customer_id;
use crate::store::Store;

mod policy;

pub use policy::{
    Admission, DEFAULT_HASH_WAIT, DEFAULT_LOGIN_FAILURE_WINDOW, DEFAULT_LOGIN_LOCKOUT,
    DEFAULT_LOGIN_LOCKOUT_MAX, DEFAULT_LOGIN_MAX_FAILURES, ENV_HASH_WAIT_MS,
    ENV_LOGIN_FAILURE_WINDOW_MS, ENV_LOGIN_LOCKOUT_MAX_MS, ENV_LOGIN_LOCKOUT_MS,
    ENV_LOGIN_MAX_FAILURES, LoginPolicy, Throttle, ThrottleState,
};

/// Shortest password Register accepts, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password Register accepts, in characters.
pub const MAX_PASSWORD_CHARS: usize = 256;
/// How long a caller refused for a busy hashing pool is told to wait.
const HASH_BUSY_RETRY: Duration = Duration::from_secs(1);

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
        tracing::debug!(customer_id, "customer registered");
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

    /// An AuthApi on a fresh, migrated database holding an account
    /// `carol` an admin opened, with every hashing slot taken.
    async fn busy_api(
        policy: LoginPolicy,
    ) -> (
        AuthApi,
        OwnedSemaphorePermit,
        ordermesh_testkit::TestDatabase,
    ) {
        use ordermesh_auth::{AuthConfig, TokenConfig};
        let db = ordermesh_testkit::TestDatabase::new();
        let config = db.url.parse().unwrap();
        let pool = ordermesh_runtime::db::connect_and_migrate(
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
