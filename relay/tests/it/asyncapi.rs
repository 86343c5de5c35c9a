//! `GET /asyncapi.json` on a running relay's admin port, compared with the
//! routing keys the services publish. Those are read from the services'
//! sources: every `OutboxEvent::protobuf(<aggregate>, <routing key>, ..)`
//! call, its key resolved through the proto crate's constants. So a new
//! event in a service without a channel in the document fails here, and so
//! does a channel no service publishes any more.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use ordermesh_testkit::rest_call;
use tokio_util::sync::CancellationToken;

use crate::helpers::Harness;

/// The services whose outboxes feed the relay.
const SERVICES: &[&str] = &["order-svc", "processor-svc"];
const PUBLISH_CALL: &str = "OutboxEvent::protobuf(";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the relay crate is in the workspace")
        .to_owned()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `pub const NAME: &str = "value";` items of the proto crate.
fn proto_constants() -> Vec<(String, String)> {
    let lib = std::fs::read_to_string(workspace().join("proto/src/lib.rs")).unwrap();
    lib.lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("pub const ")?;
            let (name, rest) = rest.split_once(": &str = \"")?;
            let value = rest.strip_suffix("\";")?;
            Some((name.to_owned(), value.to_owned()))
        })
        .collect()
}

/// The arguments of the call whose `(` ends `text`'s prefix, split at the
/// top-level commas.
fn call_arguments(text: &str) -> Vec<String> {
    let (mut depth, mut current, mut args) = (1, String::new(), Vec::new());
    for c in text.chars() {
        match c {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            ',' if depth == 1 => {
                args.push(current.trim().to_owned());
                current.clear();
                continue;
            }
            _ => {}
        }
        if depth == 0 {
            break;
        }
        current.push(c);
    }
    args.push(current.trim().to_owned());
    args
}

/// Every routing key a service passes to `OutboxEvent::protobuf`.
fn published_routing_keys() -> BTreeSet<String> {
    let constants = proto_constants();
    let mut keys = BTreeSet::new();
    for service in SERVICES {
        let mut files = Vec::new();
        rust_files(&workspace().join(service).join("src"), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap();
            // `-> OutboxEvent {` opens a function; anything else is a literal.
            let by_hand = text
                .match_indices("OutboxEvent {")
                .any(|(at, _)| !text[..at].trim_end().ends_with("->"));
            assert!(
                !by_hand,
                "{} builds an OutboxEvent by hand: publish through OutboxEvent::protobuf so \
                 this test sees its routing key",
                file.display()
            );
            for (at, _) in text.match_indices(PUBLISH_CALL) {
                let args = call_arguments(&text[at + PUBLISH_CALL.len()..]);
                let key = args.get(1).unwrap_or_else(|| {
                    panic!("{}: a publish call without a routing key", file.display())
                });
                let value = match key.strip_prefix('"').and_then(|k| k.strip_suffix('"')) {
                    Some(literal) => literal.to_owned(),
                    None => {
                        let name = key.rsplit("::").next().unwrap_or(key);
                        constants
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(_, v)| v.clone())
                            .unwrap_or_else(|| {
                                panic!(
                                    "{}: routing key `{key}` is no constant of the proto crate",
                                    file.display()
                                )
                            })
                    }
                };
                keys.insert(value);
            }
        }
    }
    keys
}

#[test]
fn the_source_scan_finds_each_services_events() {
    let keys = published_routing_keys();
    for key in ["order.created", "payment.succeeded", "payment.refunded"] {
        assert!(keys.contains(key), "{key} not found in {keys:?}");
    }
}

#[tokio::test]
async fn the_admin_port_serves_a_channel_for_every_published_routing_key() {
    let h = Harness::new().await;
    let env = h.env(1000);
    let config = relay::Config::from_env(&env).unwrap();
    let admin = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = admin.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    tokio::spawn(relay::run(config, admin, shutdown.clone()));

    let answer = rest_call(addr, axum::http::Method::GET, "/asyncapi.json", None, None).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.headers["content-type"], "application/json");
    let doc = answer.body;
    assert_eq!(doc["asyncapi"], "3.0.0");

    let channels = doc["channels"].as_object().expect("channels");
    let addresses: BTreeSet<String> = channels
        .values()
        .map(|c| c["address"].as_str().expect("an address").to_owned())
        .collect();
    assert_eq!(
        addresses,
        published_routing_keys(),
        "the document's channels and the services' routing keys differ"
    );
    for (id, channel) in channels {
        let exchange = &channel["bindings"]["amqp"]["exchange"];
        assert_eq!(
            exchange["name"].as_str(),
            Some(h.broker.config.exchange.as_str()),
            "{id} names the configured exchange"
        );
        assert_eq!(exchange["type"], "topic", "{id}");
    }
    // It is the document `cargo run -p relay --example asyncapi` prints
    // for `make test`'s parser check.
    let pool =
        ordermesh_gateway::rest::descriptor_pool(ordermesh_proto::FILE_DESCRIPTOR_SET).unwrap();
    let expected = relay::asyncapi::document(&pool, &h.broker.config.exchange).unwrap();
    assert_eq!(doc, expected);
    // The table the document is built from agrees too.
    let table: BTreeSet<String> = relay::asyncapi::EVENTS
        .iter()
        .map(|e| e.routing_key.to_owned())
        .collect();
    assert_eq!(table, addresses);
}
