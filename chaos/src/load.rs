//! The load: customers whose deposits cover only part of what they order,
//! and `CreateOrder` sent open-loop at a fixed rate. Every call is retried
//! with the same `order_id` (and every deposit with the same `deposit_id`)
//! until the service accepts it, as a careful client would: the call may
//! fail while the service's database connections are being killed, and
//! may have committed before it failed.
//!
//! The plan is drawn from a seed, so a run can be repeated: a few orders
//! carry an embargoed SKU (they end FAILED for the embargo), and because
//! each customer is funded with about 90% of what they order, their last
//! orders fail for insufficient funds, whichever order they are paid in.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ordermesh_proto::order::v1::{CreateOrderRequest, OrderItem};
use ordermesh_proto::payment::v1::{CreateAccountRequest, DepositRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::Code;

use crate::client::Clients;

const SKUS: &[&str] = &["widget", "gadget", "gizmo", "sprocket", "flange"];
/// In processor-svc's default `EMBARGOED_SKUS`.
pub const EMBARGOED_SKU: &str = "teapot";
/// Share of orders with an embargoed item, in per mille.
const EMBARGOED_PERMILLE: u32 = 40;
/// Requests in flight at most.
const MAX_IN_FLIGHT: usize = 1024;
/// One attempt's deadline; a hung call is retried.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Customer {
    pub id: String,
    /// Paid in before the load, and half-way through it.
    pub deposits: [i64; 2],
}

pub struct PlannedOrder {
    pub order_id: String,
    pub customer: usize,
    pub items: Vec<OrderItem>,
    pub total_minor: i64,
}

pub struct Plan {
    pub seed: u64,
    pub customers: Vec<Customer>,
    pub orders: Vec<PlannedOrder>,
}

impl Plan {
    pub fn new(orders: usize, customers: usize, seed: u64) -> Self {
        let customers = customers.max(1);
        let mut rng = StdRng::seed_from_u64(seed);
        let mut spend = vec![0i64; customers];
        let orders: Vec<PlannedOrder> = (0..orders)
            .map(|i| {
                let customer = rng.random_range(0..customers);
                let mut items: Vec<OrderItem> = (0..rng.random_range(1..=3))
                    .map(|_| OrderItem {
                        sku: SKUS[rng.random_range(0..SKUS.len())].to_owned(),
                        quantity: rng.random_range(1..=3),
                        unit_price_minor: rng.random_range(100..=2_500),
                    })
                    .collect();
                let embargoed = rng.random_range(0..1000) < EMBARGOED_PERMILLE;
                if embargoed {
                    items.push(OrderItem {
                        sku: EMBARGOED_SKU.to_owned(),
                        quantity: 1,
                        unit_price_minor: 3_000,
                    });
                }
                let total_minor = items
                    .iter()
                    .map(|i| i64::from(i.quantity) * i.unit_price_minor)
                    .sum();
                if !embargoed {
                    spend[customer] += total_minor;
                }
                PlannedOrder {
                    order_id: format!("chaos-{i:06}"),
                    customer,
                    items,
                    total_minor,
                }
            })
            .collect();
        let customers = spend
            .iter()
            .enumerate()
            .map(|(i, &s)| Customer {
                id: format!("chaos-customer-{i:03}"),
                deposits: [(s * 55 / 100).max(1_000), (s * 35 / 100).max(1_000)],
            })
            .collect();
        Self {
            seed,
            customers,
            orders,
        }
    }

    /// The idempotency key of deposit `round` of customer `customer`.
    pub fn deposit_id(&self, customer: usize, round: usize) -> String {
        format!("{}-deposit-{round}", self.customers[customer].id)
    }
}

/// Counters the progress line reads while the load runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub sent: AtomicUsize,
    pub accepted: AtomicUsize,
    /// Attempts that failed and were retried (orders and deposits).
    pub retries: AtomicUsize,
}

#[derive(Debug, Default)]
pub struct LoadReport {
    pub accepted: usize,
    /// Orders the service refused for good, with the status.
    pub refused: Vec<(String, String)>,
    /// Deposits not accepted in time, with the status.
    pub deposits_failed: Vec<(String, String)>,
    pub retries: usize,
    /// From the first request until every order was accepted.
    pub seconds: f64,
}

/// Opens every customer's account and pays in their first deposit.
pub async fn open_accounts(
    clients: &Clients,
    plan: &Plan,
    deadline: Instant,
    progress: &Progress,
) -> anyhow::Result<()> {
    for c in &plan.customers {
        let opened = retrying(deadline, progress, || {
            let mut accounts = clients.accounts.clone();
            let request = CreateAccountRequest {
                customer_id: c.id.clone(),
                currency_code: "USD".into(),
            };
            async move { accounts.create_account(attempt(request)).await }
        })
        .await;
        match opened {
            Ok(_) => {}
            // A first attempt that committed before it failed.
            Err(s) if s.code() == Code::AlreadyExists => {}
            Err(s) => anyhow::bail!("CreateAccount {}: {s}", c.id),
        }
    }
    let failed = deposit_round(clients, plan, 0, deadline, progress).await;
    if let Some((id, status)) = failed.first() {
        anyhow::bail!("deposit {id}: {status}");
    }
    Ok(())
}

