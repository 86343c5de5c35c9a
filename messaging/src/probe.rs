//! The broker as a readiness dependency ([`ordermesh_runtime::health`]):
//! a consumer's own connection, or a connection kept for probing.

use futures::future::BoxFuture;
use ordermesh_runtime::health::{BROKER, Check, Failing, PROBE_TIMEOUT, Probe};

use crate::amqp::{BrokerConfig, ConsumerStatus};

/// Ready while the consumer holds a live broker connection.
pub fn consumer(status: ConsumerStatus) -> Probe {
    Probe::Check(Box::new(status))
}

impl Check for ConsumerStatus {
    fn check(&self) -> BoxFuture<'_, Result<(), Failing>> {
        let connected = self.is_connected();
        Box::pin(async move {
            if connected {
                return Ok(());
            }
            let detail = format!("consumer {}: not connected to the broker", self.queue());
            Err(Failing::new(BROKER, detail))
        })
    }
}

/// Ready while the broker of `config` accepts a connection, kept open
/// between probes: for processes whose broker connections come and go with
/// their work (the relay's publishers). `name` is the connection's name in
/// the RabbitMQ management UI.
pub fn broker(config: BrokerConfig, name: impl Into<String>) -> Probe {
    Probe::Check(Box::new(BrokerProbe {
        config,
        name: name.into(),
        connection: tokio::sync::Mutex::new(None),
    }))
}

struct BrokerProbe {
    config: BrokerConfig,
    name: String,
    connection: tokio::sync::Mutex<Option<lapin::Connection>>,
}

impl Check for BrokerProbe {
    fn check(&self) -> BoxFuture<'_, Result<(), Failing>> {
        Box::pin(async move {
            let mut connection = self.connection.lock().await;
            if connection.as_ref().is_some_and(|c| c.status().connected()) {
                return Ok(());
            }
            *connection = None;
            // As the services connect: amqps:// with AMQP_CA_FILE included.
            let connect = crate::amqp::connect_once(&self.config, &self.name);
            match tokio::time::timeout(PROBE_TIMEOUT, connect).await {
                Ok(Ok(c)) => {
                    *connection = Some(c);
                    Ok(())
                }
                Ok(Err(e)) => Err(Failing::new(BROKER, format!("broker: {e:#}"))),
                Err(_) => Err(Failing::new(
                    BROKER,
                    format!("broker: no answer within {PROBE_TIMEOUT:?}"),
                )),
            }
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Some(c) = self.connection.into_inner() {
                let _ = c.close(200, "shutting down".into()).await;
            }
        })
    }
}
