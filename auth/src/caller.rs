//! The verified caller handlers authorize with.

use tonic::Status;

use crate::claims::Role;
use crate::status::unauthenticated;
use crate::verify::TokenError;

/// A verified caller, in the request extensions of every authenticated
/// call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's `sub`: a customer id, or an admin's name.
    pub subject: String,
    pub role: Role,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Whether the caller may see and act on `customer_id`'s resources.
    pub fn may_act_for(&self, customer_id: &str) -> bool {
        self.is_admin() || self.subject == customer_id
    }

    /// The caller [`AuthLayer`](crate::AuthLayer) verified. UNAUTHENTICATED when there is
    /// none, which only happens when a service was served unprotected.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<Self, Status> {
        request
            .extensions()
            .get::<Self>()
            .cloned()
            .ok_or_else(|| unauthenticated(TokenError::Missing))
    }
}
