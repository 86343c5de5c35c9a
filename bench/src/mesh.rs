//! The system under test: the three release binaries started by the test
//! kit's launcher ([`ordermesh_testkit::mesh`]) on free ports, with fresh
//! databases (`om_test_*`), a fresh exchange and queues (`om-test-*`), the
//! way `deploy/local/readme-smoke.sh` runs them. A third source database,
//! the probe database, is the bench's own: the relay serves it too, so
//! relay latency and drain rate are measured on the same relay process.
//! Everything is removed when the mesh is dropped.

use std::path::Path;

use anyhow::Context;
use ordermesh_auth::Bearer;
use ordermesh_proto::order::v1::order_service_client::OrderServiceClient;
use ordermesh_proto::payment::v1::account_service_client::AccountServiceClient;
use ordermesh_testkit::mesh::{self, MeshOptions, Output};
use ordermesh_testkit::{LeaseLocks, TestDatabase, tokens};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

pub type Orders = OrderServiceClient<InterceptedService<Channel, Bearer>>;
pub type Accounts = AccountServiceClient<InterceptedService<Channel, Bearer>>;

/// The test kit's mesh (databases, broker, addresses, processes, through
/// `Deref`) plus what only the bench has.
pub struct Mesh {
    mesh: mesh::Mesh,
    /// The bench's own outbox, relayed by the same relay.
    pub probe_db: TestDatabase,
    /// The bench's admin token, sent with every call of its clients (admin
    /// tokens are not rate limited, so the load is what the bench offers).
    pub bearer: Bearer,
}

impl Mesh {
    /// Names everything; starts nothing yet. The binaries log into
    /// `log_dir/<name>.log`; `extra_env` goes on top of the mesh's own.
    pub async fn prepare(
        bin_dir: &Path,
        log_dir: &Path,
        extra_env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let probe_db = TestDatabase::create().await;
        let mesh = mesh::Mesh::prepare(MeshOptions {
            build_hint: "cargo build --release --bins",
            output: Output::LogFiles {
                dir: log_dir.to_owned(),
                banner: "bench",
            },
            extra_sources: vec![probe_db.url.clone()],
            env: extra_env.to_vec(),
            relay_leases: Some(LeaseLocks {
                class: relay::store::LEASE_LOCK_CLASS,
                application_prefix: relay::store::LEASE_APPLICATION_PREFIX,
            }),
            ..MeshOptions::new(bin_dir.to_owned())
        })?;
        let bearer = tokens::admin_bearer(&mesh.jwt_secret, "bench");
        Ok(Self {
            mesh,
            probe_db,
            bearer,
        })
    }

    /// Migrates the probe database, starts the services, waits until they
    /// serve, then starts the relay and waits until it leases every
    /// partition of every source.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let probe = ordermesh_runtime::db::pool(self.probe_db.url.parse()?, 1)?;
        ordermesh_runtime::db::migrate(&probe, vec![ordermesh_messaging::migrations()])
            .await
            .context("migrate the probe database")?;
        probe.close();
        self.mesh.start().await
    }

    pub fn orders(&self, channel: Channel) -> Orders {
        OrderServiceClient::with_interceptor(channel, self.bearer.clone())
    }

    pub fn accounts(&self, channel: Channel) -> Accounts {
        AccountServiceClient::with_interceptor(channel, self.bearer.clone())
    }
}

ordermesh_testkit::extends_mesh!(Mesh, mesh);
