//! Partition leases: how several relays share one source database without
//! ever publishing two events of one aggregate out of order.
//!
//! Each relay keeps one dedicated connection per source (the lease
//! connection, `application_name` `ordermesh-relay-lease/<instance>`). On
//! it, a session advisory lock `(LEASE_LOCK_CLASS, p)` is the lease of
//! partition `p`: whoever holds it is the only relay that claims `p`'s rows.
//! The locks live exactly as long as the session, so a relay that dies
//! loses its leases when PostgreSQL sees its connection close (at once for
//! a killed process; TCP keepalives and `client_connection_check_interval`
//! bound it for a vanished host).
//!
//! Rebalancing: every `RELAY_REBALANCE_MS` each relay counts the lease
//! connections to the database (`pg_stat_activity`), aims for
//! `ceil(PARTITIONS / relays)` partitions, releases its excess and
//! try-locks free partitions up to its share. A joining relay gets its
//! share within two intervals; a dead relay's partitions are taken within
//! one interval of its connection closing.
//!
//! The same connection holds the "warm" locks `(WARM_LOCK_CLASS, p)` while
//! the relay polls its partitions (the outbox trigger skips its NOTIFY
//! then) and passes the writers' gate when it stops polling: see
//! `messaging/migrations/V2__outbox_partitions.sql` (a unit test in
//! [`crate::store`] holds it to these constants).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ordermesh_messaging::outbox::{PARTITIONS, WARM_LOCK_CLASS};
use ordermesh_runtime::db::DbConfig;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::store::{self, LEASE_APPLICATION_PREFIX, LEASE_LOCK_CLASS};

/// Longest any lease statement may take before the connection is
/// considered lost (and dropped, which releases its locks).
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("lease connection: {0}")]
    Database(#[from] tokio_postgres::Error),
    #[error("lease connection: no answer within {STATEMENT_TIMEOUT:?}")]
    Timeout,
}

/// A set of partitions as a bit mask (bit `p` = partition `p`).
pub type Mask = u64;

/// The partitions of `mask`, ascending.
pub fn partitions(mask: Mask) -> Vec<i16> {
    (0..PARTITIONS).filter(|p| mask & bit(*p) != 0).collect()
}

fn bit(p: i16) -> Mask {
    1u64 << p
}

fn mask_of(partitions: &[i16]) -> Mask {
    partitions.iter().fold(0, |m, p| m | bit(*p))
}

/// What one [`Lease::rebalance`] changed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rebalanced {
    pub relays: i64,
    pub gained: Mask,
    pub released: Mask,
}

/// One relay's leases on one source database.
pub struct Lease {
    client: Client,
    driver: JoinHandle<()>,
    held: Mask,
    warm: Mask,
    /// The held mask, published for the LISTEN task's filter.
    shared: Arc<AtomicU64>,
    /// Where this relay starts looking for free partitions, so relays that
    /// start together try different ones first.
    offset: i16,
}

