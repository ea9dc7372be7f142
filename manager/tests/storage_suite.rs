//! openraft's storage conformance suite against the redb log and state machine.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb, StorageError};
use shoal_manager::raft::TypeConfig;
use shoal_manager::raft::atrest::Kek;
use shoal_manager::raft::storage::{self, LogStore, StateMachine};
use shoal_manager::store::Store;

struct RedbBuilder;

fn setup_err(e: std::io::Error) -> StorageError<TypeConfig> {
    StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Read, e)
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(setup_err)?;
        let db =
            storage::open(&dir.path().join("raft.redb"), &Kek::File(dir.path().join("raft.kek"))).map_err(setup_err)?;
        let sm = StateMachine::open(db.clone(), Store::new()).await.map_err(setup_err)?;
        Ok((dir, LogStore::new(db), sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_passes_openraft_suite() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(RedbBuilder).await
}

/// A snapshot installed on a follower is its whole state after a restart:
/// every kind of object reaches the object table, not only nodes and the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_installed_snapshot_survives_a_restart_whole() -> anyhow::Result<()> {
    use openraft::alias::SnapshotMetaOf;
    use openraft::storage::RaftStateMachine;
    use shoal_manager::state::{Command, Request, State};
    use shoal_proto::model::{Cluster, Meta, Node, NodeDescription, NodeSpec, NodeStatus, Role, RootCa};
    use shoal_proto::network::NetworkSpec;
    use shoal_proto::service::{ServiceSpec, Task};

    let mut state = State::default();
    let cluster = Cluster {
        unlock_key: String::new(),
        id: "c".into(),
        root_ca: RootCa { cert_pem: String::new(), key_pem: String::new() },
        worker_secret: String::new(),
        manager_secret: String::new(),
        node_cert_ttl_secs: 0,
        net: Default::default(),
        settings: Default::default(),
        meta: Meta::default(),
    };
    let node = Node {
        id: "n1".into(),
        raft_id: 1,
        spec: NodeSpec { role: Role::Manager, availability: Default::default(), labels: Default::default() },
        description: NodeDescription { hostname: "h".into(), ..Default::default() },
        status: NodeStatus::default(),
        meta: Meta::default(),
        ingress: None,
    };
    let spec = ServiceSpec { name: "web".into(), ..Default::default() };
    let task = Task { id: "t1".into(), service_id: "s1".into(), ..Default::default() };
    for (i, cmd) in [
        Command::Bootstrap { cluster, node },
        Command::CreateService { id: "s1".into(), spec, auth: None },
        Command::Tasks { changes: vec![shoal_manager::state::TaskChange::Create(Box::new(task))] },
        Command::CreateNetwork { id: "net1".into(), spec: NetworkSpec { name: "app".into(), ..Default::default() } },
    ]
    .into_iter()
    .enumerate()
    {
        state.apply(i as u64 + 1, &Request { at_ms: 1, cmd });
    }
    anyhow::ensure!(state.services.len() == 1 && state.tasks.len() == 1 && state.networks.len() == 1);

    let dir = tempfile::tempdir()?;
    let db = storage::open(&dir.path().join("raft.redb"), &Kek::File(dir.path().join("raft.kek")))?;
    let mut sm = StateMachine::open(db.clone(), Store::new()).await?;
    let meta = SnapshotMetaOf::<TypeConfig> { last_log_id: None, last_membership: Default::default() };
    sm.install_snapshot(&meta, serde_json::to_vec(&state)?).await?;
    drop(sm);
    let reopened = Store::new();
    StateMachine::open(db, reopened.clone()).await?;
    anyhow::ensure!(*reopened.read() == state, "after a restart: {:?}", reopened.read());
    Ok(())
}
