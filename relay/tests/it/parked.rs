//! `relay outbox`, run as the real binary against rows parked by SQL in
//! test databases (no relay runs): `list` shows them, `show` prints one,
//! `replay` moves a row and the later parked rows of its aggregate back
//! into the outbox with their ids and leaves the others parked, `drop`
//! deletes one; unknown and ambiguous ids are refused.

use std::collections::HashMap;

use base64::Engine as _;
use ordermesh_messaging::outbox::{self, OutboxEvent};
use ordermesh_testkit::TestDatabase;
use serde_json::Value;

use crate::helpers::{self, Harness};

/// Runs `relay outbox <args>` on `sources`; asserts its exit status and
/// returns stdout and stderr.
async fn outbox(sources: &[&TestDatabase], args: &[&str], success: bool) -> (String, String) {
    let urls: Vec<&str> = sources.iter().map(|db| db.url.as_str()).collect();
    let env = HashMap::from([
        ("RELAY_SOURCES", urls.join(",")),
        ("RUST_LOG", "warn".to_owned()),
    ]);
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .arg("outbox")
        .args(args)
        .envs(env)
        .output()
        .await
        .expect("run relay outbox");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.success(),
        success,
        "relay outbox {args:?}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    (stdout, stderr)
}

/// Moves every outbox row to `outbox_parked` as the relay would: the first
/// row of each aggregate unroutable after 3 attempts, the later ones
/// behind it.
async fn park_all(pool: &deadpool_postgres::Pool) -> u64 {
    let client = pool.get().await.unwrap();
    client
        .execute(
            r#"WITH moved AS (
                   DELETE FROM outbox
                   RETURNING id, event_id, aggregate_id, routing_key, event_type, payload,
                             headers, create_time),
               first AS (SELECT aggregate_id, min(id) AS id FROM moved GROUP BY aggregate_id)
               INSERT INTO outbox_parked (id, event_id, aggregate_id, routing_key, event_type,
                                          payload, headers, create_time, attempts, reason)
               SELECT m.id, m.event_id, m.aggregate_id, m.routing_key, m.event_type,
                      m.payload, m.headers, m.create_time,
                      CASE WHEN m.id = f.id THEN 3 ELSE 0 END,
                      CASE WHEN m.id = f.id THEN 'unroutable: no queue is bound'
                           ELSE 'behind parked row ' || f.id END
               FROM moved m JOIN first f USING (aggregate_id)"#,
            &[],
        )
        .await
        .unwrap()
}

