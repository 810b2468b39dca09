//! Property test: random read_at / write_at / truncate / commit / reopen against an
//! in-memory model, with small segments so that every boundary case comes up.

mod common;

use common::*;
use keyward_vfs::CipherKind;
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Write { off: u64, data: Vec<u8> },
    Read { off: u64, len: usize },
    Truncate(u64),
    Commit,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u64..700, proptest::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(off, data)| Op::Write { off, data }),
        3 => (0u64..800, 0usize..300).prop_map(|(off, len)| Op::Read { off, len }),
        1 => (0u64..700).prop_map(Op::Truncate),
        1 => Just(Op::Commit),
        1 => Just(Op::Reopen),
    ]
}

fn cipher() -> impl Strategy<Value = CipherKind> {
    prop_oneof![
        Just(CipherKind::Aes256Gcm),
        Just(CipherKind::Aes128Gcm),
        Just(CipherKind::Twofish256Gcm)
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn random_io_matches_a_model(
        cipher in cipher(),
        seg in prop_oneof![Just(16u32), Just(64u32), Just(100u32)],
        ops in proptest::collection::vec(op(), 1..40),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let env = Env::new().await;
            let vfs = env.vfs(opts(cipher, seg));
            let mut committed: Vec<u8> = Vec::new();
            let mut model: Vec<u8> = Vec::new();
            let mut f = vfs.create("m").await.unwrap();
            f.commit().await.unwrap();
            for op in ops {
                match op {
                    Op::Write { off, data } => {
                        f.write_at(off, &data).await.unwrap();
                        let end = off as usize + data.len();
                        if model.len() < off as usize { model.resize(off as usize, 0); }
                        if model.len() < end { model.resize(end, 0); }
                        model[off as usize..end].copy_from_slice(&data);
                    }
                    Op::Read { off, len } => {
                        let mut buf = vec![0u8; len];
                        let n = f.read_at(off, &mut buf).await.unwrap();
                        let want: &[u8] = if (off as usize) < model.len() {
                            &model[off as usize..(off as usize + len).min(model.len())]
                        } else { &[] };
                        assert_eq!(&buf[..n], want);
                    }
                    Op::Truncate(len) => {
                        f.truncate(len).await.unwrap();
                        model.resize(len as usize, 0);
                    }
                    Op::Commit => {
                        f.commit().await.unwrap();
                        committed = model.clone();
                        assert_eq!(vfs.read("m").await.unwrap(), committed);
                    }
                    Op::Reopen => {
                        // Uncommitted changes are dropped with the handle.
                        drop(f);
                        model = committed.clone();
                        f = vfs.edit("m").await.unwrap();
                    }
                }
                assert_eq!(f.len(), model.len() as u64);
            }
            f.commit().await.unwrap();
            drop(f);
            assert_eq!(vfs.read("m").await.unwrap(), model);
        });
    }
}
