//! `ordermesh.auth.v1.AuthService`: customers register with a password and
//! log in for a bearer token. Passwords are kept only as argon2id PHC
//! strings ([`store`](crate::store) `credentials`), hashed on the blocking
//! pool, a few at a time. Tokens are signed by the platform's [`Signer`].
//! A login with an unknown customer id costs a hash too, and fails with the
//! same status as a wrong password, so registered ids cannot be probed.

use std::sync::{Arc, OnceLock};
use std::time::UNIX_EPOCH;

use argon2::{Argon2, PasswordHasher as _, PasswordVerifier as _};
use ordermesh_platform::auth::{Issued, Role, Signer};
use ordermesh_proto::auth::v1 as pb;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use crate::Error;
use crate::account::parse_customer_id;
use crate::store::Store;

/// Shortest password Register accepts, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// Longest password Register accepts, in characters.
pub const MAX_PASSWORD_CHARS: usize = 256;

/// The AuthService implementation.
#[derive(Clone)]
pub struct AuthApi {
    store: Store,
    signer: Arc<Signer>,
    /// Hashes in flight at once: each takes ~19 MiB and a core for a while.
    hashing: Arc<Semaphore>,
}

impl AuthApi {
    pub fn new(store: Store, signer: Arc<Signer>) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            store,
            signer,
            hashing: Arc::new(Semaphore::new(cores)),
        }
    }

    /// The service, ready to be added to a router.
    pub fn into_server(self) -> pb::auth_service_server::AuthServiceServer<Self> {
        pb::auth_service_server::AuthServiceServer::new(self)
    }

    /// Runs `f` (a hash or a verification) on the blocking pool.
    async fn hash<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|e| Error::PasswordHash(e.to_string()))?;
        tokio::task::spawn_blocking(f)
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
        let password = r.password;
        let hash = self
            .hash(move || {
                Argon2::default()
                    .hash_password(password.as_bytes())
                    .map(|h| h.to_string())
            })
            .await?
            .map_err(|e| Error::PasswordHash(e.to_string()))?;
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
        let r = request.into_inner();
        let customer_id = parse_customer_id(r.customer_id)?;
        if r.password.is_empty() {
            return Err(Error::invalid("password", "is required").into());
        }
        let stored = self.store.credentials(&customer_id).await?;
        // No such customer: check against a hash nobody has, so the answer
        // takes as long as for a wrong password.
        let (hash, role, known) = match stored {
            Some((hash, role)) => (hash, role, true),
            None => (unknown_customer_hash().to_owned(), Role::Customer, false),
        };
        let password = r.password;
        let matches = self
            .hash(move || {
                password.chars().count() <= MAX_PASSWORD_CHARS
                    && Argon2::default()
                        .verify_password(password.as_bytes(), hash.as_str())
                        .is_ok()
            })
            .await?;
        if !(known && matches) {
            tracing::info!(customer_id, "login refused");
            return Err(Error::WrongCredentials.into());
        }
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

    #[test]
    fn the_decoy_hash_is_argon2id() {
        let hash = unknown_customer_hash();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(Argon2::default().verify_password(b"guess", hash).is_err());
    }
}
