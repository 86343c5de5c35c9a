//! Observability of the real binaries: one trace per order across every hop
//! (exported to an in-process OTLP collector), and Prometheus metrics that
//! count exactly what happened.

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use ordermesh_proto::order::v1::{GetOrderRequest, OrderStatus};
use ordermesh_testkit::eventually;

use crate::collector::{Collector, Span};
use crate::mesh::Mesh;
use crate::ops::{metrics, sample};
use crate::pipeline::{item, open_account, order, settled};

const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_order_is_one_connected_trace_from_request_to_apply() {
    let collector = Collector::start().await;
    let endpoint = collector.endpoint();
    let mesh = Mesh::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await;
    open_account(&mesh, "alice", 10_000).await;
    let mut orders = mesh.orders().await;

    let response = orders
        .create_order(order("o-trace", "alice", vec![item("book", 2, 1_500)]))
        .await
        .expect("create order");
    let trace_id = response
        .metadata()
        .get("x-trace-id")
        .expect("x-trace-id in the response metadata")
        .to_str()
        .unwrap()
        .to_owned();
    let traceparent = response
        .metadata()
        .get("traceparent")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(trace_id.len(), 32, "{trace_id}");
    assert!(traceparent.contains(&trace_id), "{traceparent}");
    let paid = settled(&mut orders, "o-trace", PATIENCE).await;
    assert_eq!(paid.status, OrderStatus::Paid as i32, "{paid:?}");

    // Wait until the five hops of the journey have been exported.
    let trace = eventually(PATIENCE, || {
        let spans: Vec<Span> = collector
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        async move {
            let count = |service: &str, kind: SpanKind| {
                spans
                    .iter()
                    .filter(|s| s.service == service && s.kind == kind)
                    .count()
            };
            let complete = count("order-svc", SpanKind::Server) == 1
                && count("relay", SpanKind::Producer) == 2
                && count("processor-svc", SpanKind::Consumer) == 1
                && count("order-svc", SpanKind::Consumer) == 1
                && spans.iter().any(|s| s.name == "apply payment result");
            complete.then_some(spans)
        }
    })
    .await
    .unwrap_or_else(|| {
        let seen: Vec<_> = collector
            .spans()
            .iter()
            .map(|s| format!("{} {} {:?} {}", s.trace_id, s.service, s.kind, s.name))
            .collect();
        panic!(
            "the trace {trace_id} never completed; spans seen:\n{}",
            seen.join("\n")
        )
    });
    let by_id: HashMap<&str, &Span> = trace.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let exchange = &mesh.env["AMQP_EXCHANGE"];

    // Every span's parent is in the trace; the only root is the server span.
    let roots: Vec<&Span> = trace
        .iter()
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "{roots:#?}");
    for span in &trace {
        assert!(
            span.parent_span_id.is_empty() || by_id.contains_key(span.parent_span_id.as_str()),
            "the parent of {span:#?} is not in the trace"
        );
    }
    let is_descendant = |span: &Span, ancestor: &Span| {
        let mut current = span;
        while let Some(parent) = by_id.get(current.parent_span_id.as_str()) {
            if parent.span_id == ancestor.span_id {
                return true;
            }
            current = parent;
        }
        false
    };

    // order-svc: the gRPC server span, the root.
    let server = roots[0];
    assert_eq!(server.service, "order-svc");
    assert_eq!(server.kind, SpanKind::Server);
    assert_eq!(server.name, "ordermesh.order.v1.OrderService/CreateOrder");
    assert_eq!(server.attr("rpc.system"), Some("grpc"));
    assert_eq!(
        server.attr("rpc.service"),
        Some("ordermesh.order.v1.OrderService")
    );
    assert_eq!(server.attr("rpc.method"), Some("CreateOrder"));
    assert_eq!(server.attr("rpc.grpc.status_code"), Some("0"));

    // relay: one publish span per event, each a child of the span that
    // wrote the outbox row.
    let publish = |routing_key: &str| -> &Span {
        trace
            .iter()
            .find(|s| {
                s.kind == SpanKind::Producer
                    && s.attr("messaging.rabbitmq.destination.routing_key") == Some(routing_key)
            })
            .unwrap_or_else(|| panic!("no publish span for {routing_key}"))
    };
    let created = publish("order.created");
    let succeeded = publish("payment.succeeded");
    for span in [created, succeeded] {
        assert_eq!(span.service, "relay");
        assert_eq!(span.name, format!("{exchange} publish"));
        assert_eq!(span.attr("messaging.system"), Some("rabbitmq"));
        assert_eq!(
            span.attr("messaging.destination.name"),
            Some(exchange.as_str())
        );
        assert_eq!(span.attr("messaging.operation.type"), Some("publish"));
        assert!(
            span.attr("messaging.message.id")
                .is_some_and(|id| id.len() == 36)
        );
    }
    assert!(is_descendant(created, server), "{created:#?}");

    // processor-svc: the consume span continues the order.created publish.
    let consume = |service: &str| -> &Span {
        trace
            .iter()
            .find(|s| s.service == service && s.kind == SpanKind::Consumer)
            .unwrap()
    };
    let processed = consume("processor-svc");
    assert_eq!(processed.parent_span_id, created.span_id);
    assert_eq!(
        processed.name,
        format!("{} process", mesh.env["PROCESSOR_QUEUE"])
    );
    assert_eq!(processed.attr("messaging.system"), Some("rabbitmq"));
    assert_eq!(processed.attr("messaging.operation.type"), Some("process"));
    assert_eq!(
        processed.attr("messaging.destination.name"),
        Some(exchange.as_str())
    );
    assert_eq!(
        processed.attr("messaging.rabbitmq.destination.routing_key"),
        Some("order.created")
    );
    assert_eq!(
        processed.attr("messaging.message.id"),
        created.attr("messaging.message.id")
    );
    assert!(is_descendant(succeeded, processed), "{succeeded:#?}");

    // order-svc: the consume span continues the payment.succeeded publish,
    // and the apply span is its child.
    let applied = consume("order-svc");
    assert_eq!(applied.parent_span_id, succeeded.span_id);
    assert_eq!(applied.name, format!("{} process", mesh.env["ORDER_QUEUE"]));
    assert_eq!(
        applied.attr("messaging.message.id"),
        succeeded.attr("messaging.message.id")
    );
    let apply = trace
        .iter()
        .find(|s| s.name == "apply payment result")
        .unwrap();
    assert_eq!(apply.service, "order-svc");
    assert_eq!(apply.parent_span_id, applied.span_id);

    // Database spans of the outbox writes (each a statement with the state
    // change it belongs to) are in the trace too.
    for name in ["INSERT orders outbox", "INSERT payments outbox"] {
        let span = trace.iter().find(|s| s.name == name);
        assert!(span.is_some(), "{name} in the trace");
    }

    // No span of the order's journey lies outside the trace (the GetOrder
    // polls of `settled` are traces of their own).
    let journey = [
        "ordermesh.order.v1.OrderService/CreateOrder",
        "create_order",
        "INSERT orders outbox",
        "INSERT payments outbox",
        "INSERT inbox",
        "settle order",
        "apply payment result",
    ];
    for span in collector.spans() {
        let of_the_journey = journey.contains(&span.name.as_str())
            || matches!(span.kind, SpanKind::Producer | SpanKind::Consumer);
        if of_the_journey {
            assert_eq!(span.trace_id, trace_id, "{span:#?}");
        }
    }

    // A caller's own traceparent is continued, and its trace id comes back.
    let mut request = tonic::Request::new(GetOrderRequest {
        order_id: "o-trace".into(),
    });
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{caller_trace}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    let response = orders.get_order(request).await.unwrap();
    let returned = response
        .metadata()
        .get("x-trace-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert_eq!(returned, caller_trace);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_every_order_and_the_backlog_drains_to_zero() {
    const N: usize = 5;
    // A collector that is not there: exporting fails in the background and
    // nothing else notices.
    let dead_endpoint = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mesh = Mesh::start(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", dead_endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ])
    .await;
    open_account(&mesh, "bob", 1_000_000).await;
    let mut orders = mesh.orders().await;
    for i in 0..N {
        orders
            .create_order(order(&format!("m-{i}"), "bob", vec![item("pen", 1, 100)]))
            .await
            .expect("create order");
    }
    for i in 0..N {
        let o = settled(&mut orders, &format!("m-{i}"), PATIENCE).await;
        assert_eq!(o.status, OrderStatus::Paid as i32, "{o:?}");
    }

    let n = N as f64;
    let order_addr = mesh.order_addr.clone();
    let processor_addr = mesh.processor_addr.clone();
    let relay_addr = mesh.env["RELAY_ADMIN_ADDR"].clone();
    let orders_db = database_name(&mesh.env["ORDER_DATABASE_URL"]);
    let processor_db = database_name(&mesh.env["PROCESSOR_DATABASE_URL"]);
    let order_queue = mesh.env["ORDER_QUEUE"].clone();
    let processor_queue = mesh.env["PROCESSOR_QUEUE"].clone();

    // Counters settle right after the last acknowledgement; the backlog
    // gauges are refreshed every second.
    let settled_metrics = eventually(PATIENCE, || {
        let (order_addr, processor_addr, relay_addr) = (
            order_addr.clone(),
            processor_addr.clone(),
            relay_addr.clone(),
        );
        let (orders_db, processor_db) = (orders_db.clone(), processor_db.clone());
        let (order_queue, processor_queue) = (order_queue.clone(), processor_queue.clone());
        async move {
            let order_svc = metrics(&order_addr).await;
            let processor = metrics(&processor_addr).await;
            let relay = metrics(&relay_addr).await;
            let done = sample(
                &order_svc,
                "ordermesh_consumer_processed_total",
                &[("queue", &order_queue)],
            ) == Some(n)
                && sample(
                    &processor,
                    "ordermesh_consumer_processed_total",
                    &[("queue", &processor_queue)],
                ) == Some(n)
                && sample(
                    &relay,
                    "ordermesh_relay_published_total",
                    &[("source", &orders_db)],
                ) == Some(n)
                && sample(
                    &relay,
                    "ordermesh_relay_published_total",
                    &[("source", &processor_db)],
                ) == Some(n)
                && [&orders_db, &processor_db].iter().all(|db| {
                    sample(
                        &relay,
                        "ordermesh_relay_outbox_backlog_rows",
                        &[("source", db)],
                    ) == Some(0.0)
                        && sample(
                            &relay,
                            "ordermesh_relay_outbox_oldest_age_seconds",
                            &[("source", db)],
                        ) == Some(0.0)
                });
            done.then_some((order_svc, processor, relay))
        }
    })
    .await;
    let Some((order_svc, processor, relay)) = settled_metrics else {
        panic!(
            "metrics never settled:\n--- order-svc\n{}\n--- processor-svc\n{}\n--- relay\n{}",
            metrics(&order_addr).await,
            metrics(&processor_addr).await,
            metrics(&relay_addr).await
        );
    };

    let create = [
        ("service", "ordermesh.order.v1.OrderService"),
        ("method", "CreateOrder"),
    ];
    let ok: Vec<_> = create.iter().copied().chain([("code", "OK")]).collect();
    assert_eq!(
        sample(&order_svc, "ordermesh_rpc_requests_total", &ok),
        Some(n)
    );
    assert_eq!(
        sample(&order_svc, "ordermesh_rpc_errors_total", &create),
        None
    );
    assert_eq!(
        sample(&order_svc, "ordermesh_rpc_duration_seconds_count", &create),
        Some(n)
    );
    // Every call of the service is counted, errors by code.
    let missing = orders
        .get_order(GetOrderRequest {
            order_id: "nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let order_svc = metrics(&mesh.order_addr).await;
    let not_found = [("method", "GetOrder"), ("code", "NOT_FOUND")];
    assert_eq!(
        sample(&order_svc, "ordermesh_rpc_errors_total", &not_found),
        Some(1.0)
    );

    for (text, queue) in [(&order_svc, &order_queue), (&processor, &processor_queue)] {
        let q = [("queue", queue.as_str())];
        assert_eq!(
            sample(text, "ordermesh_consumer_duplicates_total", &q),
            None
        );
        assert_eq!(sample(text, "ordermesh_consumer_retries_total", &q), None);
        assert_eq!(
            sample(text, "ordermesh_consumer_dead_lettered_total", &q),
            None
        );
        assert_eq!(sample(text, "ordermesh_ready", &[]), Some(1.0));
        assert!(
            sample(text, "ordermesh_db_pool_max_connections", &[]).is_some(),
            "{text}"
        );
    }
    assert!(
        sample(
            &relay,
            "ordermesh_relay_confirm_duration_seconds_count",
            &[]
        ) >= Some(1.0)
    );
    assert_eq!(
        sample(&relay, "ordermesh_relay_publish_failures_total", &[]),
        None
    );
    assert_eq!(
        sample(&relay, "ordermesh_relay_reconnects_total", &[]),
        None
    );
}

/// The database name at the end of a `postgres://` URL.
fn database_name(url: &str) -> String {
    let path = url.rsplit('/').next().unwrap();
    path.split('?').next().unwrap().to_owned()
}
