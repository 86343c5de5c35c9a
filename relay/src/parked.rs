//! `relay outbox`: lists, shows, replays and drops the rows the relay
//! parked in each source database's `outbox_parked` table (the messaging
//! crate's migration V3): rows it can never publish (larger than the broker takes,
//! unroutable or nacked `RELAY_MAX_ATTEMPTS` times) and the later rows of
//! their aggregates, parked behind them so per-aggregate order holds.
//!
//! A parked row keeps its outbox id. `replay` moves it and every later
//! parked row of its aggregate back into the outbox in one transaction,
//! with their ids, attempts reset and no retry time; the relay claims in id
//! order, so they go out before the rows of their partition written since.
//! The replay first locks the rows it moves (`FOR UPDATE`): a relay that
//! locks an aggregate's parked rows before parking another row behind them
//! waits for the replay and then finds them gone. `drop` deletes one row,
//! printing it first; the later rows of its aggregate stay parked.
//!
//! Sources are named by their database, never by URL (it may carry a
//! password).

mod output;
mod store;

use std::fmt;
use std::io::Write;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use clap::{ArgGroup, Subcommand};
use ordermesh_runtime::config::{ConfigError, Env};
use ordermesh_runtime::db;
use serde_json::json;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;
use uuid::Uuid;

pub use self::output::{detail_json, summary_json};
use self::output::{id_list, print_detail, print_replayed, print_table, printable};
pub use self::store::{
    ParkedDetail, ParkedRow, Replayed, delete_parked, find_parked, list_parked, lock_for_replay,
    move_back, parked_ids_of,
};
use crate::Source;

/// The command's `application_name` in `pg_stat_activity`; unlike the
/// relay's own (`ordermesh-relay...`), so tools that count relays skip it.
pub const APPLICATION_NAME: &str = "relay-outbox";
/// Rows `list` prints per source unless `--limit` says otherwise.
pub const DEFAULT_LIST_LIMIT: i64 = 1000;
/// How long the command waits for a database.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `replay` and `drop` wait for rows a relay holds locked.
pub const LOCK_TIMEOUT: Duration = Duration::from_secs(10);

/// `relay outbox ...`
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List parked rows in outbox (id) order, oldest first.
    List {
        #[command(flatten)]
        source: SourceArg,
        /// Print at most this many per source.
        #[arg(long, default_value_t = DEFAULT_LIST_LIMIT,
              value_parser = clap::value_parser!(i64).range(1..))]
        limit: i64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print one parked row: its fields, headers and payload (as JSON when
    /// its type is an ordermesh event, else base64).
    Show {
        /// Its outbox id, or its event id (the AMQP message_id).
        id: RowKey,
        #[command(flatten)]
        source: SourceArg,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Move a parked row and every later parked row of its aggregate back
    /// into the outbox, in one transaction, with their ids, attempts reset:
    /// the relay publishes them before the later rows of their partition.
    #[command(group(ArgGroup::new("which").required(true).args(["id", "all"])))]
    Replay {
        /// Its outbox id, or its event id.
        id: Option<RowKey>,
        /// Replay every parked row.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        source: SourceArg,
    },
    /// Delete one parked row for good, after printing it. The later rows of
    /// its aggregate stay parked until they are replayed or dropped.
    Drop {
        /// Its outbox id, or its event id.
        id: RowKey,
        #[command(flatten)]
        source: SourceArg,
    },
}

#[derive(Debug, clap::Args)]
pub struct SourceArg {
    /// The source database (its name, as in RELAY_SOURCES); default: all.
    #[arg(long)]
    pub source: Option<String>,
}

/// A parked row as the operator names it: by outbox id or by event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowKey {
    Id(i64),
    Event(Uuid),
}

impl FromStr for RowKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(id) = s.parse() {
            return Ok(Self::Id(id));
        }
        Uuid::parse_str(s)
            .map(Self::Event)
            .map_err(|_| "expected an outbox id (a number) or an event id (a UUID)".to_owned())
    }
}