/// Pays in deposit `round` of every customer; returns the ones that failed.
async fn deposit_round(
    clients: &Clients,
    plan: &Plan,
    round: usize,
    deadline: Instant,
    progress: &Progress,
) -> Vec<(String, String)> {
    let mut failed = Vec::new();
    for (i, c) in plan.customers.iter().enumerate() {
        let deposit_id = plan.deposit_id(i, round);
        let result = retrying(deadline, progress, || {
            let mut accounts = clients.accounts.clone();
            let request = DepositRequest {
                customer_id: c.id.clone(),
                amount_minor: c.deposits[round],
                deposit_id: deposit_id.clone(),
            };
            async move { accounts.deposit(attempt(request)).await }
        })
        .await;
        if let Err(s) = result {
            failed.push((deposit_id, s.to_string()));
        }
    }
    failed
}

/// Sends every order of the plan at `rate` per second (the second deposit
/// of every customer half-way through) and returns once each is accepted,
/// refused for good, or `deadline` passed.
pub async fn run(
    clients: &Clients,
    plan: &Arc<Plan>,
    rate: f64,
    deadline: Instant,
    progress: &Arc<Progress>,
) -> LoadReport {
    let started = Instant::now();
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let half = plan.orders.len() / 2;
    let mut tasks = tokio::task::JoinSet::new();
    let mut top_up = None;
    for i in 0..plan.orders.len() {
        if i == half {
            let (clients, plan, progress) = (clients.clone(), plan.clone(), progress.clone());
            top_up = Some(tokio::spawn(async move {
                deposit_round(&clients, &plan, 1, deadline, &progress).await
            }));
        }
        tokio::time::sleep_until(started + interval * i as u32).await;
        if Instant::now() >= deadline {
            break;
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (orders, plan, progress) = (clients.orders.clone(), plan.clone(), progress.clone());
        progress.sent.fetch_add(1, Ordering::Relaxed);
        tasks.spawn(async move {
            let order = &plan.orders[i];
            let result = retrying(deadline, &progress, || {
                let mut orders = orders.clone();
                let request = CreateOrderRequest {
                    order_id: order.order_id.clone(),
                    customer_id: plan.customers[order.customer].id.clone(),
                    currency_code: "USD".into(),
                    items: order.items.clone(),
                };
                async move { orders.create_order(attempt(request)).await }
            })
            .await;
            drop(permit);
            match result {
                Ok(_) => {
                    progress.accepted.fetch_add(1, Ordering::Relaxed);
                    None
                }
                Err(s) => Some((order.order_id.clone(), s.to_string())),
            }
        });
    }
    let mut report = LoadReport::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(None) => report.accepted += 1,
            Ok(Some(refused)) => report.refused.push(refused),
            Err(e) => report
                .refused
                .push(("?".into(), format!("task failed: {e}"))),
        }
    }
    let unsent = plan.orders.len() - progress.sent.load(Ordering::Relaxed);
    if unsent > 0 {
        report.refused.push((
            format!("{unsent} orders"),
            "never sent: the deadline passed".into(),
        ));
    }
    report.seconds = started.elapsed().as_secs_f64();
    if let Some(top_up) = top_up {
        report.deposits_failed = top_up.await.unwrap_or_default();
    } else {
        report.deposits_failed = deposit_round(clients, plan, 1, deadline, progress).await;
    }
    report.retries = progress.retries.load(Ordering::Relaxed);
    report
}

fn attempt<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(ATTEMPT_TIMEOUT);
    request
}

/// Codes after which the same request may succeed: the service or its
/// database was unavailable, or the answer was lost.
fn retryable(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::Unknown
            | Code::Internal
            | Code::DeadlineExceeded
            | Code::Cancelled
            | Code::Aborted
            | Code::ResourceExhausted
    )
}

/// Calls `call` until it succeeds, fails for good, or `deadline` passes;
/// pauses 50 ms, doubling to 1 s, between attempts.
async fn retrying<T, F, Fut>(
    deadline: Instant,
    progress: &Progress,
    mut call: F,
) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let mut pause = Duration::from_millis(50);
    loop {
        match call().await {
            Ok(response) => return Ok(response.into_inner()),
            Err(s) if retryable(s.code()) && Instant::now() + pause < deadline => {
                progress.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            Err(s) => return Err(s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_is_repeatable_and_underfunded() {
        let a = Plan::new(2_000, 20, 7);
        let b = Plan::new(2_000, 20, 7);
        assert_eq!(a.orders.len(), 2_000);
        assert_eq!(a.orders[123].items, b.orders[123].items);
        let embargoed = a
            .orders
            .iter()
            .filter(|o| o.items.iter().any(|i| i.sku == EMBARGOED_SKU))
            .count();
        assert!((40..=130).contains(&embargoed), "{embargoed}");
        let spend: i64 = a
            .orders
            .iter()
            .filter(|o| !o.items.iter().any(|i| i.sku == EMBARGOED_SKU))
            .map(|o| o.total_minor)
            .sum();
        let funded: i64 = a.customers.iter().flat_map(|c| c.deposits).sum();
        assert!(funded < spend && funded > spend * 8 / 10);
    }

    #[test]
    fn what_is_retried() {
        assert!(retryable(Code::Unavailable) && retryable(Code::Internal));
        assert!(!retryable(Code::InvalidArgument) && !retryable(Code::AlreadyExists));
    }
}
