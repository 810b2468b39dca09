//! Raft storage for the election: the vote, a log that holds only membership and the blank
//! entries of new leaders, and a state machine with nothing in it. All of it is a few hundred
//! bytes, rewritten and synced to one file at each change, so that terms (the masters' epochs)
//! survive restarts of any member.

use super::TypeConfig;
use openraft::storage::{LogState, RaftLogReader, RaftSnapshotBuilder, RaftStorage, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, RaftLogId, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::{Cursor, Write};
use std::ops::RangeBounds;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

type Nid = u64;
type Node = openraft::BasicNode;

#[derive(Default, Serialize, Deserialize, Clone)]
struct State {
    vote: Option<Vote<Nid>>,
    committed: Option<LogId<Nid>>,
    log: BTreeMap<u64, Entry<TypeConfig>>,
    last_purged: Option<LogId<Nid>>,
    last_applied: Option<LogId<Nid>>,
    membership: StoredMembership<Nid, Node>,
}

/// The storage of one member; clones share it.
#[derive(Clone)]
pub(crate) struct Store {
    state: Arc<Mutex<State>>,
    path: PathBuf,
}

fn io_err(e: impl std::fmt::Display) -> StorageError<Nid> {
    StorageIOError::write(&std::io::Error::other(e.to_string())).into()
}

impl Store {
    /// Opens the member's state. A vote by which this member led is reopened as a plain vote
    /// for itself: a restarted member must not resume leading in its old term (its master
    /// epoch would repeat), it campaigns for a new one instead.
    pub(crate) fn open(dir: &std::path::Path, me: Nid) -> Result<Store, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let path = dir.join("ownership-raft.json");
        let state = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| format!("{}: corrupt raft state: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
            Err(e) => return Err(format!("read {}: {e}", path.display())),
        };
        let mut state: State = state;
        if let Some(v) = state.vote.as_mut() {
            if v.leader_id.node_id == me && v.committed {
                v.committed = false;
            }
        }
        Ok(Store {
            state: Arc::new(Mutex::new(state)),
            path,
        })
    }

    // The error type is openraft's, returned by the trait methods as is.
    #[allow(clippy::result_large_err)]
    fn save(&self, st: &State) -> Result<(), StorageError<Nid>> {
        let bytes = serde_json::to_vec(st).map_err(io_err)?;
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io_err)?;
        f.write_all(&bytes).map_err(io_err)?;
        f.sync_all().map_err(io_err)?;
        std::fs::rename(&tmp, &self.path).map_err(io_err)?;
        Ok(())
    }

    #[allow(clippy::result_large_err)]
    fn update<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, StorageError<Nid>> {
        let mut st = crate::session::lock(&self.state);
        let out = f(&mut st);
        self.save(&st)?;
        Ok(out)
    }

    fn read<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&crate::session::lock(&self.state))
    }
}

impl RaftLogReader<TypeConfig> for Store {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<Nid>> {
        Ok(self.read(|st| st.log.range(range).map(|(_, e)| e.clone()).collect()))
    }
}

impl RaftSnapshotBuilder<TypeConfig> for Store {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<Nid>> {
        let (last, membership) = self.read(|st| (st.last_applied, st.membership.clone()));
        let data = serde_json::to_vec(&(last, &membership)).map_err(io_err)?;
        Ok(Snapshot {
            meta: SnapshotMeta {
                last_log_id: last,
                last_membership: membership,
                snapshot_id: format!("{:?}", last.map(|l| l.index)),
            },
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStorage<TypeConfig> for Store {
    type LogReader = Self;
    type SnapshotBuilder = Self;

    async fn save_vote(&mut self, vote: &Vote<Nid>) -> Result<(), StorageError<Nid>> {
        self.update(|st| st.vote = Some(*vote))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<Nid>>, StorageError<Nid>> {
        Ok(self.read(|st| st.vote))
    }

    async fn save_committed(&mut self, c: Option<LogId<Nid>>) -> Result<(), StorageError<Nid>> {
        self.update(|st| st.committed = c)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<Nid>>, StorageError<Nid>> {
        Ok(self.read(|st| st.committed))
    }

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<Nid>> {
        Ok(self.read(|st| {
            let last = st
                .log
                .values()
                .next_back()
                .map(|e| *e.get_log_id())
                .or(st.last_purged);
            LogState {
                last_purged_log_id: st.last_purged,
                last_log_id: last,
            }
        }))
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn append_to_log<I>(&mut self, entries: I) -> Result<(), StorageError<Nid>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
    {
        self.update(|st| {
            for e in entries {
                st.log.insert(e.get_log_id().index, e);
            }
        })
    }

    async fn delete_conflict_logs_since(
        &mut self,
        log_id: LogId<Nid>,
    ) -> Result<(), StorageError<Nid>> {
        self.update(|st| {
            st.log.split_off(&log_id.index);
        })
    }

    async fn purge_logs_upto(&mut self, log_id: LogId<Nid>) -> Result<(), StorageError<Nid>> {
        self.update(|st| {
            st.log = st.log.split_off(&(log_id.index + 1));
            st.last_purged = Some(log_id);
        })
    }

    async fn last_applied_state(
        &mut self,
    ) -> Result<(Option<LogId<Nid>>, StoredMembership<Nid, Node>), StorageError<Nid>> {
        Ok(self.read(|st| (st.last_applied, st.membership.clone())))
    }

    async fn apply_to_state_machine(
        &mut self,
        entries: &[Entry<TypeConfig>],
    ) -> Result<Vec<String>, StorageError<Nid>> {
        self.update(|st| {
            let mut out = Vec::with_capacity(entries.len());
            for e in entries {
                st.last_applied = Some(e.log_id);
                if let EntryPayload::Membership(m) = &e.payload {
                    st.membership = StoredMembership::new(Some(e.log_id), m.clone());
                }
                out.push(String::new());
            }
            out
        })
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<Nid>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<Nid, Node>,
        _snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<Nid>> {
        self.update(|st| {
            st.last_applied = meta.last_log_id;
            st.membership = meta.last_membership.clone();
            if let Some(l) = meta.last_log_id {
                st.log = st.log.split_off(&(l.index + 1));
                st.last_purged = Some(l);
            }
        })
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<Nid>> {
        let (last, _) = self.read(|st| (st.last_applied, ()));
        if last.is_none() {
            return Ok(None);
        }
        Ok(Some(self.build_snapshot().await?))
    }
}
