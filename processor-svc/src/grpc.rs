//! `ordermesh.payment.v1.AccountService` over gRPC. Handlers only decode
//! the request into domain types, check that the caller may act for its
//! customer, call the store and encode the answer; [`Error`] becomes a
//! `tonic::Status` in one place, below.
//!
//! Authorization: a customer token reaches only its own account. Another
//! customer's account is NOT_FOUND, as if it did not exist (so ids cannot be
//! probed), except CreateAccount, which is PERMISSION_DENIED. An admin
//! token acts for every customer.

use ordermesh_auth::{self as auth, Caller};
use ordermesh_proto::payment::v1 as pb;
use tonic::{Request, Response, Status};

use crate::Error;
use crate::account::{Account, Deposit, NewAccount, parse_customer_id};
use crate::ledger::{Transaction, TransactionKind, TransactionQuery};
use crate::store::Store;

/// The AccountService implementation.
#[derive(Debug, Clone)]
pub struct AccountApi {
    store: Store,
}

impl AccountApi {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    /// The service, ready to be added to a router.
    pub fn into_server(self) -> pb::account_service_server::AccountServiceServer<Self> {
        pb::account_service_server::AccountServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl pb::account_service_server::AccountService for AccountApi {
    async fn create_account(
        &self,
        request: Request<pb::CreateAccountRequest>,
    ) -> Result<Response<pb::CreateAccountResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let new = NewAccount::parse(r.customer_id, r.currency_code)?;
        if !caller.may_act_for(&new.customer_id) {
            return Err(auth::permission_denied("customer_id", &new.customer_id));
        }
        let account = self.store.create_account(&new).await?;
        Ok(Response::new(pb::CreateAccountResponse {
            account: Some(account.into()),
        }))
    }

    async fn deposit(
        &self,
        request: Request<pb::DepositRequest>,
    ) -> Result<Response<pb::DepositResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let deposit = Deposit::parse(r.customer_id, r.amount_minor, r.deposit_id)?;
        owned(&caller, &deposit.customer_id)?;
        let account = self.store.deposit(&deposit).await?;
        Ok(Response::new(pb::DepositResponse {
            account: Some(account.into()),
        }))
    }

    async fn get_account(
        &self,
        request: Request<pb::GetAccountRequest>,
    ) -> Result<Response<pb::GetAccountResponse>, Status> {
        let caller = Caller::of(&request)?;
        let customer_id = parse_customer_id(request.into_inner().customer_id)?;
        owned(&caller, &customer_id)?;
        let account = self.store.get_account(&customer_id).await?;
        Ok(Response::new(pb::GetAccountResponse {
            account: Some(account.into()),
        }))
    }

    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let r = request.into_inner();
        let query = TransactionQuery::parse(r.customer_id, r.page_size, &r.page_token)?;
        owned(&caller, &query.customer_id)?;
        let page = self.store.list_transactions(&query).await?;
        let next_page_token = match page.transactions.last() {
            Some(last) if page.more => query.page_token(last.seq),
            _ => String::new(),
        };
        Ok(Response::new(pb::ListTransactionsResponse {
            transactions: page.transactions.into_iter().map(Into::into).collect(),
            next_page_token,
        }))
    }
}

/// NOT_FOUND, as for a missing account, unless `caller` may act for
/// `customer_id`.
fn owned(caller: &Caller, customer_id: &str) -> Result<(), Error> {
    if caller.may_act_for(customer_id) {
        Ok(())
    } else {
        Err(Error::AccountNotFound(customer_id.to_owned()))
    }
}

impl From<Account> for pb::Account {
    fn from(a: Account) -> Self {
        Self {
            customer_id: a.customer_id,
            currency_code: a.currency_code,
            balance_minor: a.balance_minor,
            create_time: Some(timestamp(a.create_time)),
            update_time: Some(timestamp(a.update_time)),
        }
    }
}

impl From<Transaction> for pb::Transaction {
    fn from(t: Transaction) -> Self {
        let kind = match t.kind {
            TransactionKind::Deposit => pb::TransactionKind::Deposit,
            TransactionKind::Debit => pb::TransactionKind::Debit,
            TransactionKind::Refund => pb::TransactionKind::Refund,
        };
        Self {
            transaction_id: t.seq.to_string(),
            customer_id: t.customer_id,
            kind: kind.into(),
            amount_minor: t.amount_minor,
            balance_after_minor: t.balance_after_minor,
            order_id: t.order_id.unwrap_or_default(),
            deposit_id: t.deposit_id.unwrap_or_default(),
            create_time: Some(timestamp(t.create_time)),
        }
    }
}

fn timestamp(t: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        match e {
            Error::InvalidArgument { field, description } => {
                ordermesh_runtime::grpc::invalid_field(field, description)
            }
            Error::AccountNotFound(id) => Status::not_found(format!("account {id:?} not found")),
            Error::AccountExists(id) => {
                Status::already_exists(format!("account {id:?} already exists"))
            }
            Error::DepositConflict(id) => Status::already_exists(format!(
                "deposit_id {id:?} was already used for another customer or amount"
            )),
            Error::BalanceOverflow => {
                Status::failed_precondition("the deposit would exceed the largest balance")
            }
            Error::AlreadyRegistered(id) => {
                Status::already_exists(format!("customer {id:?} is already registered"))
            }
            Error::WrongCredentials => Status::unauthenticated("wrong customer_id or password"),
            Error::PasswordHash(e) => {
                tracing::error!(error = %e, "password hashing failed");
                Status::internal("internal error")
            }
            Error::Pool(e) => {
                tracing::error!(error = %e, "no database connection");
                Status::unavailable("temporarily unavailable; retry later")
            }
            Error::Database(e) => {
                tracing::error!(error = %e, "database error");
                Status::internal("internal error")
            }
            Error::Internal(e) => {
                tracing::error!(error = %e, "internal error");
                Status::internal("internal error")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_name_the_field_or_stay_generic() {
        let s = Status::from(Error::invalid("amount_minor", "must be greater than 0"));
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
        assert!(s.message().contains("amount_minor"));

        let s = Status::from(Error::AccountNotFound("c".into()));
        assert_eq!(s.code(), tonic::Code::NotFound);
        let s = Status::from(Error::DepositConflict("d".into()));
        assert_eq!(s.code(), tonic::Code::AlreadyExists);
        let s = Status::from(Error::BalanceOverflow);
        assert_eq!(s.code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn transactions_map_to_the_wire() {
        let t = Transaction {
            seq: 42,
            customer_id: "alice".into(),
            kind: TransactionKind::Debit,
            amount_minor: -300,
            balance_after_minor: 700,
            order_id: Some("o-1".into()),
            deposit_id: None,
            create_time: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        };
        let wire = pb::Transaction::from(t);
        assert_eq!(wire.transaction_id, "42");
        assert_eq!(wire.kind(), pb::TransactionKind::Debit);
        assert_eq!((wire.amount_minor, wire.balance_after_minor), (-300, 700));
        assert_eq!(
            (wire.order_id.as_str(), wire.deposit_id.as_str()),
            ("o-1", "")
        );
        assert_eq!(wire.create_time.unwrap().seconds, 1_700_000_000);
    }

    #[test]
    fn timestamps_keep_subseconds() {
        let t = chrono::DateTime::from_timestamp(1_700_000_000, 123_456_000).unwrap();
        assert_eq!(
            timestamp(t),
            prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_456_000
            }
        );
    }
}
