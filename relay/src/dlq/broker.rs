//! The dead-letter queues on the broker: take messages without
//! acknowledging them, put them back, replay them to their work queue.

use anyhow::Context as _;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, ConfirmSelectOptions};
use lapin::{Channel, Connection};
use ordermesh_messaging::amqp::dead_letter_queue;
use ordermesh_messaging::redelivery;
use std::io::Write;

use super::{Parked, SCAN_LIMIT};

/// A confirm-mode channel and the number of messages in `queue`'s
/// dead-letter queue, or `None` (reported) when it does not exist.
pub(super) async fn open(
    conn: &Connection,
    queue: &str,
    out: &mut impl Write,
) -> anyhow::Result<Option<(Channel, u32)>> {
    let dlq = dead_letter_queue(queue);
    let channel = conn.create_channel().await.context("open a channel")?;
    // A passive declare of a missing queue closes the channel.
    let parked = match ordermesh_messaging::amqp::ready_count(&channel, &dlq).await {
        Ok(n) => n,
        Err(e) => {
            writeln!(out, "{dlq}: not found ({e})")?;
            return Ok(None);
        }
    };
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("enable publisher confirms")?;
    Ok(Some((channel, parked)))
}

/// Takes up to `limit` messages of `queue`'s dead-letter queue without
/// acknowledging them; also returns how many were left behind.
async fn take(channel: &Channel, queue: &str, limit: usize) -> anyhow::Result<(Vec<Parked>, u32)> {
    let dlq = dead_letter_queue(queue);
    let mut held = Vec::new();
    while held.len() < limit {
        let Some(got) = channel
            .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .with_context(|| format!("read {dlq}"))?
        else {
            return Ok((held, 0));
        };
        held.push(Parked {
            queue: queue.to_owned(),
            delivery: got.delivery,
        });
    }
    let left = ordermesh_messaging::amqp::ready_count(channel, &dlq)
        .await
        .with_context(|| format!("count {dlq}"))?;
    Ok((held, left))
}

/// Puts held messages back in their places.
async fn put_back(held: &[Parked]) -> anyhow::Result<()> {
    for p in held {
        p.delivery
            .acker
            .nack(BasicNackOptions {
                multiple: false,
                requeue: true,
            })
            .await
            .context("requeue a dead letter")?;
    }
    Ok(())
}

/// The first `limit` parked messages of `queue`, left in place (flagged
/// redelivered), and how many more there are.
pub async fn list(
    channel: &Channel,
    queue: &str,
    limit: usize,
) -> anyhow::Result<(Vec<Parked>, u32)> {
    let (held, left) = take(channel, queue, limit).await?;
    put_back(&held).await?;
    Ok((held, left))
}

/// Every parked copy of message `id` in `queue`'s dead-letter queue, left
/// in place.
pub async fn show(channel: &Channel, queue: &str, id: &str) -> anyhow::Result<Vec<Parked>> {
    let (held, _) = take(channel, queue, SCAN_LIMIT).await?;
    put_back(&held).await?;
    Ok(held
        .into_iter()
        .filter(|p| p.message_id() == Some(id))
        .collect())
}

/// Replays every parked copy of `id` (or, for `None`, the first `parked`
/// messages: those parked when the command started) to `queue`; returns
/// the message ids replayed. `channel` must be in confirm mode.
pub async fn replay(
    channel: &Channel,
    queue: &str,
    id: Option<&str>,
    parked: u32,
) -> anyhow::Result<Vec<Option<String>>> {
    let mut replayed = Vec::new();
    match id {
        Some(id) => {
            let (held, _) = take(channel, queue, SCAN_LIMIT).await?;
            let (chosen, rest): (Vec<_>, Vec<_>) =
                held.into_iter().partition(|p| p.message_id() == Some(id));
            put_back(&rest).await?;
            for p in &chosen {
                replay_one(channel, p).await?;
                replayed.push(Some(id.to_owned()));
            }
        }
        None => {
            // Only what was parked at the start: a message that fails again
            // and comes back is not replayed twice by one command.
            for _ in 0..parked {
                let (mut one, _) = take(channel, queue, 1).await?;
                let Some(p) = one.pop() else { break };
                replay_one(channel, &p).await?;
                replayed.push(p.message_id().map(str::to_owned));
            }
        }
    }
    Ok(replayed)
}

/// Republishes one held message to its work queue, confirmed, then
/// acknowledges it out of the dead-letter queue. If the publish fails the
/// message stays held and goes back when the channel closes.
async fn replay_one(channel: &Channel, parked: &Parked) -> anyhow::Result<()> {
    let d = &parked.delivery;
    let properties = redelivery::replay_properties(d, &parked.queue);
    redelivery::publish_confirmed(channel, &parked.queue, &d.data, properties)
        .await
        .with_context(|| format!("replay {:?} to {}", parked.message_id(), parked.queue))?;
    d.acker
        .ack(BasicAckOptions::default())
        .await
        .context("acknowledge the replayed dead letter")?;
    Ok(())
}
