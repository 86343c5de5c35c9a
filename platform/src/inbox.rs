//! The consumer inbox: remembers which message ids a consumer has applied,
//! in the same transaction as the effect, so a redelivered message is
//! recognised and skipped.

/// Records `message_id` for `consumer`. Returns `false` when it was already
/// recorded: the caller must then skip the effect and acknowledge.
#[tracing::instrument(skip(tx))]
pub async fn record(
    tx: &tokio_postgres::Transaction<'_>,
    consumer: &str,
    message_id: &str,
) -> Result<bool, tokio_postgres::Error> {
    let inserted = tx
        .execute(
            r#"INSERT INTO inbox (consumer, message_id) VALUES ($1, $2)
               ON CONFLICT DO NOTHING"#,
            &[&consumer, &message_id],
        )
        .await?;
    Ok(inserted == 1)
}