/// `(id, event_id)` of every row of `table`, in id order.
async fn ids(pool: &deadpool_postgres::Pool, table: &str) -> Vec<(i64, uuid::Uuid)> {
    let client = pool.get().await.unwrap();
    client
        .query(
            &format!("SELECT id, event_id FROM {table} ORDER BY id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn outbox_id(pool: &deadpool_postgres::Pool, event: &OutboxEvent) -> i64 {
    let client = pool.get().await.unwrap();
    client
        .query_one(
            "SELECT id FROM outbox WHERE event_id = $1 UNION ALL
             SELECT id FROM outbox_parked WHERE event_id = $1",
            &[&event.event_id],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn list_show_replay_drop() {
    let h = Harness::new().await;
    // Sequence numbers 0..6 over agg-0 (0, 2, 4) and agg-1 (1, 3, 5).
    let events = h.write(0, 6, 2).await;
    assert_eq!(park_all(&h.pool).await, 6);
    // A row written later that stays in the outbox.
    let unparked = h.write(6, 1, 100).await;
    let mut id = Vec::new();
    for e in &events {
        id.push(outbox_id(&h.pool, e).await);
    }
    let unparked_id = outbox_id(&h.pool, &unparked[0]).await;
    let db = h.db.name.as_str();

    // list: a table, and JSON in id order.
    let (text, _) = outbox(&[&h.db], &["list"], true).await;
    assert!(text.contains(&format!("{db}: 6 parked")), "{text}");
    for (e, id) in events.iter().zip(&id) {
        let line = text.lines().find(|l| l.contains(&e.event_id.to_string()));
        assert!(
            line.is_some_and(|l| l.starts_with(&format!("{id} "))),
            "{text}"
        );
    }
    assert!(text.contains("unroutable: no queue is bound"), "{text}");
    assert!(
        text.contains(&format!("behind parked row {}", id[0])),
        "{text}"
    );
    let (limited, _) = outbox(&[&h.db], &["list", "--limit", "2"], true).await;
    assert!(
        limited.contains("... and 4 more (raise --limit)"),
        "{limited}"
    );
    let (json, _) = outbox(&[&h.db], &["list", "--json"], true).await;
    let rows: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let listed: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(listed, id);
    assert_eq!(rows[0]["source"], db);
    assert_eq!(rows[0]["event_id"], events[0].event_id.to_string());
    assert_eq!(rows[0]["aggregate_id"], "agg-0");
    assert_eq!(rows[0]["routing_key"], "test.event");
    assert_eq!(rows[0]["event_type"], "test.Event");
    assert_eq!(rows[0]["attempts"], 3);
    assert_eq!(rows[0]["payload_bytes"], 8);
    assert!(rows[0]["park_time"].as_str().unwrap().ends_with('Z'));

    // show: by id, and by event id; the payload is no known type: base64.
    let (text, _) = outbox(&[&h.db], &["show", &id[2].to_string()], true).await;
    let traceparent = &events[2].headers["traceparent"];
    assert!(
        text.contains(&format!("traceparent: {traceparent}")),
        "{text}"
    );
    let base64 = base64::engine::general_purpose::STANDARD.encode(2u64.to_be_bytes());
    assert!(text.contains(&format!("base64 {base64}")), "{text}");
    assert!(text.contains(&format!("reason:       behind parked row {}", id[0])));
    let parked_of_agg0 = format!("{}, {}, {}", id[0], id[2], id[4]);
    assert!(text.contains(&parked_of_agg0), "{text}");
    let event_id = events[2].event_id.to_string();
    let (json, _) = outbox(&[&h.db], &["show", &event_id, "--json"], true).await;
    let shown: Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(shown["id"], id[2]);
    assert_eq!(shown["headers"]["traceparent"], traceparent.as_str());
    assert_eq!(shown["payload_base64"], base64);
    assert_eq!(shown["payload"], Value::Null);

    // replay the middle row of agg-0: it and agg-0's later row go back to
    // the outbox with their ids, attempts reset; agg-0's first row and
    // agg-1 stay parked.
    let (text, _) = outbox(&[&h.db], &["replay", &id[2].to_string()], true).await;
    assert!(text.contains("replayed 2 row(s)"), "{text}");
    assert!(
        text.contains(&format!("replayed {db} id {}", id[2])),
        "{text}"
    );
    assert!(
        text.contains(&format!("replayed {db} id {}", id[4])),
        "{text}"
    );
    assert!(text.contains("earlier rows of aggregate agg-0 are still parked"));
    let mut expected = vec![
        (id[2], events[2].event_id),
        (id[4], events[4].event_id),
        (unparked_id, unparked[0].event_id),
    ];
    expected.sort();
    assert_eq!(ids(&h.pool, "outbox").await, expected);
    let parked: Vec<i64> = ids(&h.pool, "outbox_parked")
        .await
        .iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(parked, [id[0], id[1], id[3], id[5]]);
    let client = h.pool.get().await.unwrap();
    let back = client
        .query_one(
            "SELECT aggregate_id, routing_key, event_type, payload, headers, attempts,
                    retry_time IS NULL, partition = (hashtext(aggregate_id) & 63)
             FROM outbox WHERE id = $1",
            &[&id[2]],
        )
        .await
        .unwrap();
    assert_eq!(back.get::<_, String>(0), "agg-0");
    assert_eq!(back.get::<_, String>(1), "test.event");
    assert_eq!(back.get::<_, String>(2), "test.Event");
    assert_eq!(back.get::<_, Vec<u8>>(3), events[2].payload);
    assert_eq!(back.get::<_, Value>(4)["traceparent"], traceparent.as_str());
    assert_eq!(back.get::<_, i32>(5), 0);
    assert!(back.get::<_, bool>(6));
    assert!(back.get::<_, bool>(7));

    // A replayed row is no longer parked.
    let (_, err) = outbox(&[&h.db], &["replay", &id[2].to_string()], false).await;
    assert!(
        err.contains(&format!("no parked row {} in {db}", id[2])),
        "{err}"
    );

    // drop the middle row of agg-1: printed, deleted; its later row stays.
    let (text, _) = outbox(&[&h.db], &["drop", &id[3].to_string()], true).await;
    assert!(text.contains(&format!("event_id:     {}", events[3].event_id)));
    assert!(
        text.contains(&format!("dropped {db} id {}", id[3])),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "later rows of aggregate agg-1 stay parked ({})",
            id[5]
        )),
        "{text}"
    );
    let parked: Vec<i64> = ids(&h.pool, "outbox_parked")
        .await
        .iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(parked, [id[0], id[1], id[5]]);

    // replay --all: everything left goes back.
    let (text, _) = outbox(&[&h.db], &["replay", "--all"], true).await;
    assert!(text.contains("replayed 3 row(s)"), "{text}");
    assert!(ids(&h.pool, "outbox_parked").await.is_empty());
    let in_outbox: Vec<i64> = ids(&h.pool, "outbox").await.iter().map(|r| r.0).collect();
    let mut expected = vec![id[0], id[1], id[2], id[4], id[5], unparked_id];
    expected.sort();
    assert_eq!(in_outbox, expected);
    let (text, _) = outbox(&[&h.db], &["list"], true).await;
    assert!(text.contains(&format!("{db}: 0 parked")), "{text}");
}

/// A parked ordermesh event shows its payload as proto3 JSON.
#[tokio::test]
async fn show_decodes_ordermesh_events() {
    let h = Harness::new().await;
    // ordermesh.events.v1.OrderCreated { order_id: "o-1", customer_id:
    // "carol", total_minor: 1250 }
    let mut payload = Vec::new();
    prost::encoding::string::encode(1, &"o-1".to_owned(), &mut payload);
    prost::encoding::string::encode(2, &"carol".to_owned(), &mut payload);
    prost::encoding::int64::encode(5, &1250, &mut payload);
    let event = OutboxEvent {
        event_id: uuid::Uuid::now_v7(),
        aggregate_id: "o-1".to_owned(),
        routing_key: "order.created".to_owned(),
        event_type: "ordermesh.events.v1.OrderCreated".to_owned(),
        payload,
        headers: Default::default(),
    };
    let mut client = h.pool.get().await.unwrap();
    let tx = client.transaction().await.unwrap();
    outbox::enqueue(&tx, &event).await.unwrap();
    tx.commit().await.unwrap();
    park_all(&h.pool).await;

    let id = event.event_id.to_string();
    let (text, _) = outbox(&[&h.db], &["show", &id], true).await;
    assert!(text.contains(r#""orderId": "o-1""#), "{text}");
    assert!(text.contains(r#""customerId": "carol""#), "{text}");
    let (json, _) = outbox(&[&h.db], &["show", &id, "--json"], true).await;
    let shown: Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(shown["payload"]["orderId"], "o-1");
    assert_eq!(shown["payload"]["totalMinor"], "1250");
}

/// Two sources: the same id parked in both is refused without `--source`
/// and nothing moves; unknown ids and sources are errors; URLs never print.
#[tokio::test]
async fn unknown_and_ambiguous_ids_are_refused() {
    let h = Harness::new().await;
    let other = TestDatabase::create().await;
    let other_pool = ordermesh_runtime::db::pool(other.url.parse().unwrap(), 2).unwrap();
    ordermesh_runtime::db::migrate(&other_pool, vec![ordermesh_messaging::migrations()])
        .await
        .unwrap();
    // Both outboxes count ids from 1: row 1 is parked in each.
    h.write(0, 2, 2).await;
    helpers::write(&other_pool, 0, 1, 1).await;
    park_all(&h.pool).await;
    park_all(&other_pool).await;
    let both = [&h.db, &other];

    let (text, _) = outbox(&both, &["list"], true).await;
    assert!(text.contains(&format!("{}: 2 parked", h.db.name)), "{text}");
    assert!(
        text.contains(&format!("{}: 1 parked", other.name)),
        "{text}"
    );

    for args in [&["show", "1"][..], &["replay", "1"], &["drop", "1"]] {
        let (_, err) = outbox(&both, args, false).await;
        assert!(err.contains("in several sources"), "{args:?}: {err}");
        assert!(
            err.contains(&h.db.name) && err.contains(&other.name),
            "{err}"
        );
        assert!(err.contains("--source"), "{err}");
        assert!(!err.contains("postgres://"), "{err}");
    }
    assert_eq!(ids(&h.pool, "outbox_parked").await.len(), 2);
    assert_eq!(ids(&other_pool, "outbox_parked").await.len(), 1);

    // --source picks one.
    let (text, _) = outbox(&both, &["show", "1", "--source", &other.name], true).await;
    assert!(
        text.contains(&format!("source:       {}", other.name)),
        "{text}"
    );
    let (text, _) = outbox(&both, &["replay", "1", "--source", &other.name], true).await;
    assert!(text.contains("replayed 1 row(s)"), "{text}");
    assert!(ids(&other_pool, "outbox_parked").await.is_empty());
    assert_eq!(ids(&h.pool, "outbox_parked").await.len(), 2);
    // Now only one source has row 1.
    let (text, _) = outbox(&both, &["show", "1"], true).await;
    assert!(
        text.contains(&format!("source:       {}", h.db.name)),
        "{text}"
    );

    let (_, err) = outbox(&both, &["drop", "999"], false).await;
    assert!(
        err.contains(&format!(
            "no parked row 999 in {}, {}",
            h.db.name, other.name
        )),
        "{err}"
    );
    let (_, err) = outbox(&both, &["show", "not-an-id"], false).await;
    assert!(err.contains("expected an outbox id"), "{err}");
    let (_, err) = outbox(&both, &["list", "--source", "nope"], false).await;
    assert!(err.contains("no source \"nope\""), "{err}");
    assert!(!err.contains("postgres://"), "{err}");
    let (_, err) = outbox(&both, &["replay"], false).await;
    assert!(err.contains("--all"), "{err}");
}
