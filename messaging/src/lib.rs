//! Events between the services, exactly once in effect: the transactional
//! outbox's write side ([`outbox`]), the consumer inbox ([`inbox`]), the
//! broker's settings and connections ([`broker`]), RabbitMQ topology and
//! the consumer loop ([`amqp`]) with its retries and dead letters
//! ([`redelivery`]), the one rule for which failures are poison
//! ([`classify`]), the broker as a readiness probe ([`probe`]) and the
//! variables it reads ([`vars`]). The relay (its own crate) drains the
//! outbox.
//!
//! It builds on `ordermesh-runtime` and imports no service.

pub mod amqp;
pub mod broker;
pub mod classify;
pub mod inbox;
pub mod outbox;
pub mod probe;
pub mod redelivery;
pub mod vars;

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// History table of these migrations, apart from each service's own (the
/// name, from the crate these tables came from, is kept for existing
/// databases).
const HISTORY_TABLE: &str = "ordermesh_platform_schema_history";

/// The outbox, parked-row and inbox tables, for
/// `ordermesh_runtime::db::migrate`: applied before a service's own.
pub fn migrations() -> refinery::Runner {
    let mut runner = embedded::migrations::runner();
    runner.set_migration_table_name(HISTORY_TABLE);
    runner
}