impl Lease {
    /// Opens the lease connection. It holds no partition yet.
    pub async fn connect(
        config: &DbConfig,
        instance: &str,
        shared: Arc<AtomicU64>,
    ) -> Result<Self, LeaseError> {
        let mut config = config.clone();
        config
            .application_name(format!("{LEASE_APPLICATION_PREFIX}{instance}"))
            .connect_timeout(STATEMENT_TIMEOUT)
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(5))
            .keepalives_interval(Duration::from_secs(1))
            .keepalives_retries(3)
            // The server side: notice a vanished relay (its locks go with it)
            // even while this session waits on the gate.
            .options(
                "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=1 -c tcp_keepalives_count=3 \
                 -c client_connection_check_interval=1000 -c lock_timeout=2000",
            );
        let (client, connection) = timed(config.connect()).await?;
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "lease connection ended");
            }
        });
        shared.store(0, Ordering::SeqCst);
        let offset = (instance
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31) ^ u32::from(b))
            % PARTITIONS as u32) as i16;
        Ok(Self {
            client,
            driver,
            held: 0,
            warm: 0,
            shared,
            offset,
        })
    }

    /// Whether the connection (and so every lease) is gone.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    pub fn held(&self) -> Mask {
        self.held
    }

    /// Whether the warm locks of every held partition are taken.
    pub fn is_warm(&self) -> bool {
        self.warm != 0
    }

    /// Moves toward this relay's share of the partitions: releases the
    /// excess, then try-locks free partitions up to the share.
    pub async fn rebalance(&mut self) -> Result<Rebalanced, LeaseError> {
        let relays = timed(store::live_relays(&self.client)).await?.max(1);
        let share = (i64::from(PARTITIONS) + relays - 1) / relays;
        let held = i64::from(self.held.count_ones());
        let mut change = Rebalanced {
            relays,
            ..Default::default()
        };
        if held > share {
            // Give up the highest partitions.
            let mut excess: Vec<i16> = partitions(self.held);
            excess.reverse();
            excess.truncate((held - share) as usize);
            self.release(&excess).await?;
            change.released = mask_of(&excess);
        } else if held < share {
            let candidates: Vec<i16> = (0..PARTITIONS)
                .map(|i| (i + self.offset) % PARTITIONS)
                .filter(|p| self.held & bit(*p) == 0)
                .collect();
            let got = timed(store::try_lock(
                &self.client,
                LEASE_LOCK_CLASS,
                &candidates,
                share - held,
            ))
            .await?;
            change.gained = mask_of(&got);
            self.held |= change.gained;
            if self.is_warm() && change.gained != 0 {
                self.warm_partitions(change.gained).await?;
            }
        }
        self.publish();
        Ok(change)
    }

    /// Takes the warm lock of every held partition not warm yet; writers to
    /// those partitions stop notifying. A partition whose warm lock is busy
    /// stays cold (its writers keep notifying, which is only slower).
    pub async fn warm(&mut self) -> Result<(), LeaseError> {
        let cold = self.held & !self.warm;
        if cold != 0 {
            self.warm_partitions(cold).await?;
        }
        Ok(())
    }

    async fn warm_partitions(&mut self, mask: Mask) -> Result<(), LeaseError> {
        let parts = partitions(mask);
        let got = timed(store::try_lock(
            &self.client,
            WARM_LOCK_CLASS,
            &parts,
            parts.len() as i64,
        ))
        .await?;
        self.warm |= mask_of(&got);
        Ok(())
    }

    /// Releases the warm locks and waits for the writers in flight, which
    /// may have skipped their NOTIFY; after this, a claim sees every row
    /// whose writer did not notify. A gate that stays busy past the lock
    /// timeout is left alone: the fallback tick covers those rows.
    pub async fn cool(&mut self) -> Result<(), LeaseError> {
        if self.warm == 0 {
            return Ok(());
        }
        timed(store::unlock(
            &self.client,
            WARM_LOCK_CLASS,
            &partitions(self.warm),
        ))
        .await?;
        self.warm = 0;
        self.gate().await
    }

    async fn gate(&self) -> Result<(), LeaseError> {
        match timed(store::pass_gate(&self.client)).await {
            Err(LeaseError::Database(e))
                if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) =>
            {
                tracing::debug!("writers held the outbox gate past the lock timeout");
                Ok(())
            }
            other => other,
        }
    }

    /// Hands partitions back: warm locks first, then the gate (so writers
    /// that skipped their NOTIFY are committed before another relay's first
    /// claim), then the leases.
    async fn release(&mut self, parts: &[i16]) -> Result<(), LeaseError> {
        let mask = mask_of(parts);
        if self.warm & mask != 0 {
            timed(store::unlock(
                &self.client,
                WARM_LOCK_CLASS,
                &partitions(self.warm & mask),
            ))
            .await?;
            self.warm &= !mask;
            self.gate().await?;
        }
        self.held &= !mask;
        self.publish();
        timed(store::unlock(&self.client, LEASE_LOCK_CLASS, parts)).await?;
        Ok(())
    }

    fn publish(&self) {
        self.shared.store(self.held, Ordering::SeqCst);
    }
}

/// Dropping the lease closes its connection, which releases every lock.
impl Drop for Lease {
    fn drop(&mut self) {
        self.shared.store(0, Ordering::SeqCst);
        self.driver.abort();
    }
}

async fn timed<T>(
    f: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, LeaseError> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, f).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(LeaseError::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_round_trip() {
        const ALL: Mask = u64::MAX;
        assert_eq!(PARTITIONS, 64, "a mask holds 64 partitions");
        let parts = [0, 5, 63];
        assert_eq!(partitions(mask_of(&parts)), parts);
        assert!(partitions(0).is_empty());
        assert_eq!(partitions(ALL).len(), PARTITIONS as usize);
    }
}