impl fmt::Display for RowKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => write!(f, "{id}"),
            Self::Event(event) => write!(f, "with event id {event}"),
        }
    }
}

/// The source databases, from the relay's own variable.
#[derive(Debug, Clone)]
pub struct Config {
    /// Named by database; by database and server when two share a name.
    pub sources: Vec<Source>,
}

impl Config {
    /// Reads `RELAY_SOURCES` (and `PG_CA_FILE`) as the relay does.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        Ok(Self {
            sources: with_unique_names(crate::sources(env)?),
        })
    }

    /// The sources `--source` names (by name, or by database name when two
    /// servers have one of that name), or all.
    fn select(&self, arg: &SourceArg) -> anyhow::Result<Vec<&Source>> {
        let Some(want) = &arg.source else {
            return Ok(self.sources.iter().collect());
        };
        let chosen: Vec<&Source> = self
            .sources
            .iter()
            .filter(|s| s.name == *want || s.config.get_dbname() == Some(want.as_str()))
            .collect();
        anyhow::ensure!(
            !chosen.is_empty(),
            "no source {want:?}: {} has {}",
            crate::ENV_SOURCES,
            names(&self.sources.iter().collect::<Vec<_>>())
        );
        Ok(chosen)
    }
}

/// Sources whose database name is also on another server get `@host:port`
/// added; the same database listed twice is kept once.
fn with_unique_names(sources: Vec<Source>) -> Vec<Source> {
    let keys: Vec<(String, String)> = sources
        .iter()
        .map(|s| (s.name.clone(), server(&s.config)))
        .collect();
    let mut out: Vec<Source> = Vec::with_capacity(sources.len());
    for (mut source, (name, host)) in sources.into_iter().zip(&keys) {
        if keys.iter().any(|(n, h)| n == name && h != host) {
            source.name = format!("{name}@{host}");
        }
        if !out.iter().any(|o| o.name == source.name) {
            out.push(source);
        }
    }
    out
}

