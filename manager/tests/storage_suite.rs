//! openraft's storage conformance suite against the redb log and state machine.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::{ErrorSubject, ErrorVerb, StorageError};
use shoal_manager::raft::TypeConfig;
use shoal_manager::raft::storage::{self, LogStore, StateMachine};
use shoal_manager::store::Store;

struct RedbBuilder;

fn setup_err(e: std::io::Error) -> StorageError<TypeConfig> {
    StorageError::from_io_error(ErrorSubject::Store, ErrorVerb::Read, e)
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for RedbBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(setup_err)?;
        let db = storage::open(&dir.path().join("raft.redb")).map_err(setup_err)?;
        let sm = StateMachine::open(db.clone(), Store::new()).await.map_err(setup_err)?;
        Ok((dir, LogStore::new(db), sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_store_passes_openraft_suite() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(RedbBuilder).await
}