/// `host:port` of a database's first host.
fn server(config: &db::DbConfig) -> String {
    use tokio_postgres::config::Host;
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

fn names(sources: &[&Source]) -> String {
    sources
        .iter()
        .map(|s| s.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs one `relay outbox` command, writing its report to `out`.
pub async fn run(command: Command, config: &Config, out: &mut impl Write) -> anyhow::Result<()> {
    match command {
        Command::List {
            source,
            limit,
            json,
        } => list_cmd(&config.select(&source)?, limit, json, out).await,
        Command::Show { id, source, json } => {
            show_cmd(&config.select(&source)?, id, json, out).await
        }
        Command::Replay { id, all, source } => {
            let sources = config.select(&source)?;
            match (id, all) {
                (None, true) => replay_all_cmd(&sources, out).await,
                (Some(id), false) => replay_cmd(&sources, id, out).await,
                _ => anyhow::bail!("replay takes an id or --all"),
            }
        }
        Command::Drop { id, source } => drop_cmd(&config.select(&source)?, id, out).await,
    }
}

/// A connection to `source`, its lock waits bounded by [`LOCK_TIMEOUT`].
async fn connect(source: &Source) -> anyhow::Result<Client> {
    let mut config = source.config.clone();
    config.application_name(APPLICATION_NAME);
    let options = format!(
        "{} -c lock_timeout={}",
        source.config.get_options().unwrap_or_default(),
        LOCK_TIMEOUT.as_millis()
    );
    config.options(options.trim());
    let (client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, config.connect())
        .await
        .map_err(|_| anyhow::anyhow!("{} not reachable within {CONNECT_TIMEOUT:?}", source.name))?
        .with_context(|| format!("connect to {}", source.name))?;
    tokio::spawn(connection);
    Ok(client)
}

/// A database error, saying which source; a missing table means the
/// service has not migrated yet.
fn sql_error(source: &Source, e: tokio_postgres::Error) -> anyhow::Error {
    if e.code() == Some(&SqlState::UNDEFINED_TABLE) {
        let detail = e.as_db_error().map(|d| d.message()).unwrap_or_default();
        return anyhow::anyhow!(
            "{} is not migrated for parked rows ({detail}): start its service once, or run its `migrate`",
            source.name
        );
    }
    anyhow::Error::new(e).context(format!("query {}", source.name))
}

async fn list_cmd(
    sources: &[&Source],
    limit: i64,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for source in sources {
        let listed = async {
            let client = connect(source).await?;
            list_parked(&client, limit)
                .await
                .map_err(|e| sql_error(source, e))
        }
        .await;
        match listed {
            Ok((rows, _)) if json => {
                for row in &rows {
                    writeln!(out, "{}", summary_json(&source.name, row))?;
                }
            }
            Ok((rows, total)) => print_table(out, &source.name, &rows, total)?,
            Err(e) => {
                if !json {
                    writeln!(out, "{}: unavailable ({e:#})", source.name)?;
                }
                failed.push(format!("{e:#}"));
            }
        }
    }
    anyhow::ensure!(failed.is_empty(), "could not list {}", failed.join("; "));
    Ok(())
}

/// The one source that has parked row `key`, a connection to it, and the
/// row. Refuses when no source or several have it.
async fn resolve<'a>(
    sources: &[&'a Source],
    key: RowKey,
) -> anyhow::Result<(&'a Source, Client, ParkedDetail)> {
    let mut found = Vec::new();
    for &source in sources {
        let client = connect(source).await.map_err(|e| {
            if sources.len() > 1 {
                e.context("(--source picks one source)")
            } else {
                e
            }
        })?;
        if let Some(row) = find_parked(&client, key)
            .await
            .map_err(|e| sql_error(source, e))?
        {
            found.push((source, client, row));
        }
    }
    match found.len() {
        0 => anyhow::bail!("no parked row {key} in {}", names(sources)),
        1 => Ok(found.pop().expect("one")),
        _ => {
            let holders: Vec<&Source> = found.iter().map(|(s, _, _)| *s).collect();
            anyhow::bail!(
                "parked row {key} is in several sources ({}): choose one with --source",
                names(&holders)
            )
        }
    }
}

async fn show_cmd(
    sources: &[&Source],
    key: RowKey,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let (source, client, detail) = resolve(sources, key).await?;
    let aggregate = parked_ids_of(&client, &detail.row.aggregate_id)
        .await
        .map_err(|e| sql_error(source, e))?;
    if json {
        let mut value = detail_json(&source.name, &detail);
        value["aggregate_parked_ids"] = json!(aggregate);
        writeln!(out, "{value}")?;
    } else {
        print_detail(out, &source.name, &detail)?;
        writeln!(
            out,
            "parked rows of its aggregate: {} (replay moves this one and the later ones)",
            id_list(&aggregate)
        )?;
    }
    Ok(())
}

async fn replay_cmd(sources: &[&Source], key: RowKey, out: &mut impl Write) -> anyhow::Result<()> {
    let (source, mut client, detail) = resolve(sources, key).await?;
    let id = detail.row.id;
    let aggregate = &detail.row.aggregate_id;
    let (moved, earlier) = async {
        let tx = client.transaction().await?;
        if lock_for_replay(&tx, Some(id)).await?.is_empty() {
            return Ok((Vec::new(), Vec::new()));
        }
        let moved = move_back(&tx, Some(id)).await?;
        let earlier = parked_ids_of(&tx, aggregate).await?;
        tx.commit().await?;
        Ok((moved, earlier))
    }
    .await
    .map_err(|e| sql_error(source, e))?;
    anyhow::ensure!(
        !moved.is_empty(),
        "row {id} of {} is no longer parked (replayed or dropped meanwhile)",
        source.name
    );
    print_replayed(out, &source.name, &moved)?;
    writeln!(out, "replayed {} row(s)", moved.len())?;
    if !earlier.is_empty() {
        writeln!(
            out,
            "note: earlier rows of aggregate {} are still parked ({}): the relay parks \
             these again behind them; replay {} to send the whole aggregate",
            printable(aggregate),
            id_list(&earlier),
            earlier[0]
        )?;
    }
    Ok(())
}

async fn replay_all_cmd(sources: &[&Source], out: &mut impl Write) -> anyhow::Result<()> {
    let mut total = 0;
    for source in sources {
        let mut client = connect(source).await?;
        let moved = async {
            let tx = client.transaction().await?;
            lock_for_replay(&tx, None).await?;
            let moved = move_back(&tx, None).await?;
            tx.commit().await?;
            Ok(moved)
        }
        .await
        .map_err(|e| sql_error(source, e))?;
        print_replayed(out, &source.name, &moved)?;
        total += moved.len();
    }
    writeln!(out, "replayed {total} row(s)")?;
    Ok(())
}

async fn drop_cmd(sources: &[&Source], key: RowKey, out: &mut impl Write) -> anyhow::Result<()> {
    let (source, mut client, found) = resolve(sources, key).await?;
    let id = found.row.id;
    let tx = client
        .transaction()
        .await
        .map_err(|e| sql_error(source, e))?;
    let Some(dropped) = delete_parked(&tx, id)
        .await
        .map_err(|e| sql_error(source, e))?
    else {
        anyhow::bail!(
            "row {id} of {} is no longer parked (replayed or dropped meanwhile)",
            source.name
        );
    };
    let later: Vec<i64> = parked_ids_of(&tx, &dropped.row.aggregate_id)
        .await
        .map_err(|e| sql_error(source, e))?
        .into_iter()
        .filter(|other| *other > id)
        .collect();
    // The row is printed in full before the delete commits: if the output
    // fails, the transaction rolls back and nothing is lost.
    print_detail(out, &source.name, &dropped)?;
    out.flush()?;
    tx.commit().await.map_err(|e| sql_error(source, e))?;
    writeln!(
        out,
        "dropped {} id {id} (event {})",
        source.name, dropped.row.event_id
    )?;
    if !later.is_empty() {
        writeln!(
            out,
            "later rows of aggregate {} stay parked ({}): replay or drop them",
            printable(&dropped.row.aggregate_id),
            id_list(&later)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn ids_are_outbox_ids_or_event_ids() {
        assert_eq!("42".parse::<RowKey>(), Ok(RowKey::Id(42)));
        let event = Uuid::now_v7();
        assert_eq!(
            event.to_string().parse::<RowKey>(),
            Ok(RowKey::Event(event))
        );
        assert!("order-1".parse::<RowKey>().is_err());
    }

    #[test]
    fn sources_are_named_by_database_never_by_url() {
        let env = HashMap::from([(
            crate::ENV_SOURCES,
            "postgres://u:hunter2@a:5432/orders,postgres://u:hunter2@b:5433/orders,\
             postgres://u:hunter2@a/payments,postgres://u:hunter2@a/payments"
                .to_owned(),
        )]);
        let config = Config::from_env(&env).unwrap();
        let names: Vec<_> = config.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["orders@a:5432", "orders@b:5433", "payments"]);
        let all = config.select(&SourceArg { source: None }).unwrap();
        assert_eq!(all.len(), 3);
        let orders = config
            .select(&SourceArg {
                source: Some("orders".into()),
            })
            .unwrap();
        assert_eq!(orders.len(), 2);
        let err = config
            .select(&SourceArg {
                source: Some("nope".into()),
            })
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("orders@a:5432, orders@b:5433, payments"),
            "{err}"
        );
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("a\u{1b}[2Jb\n"), "a\\u{1b}[2Jb\\n");
    }
}
