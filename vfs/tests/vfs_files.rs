//! File API, formats and integrity on the local backend.

mod common;

use common::*;
use keyward_ownership::SessionConfig;
use keyward_vfs::{CipherKind, Keyring, VfsError, VfsOptions};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

const SEG: u32 = 64 << 10;

#[tokio::test]
async fn round_trips_at_boundary_sizes_for_every_cipher() {
    let env = Env::new().await;
    let seg = SEG as usize;
    for cipher in CipherKind::ALL {
        let vfs = env.vfs(opts(cipher, SEG));
        for (i, size) in [0, 1, seg - 1, seg, seg + 1, 3 * seg, 5 * 1024 * 1024 + 17]
            .into_iter()
            .enumerate()
        {
            let data = pattern(size, i as u64 + 1);
            let path = format!("{cipher}/f{size}");
            vfs.write(&path, &data).await.unwrap();
            let back = vfs.read(&path).await.unwrap();
            assert_eq!(back.len(), size, "{cipher} size {size}");
            assert!(back == data, "{cipher} size {size}: content differs");
            let st = vfs.stat(&path).await.unwrap();
            assert_eq!(st.size, size as u64);
            assert_eq!(st.cipher, cipher);
            // Sealed size: header + one nonce and tag per segment (at least one segment).
            let raw = std::fs::metadata(raw_path(&env, &path)).unwrap().len();
            let segs = (size as u64).div_ceil(SEG as u64).max(1);
            assert_eq!(raw, 104 + size as u64 + 28 * segs);
        }
    }
}

#[tokio::test]
async fn streams_round_trip_with_seek() {
    let env = Env::new().await;
    let vfs = env.vfs(opts(CipherKind::Aes256Gcm, 4096));
    let data = pattern(1_000_003, 9);
    let f = vfs.create("big/stream.bin").await.unwrap();
    let mut w = f.into_writer(0);
    // Odd chunk sizes, so writes straddle segments.
    for chunk in data.chunks(7777) {
        w.write_all(chunk).await.unwrap();
    }
    w.shutdown().await.unwrap();
    drop(w);

    let r = vfs.open("big/stream.bin").await.unwrap();
    assert_eq!(r.len(), data.len() as u64);
    let mut s = r.into_stream();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert!(back == data);
    s.seek(std::io::SeekFrom::Start(500_000)).await.unwrap();
    let mut part = vec![0u8; 10_000];
    s.read_exact(&mut part).await.unwrap();
    assert_eq!(&part[..], &data[500_000..510_000]);
    s.seek(std::io::SeekFrom::End(-3)).await.unwrap();
    let mut tail = Vec::new();
    s.read_to_end(&mut tail).await.unwrap();
    assert_eq!(&tail[..], &data[data.len() - 3..]);
}

#[tokio::test]
async fn random_writes_edit_in_place_and_commit_atomically() {
    let env = Env::new().await;
    let vfs = env.vfs(opts(CipherKind::Twofish256Gcm, 100));
    let mut model = pattern(1000, 3);
    vfs.write("f", &model).await.unwrap();
    let mut f = vfs.edit("f").await.unwrap();
    f.write_at(250, b"hello").await.unwrap();
    model[250..255].copy_from_slice(b"hello");
    f.write_at(1200, b"tail").await.unwrap();
    model.resize(1200, 0);
    model.extend_from_slice(b"tail");
    // Not committed: readers still see the old content.
    assert_eq!(vfs.read("f").await.unwrap().len(), 1000);
    let mut buf = vec![0u8; 20];
    assert_eq!(f.read_at(1195, &mut buf).await.unwrap(), 9);
    assert_eq!(&buf[..9], &model[1195..]);
    f.commit().await.unwrap();
    assert_eq!(vfs.read("f").await.unwrap(), model);
    f.truncate(150).await.unwrap();
    f.append(b"xyz").await.unwrap();
    model.truncate(150);
    model.extend_from_slice(b"xyz");
    f.close().await.unwrap();
    assert_eq!(vfs.read("f").await.unwrap(), model);
    // Dropping an uncommitted handle discards its changes.
    let mut f = vfs.edit("f").await.unwrap();
    f.write_at(0, b"discard me").await.unwrap();
    drop(f);
    assert_eq!(vfs.read("f").await.unwrap(), model);
    let leftovers: Vec<_> = std::fs::read_dir(env.volume_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(leftovers, vec!["f".to_string()]);
}

/// A small file: header + 3 full segments of 64 bytes + a last one of 8.
async fn small_file(env: &Env) -> (keyward_vfs::Vfs, Vec<u8>, Vec<u8>) {
    let vfs = env.vfs(opts(CipherKind::Aes256Gcm, 64));
    let data = pattern(200, 5);
    vfs.write("small", &data).await.unwrap();
    let raw = read_raw(&raw_path(env, "small"));
    assert_eq!(raw.len(), 104 + 3 * 92 + 36);
    (vfs, data, raw)
}

#[tokio::test]
async fn every_flipped_byte_is_an_error() {
    let env = Env::new().await;
    let (vfs, data, raw) = small_file(&env).await;
    let p = raw_path(&env, "small");
    for i in 0..raw.len() {
        let mut bad = raw.clone();
        bad[i] ^= 0x01;
        std::fs::write(&p, &bad).unwrap();
        let r = vfs.read("small").await;
        match r {
            Err(e) => assert!(
                e.is_integrity(),
                "byte {i}: expected an integrity error, got {e}"
            ),
            Ok(back) => panic!("byte {i} flipped but read returned {} bytes", back.len()),
        }
    }
    std::fs::write(&p, &raw).unwrap();
    assert_eq!(vfs.read("small").await.unwrap(), data);
}

#[tokio::test]
async fn truncation_at_every_segment_boundary_is_detected() {
    let env = Env::new().await;
    let (vfs, _data, raw) = small_file(&env).await;
    let p = raw_path(&env, "small");
    for k in 0..=3usize {
        let cut = 104 + k * 92;
        std::fs::write(&p, &raw[..cut]).unwrap();
        let e = vfs.read("small").await.unwrap_err();
        assert!(matches!(e, VfsError::Truncated { .. }), "cut at {cut}: {e}");
        let e = vfs.stat("small").await.unwrap_err();
        assert!(
            matches!(e, VfsError::Truncated { .. }),
            "stat cut at {cut}: {e}"
        );
    }
    // Cuts inside a segment or the header are errors too.
    for cut in [0, 5, 50, 103, 104 + 10, 104 + 92 + 40, raw.len() - 1] {
        std::fs::write(&p, &raw[..cut]).unwrap();
        let e = vfs.read("small").await.unwrap_err();
        assert!(e.is_integrity(), "cut at {cut}: {e}");
    }
}

#[tokio::test]
async fn reordered_and_foreign_segments_are_detected() {
    let env = Env::new().await;
    let (vfs, _data, raw) = small_file(&env).await;
    let p = raw_path(&env, "small");
    let seg = |i: usize| 104 + i * 92..104 + (i + 1) * 92;
    let mut swapped = raw.clone();
    swapped[seg(1)].copy_from_slice(&raw[seg(2)]);
    swapped[seg(2)].copy_from_slice(&raw[seg(1)]);
    std::fs::write(&p, &swapped).unwrap();
    let e = vfs.read("small").await.unwrap_err();
    assert!(
        matches!(
            e,
            VfsError::Reordered {
                found: 1,
                sealed_for: 2,
                ..
            }
        ),
        "{e}"
    );
    // A duplicated segment.
    let mut dup = raw.clone();
    dup[seg(0)].copy_from_slice(&raw[seg(1)]);
    std::fs::write(&p, &dup).unwrap();
    let e = vfs.read("small").await.unwrap_err();
    assert!(matches!(e, VfsError::Reordered { .. }), "{e}");
    // A segment from another file with the same key: the file id does not match.
    vfs.write("other", &pattern(200, 6)).await.unwrap();
    let other = read_raw(&raw_path(&env, "other"));
    let mut foreign = raw.clone();
    foreign[seg(1)].copy_from_slice(&other[seg(1)]);
    std::fs::write(&p, &foreign).unwrap();
    let e = vfs.read("small").await.unwrap_err();
    assert!(matches!(e, VfsError::Tampered { .. }), "{e}");
    // Unknown format version.
    let mut v2 = raw.clone();
    v2[8] = 2;
    std::fs::write(&p, &v2).unwrap();
    let e = vfs.read("small").await.unwrap_err();
    assert!(
        matches!(e, VfsError::UnknownVersion { version: 2, .. }),
        "{e}"
    );
    assert_eq!(e.exit_code(), 7);
}

#[tokio::test]
async fn wrong_key_is_its_own_error() {
    let env = Env::new().await;
    let vfs = env.vfs(opts(CipherKind::Aes128Gcm, 4096));
    vfs.write("secret", b"data").await.unwrap();
    let other = env.vfs_with(
        opts(CipherKind::Aes128Gcm, 4096),
        Keyring::generate().unwrap(),
        env.coord.clone(),
    );
    let e = other.read("secret").await.unwrap_err();
    assert!(matches!(e, VfsError::WrongKey { .. }), "{e}");
    assert_eq!(e.exit_code(), 7);
}

#[tokio::test]
async fn key_rotation_keeps_old_files_readable_and_rekey_moves_them() {
    let env = Env::new().await;
    let o = opts(CipherKind::Aes256Gcm, 4096);
    let old_ring = env.keyring.clone();
    let vfs1 = env.vfs(o);
    vfs1.write("a", b"sealed with the first key").await.unwrap();
    let mut ring = old_ring.clone();
    let k2 = ring.rotate().unwrap();
    let vfs2 = env.vfs_with(o, ring.clone(), env.coord.clone());
    vfs2.write("b", b"sealed with the second key")
        .await
        .unwrap();
    assert_eq!(vfs2.stat("a").await.unwrap().key_id, old_ring.current_id());
    assert_eq!(vfs2.stat("b").await.unwrap().key_id, k2);
    assert_eq!(vfs2.read("a").await.unwrap(), b"sealed with the first key");
    // The old keyring cannot read the new file.
    assert!(matches!(
        vfs1.read("b").await,
        Err(VfsError::WrongKey { .. })
    ));
    // Rekey re-seals only the header.
    assert!(vfs2.rekey("a").await.unwrap());
    assert!(!vfs2.rekey("a").await.unwrap());
    assert_eq!(vfs2.stat("a").await.unwrap().key_id, k2);
    let mut ring3 = ring.clone();
    ring3.remove(old_ring.current_id()).unwrap();
    let vfs3 = env.vfs_with(o, ring3, env.coord.clone());
    assert_eq!(vfs3.read("a").await.unwrap(), b"sealed with the first key");
    assert_eq!(vfs3.read("b").await.unwrap(), b"sealed with the second key");
}

#[tokio::test]
async fn name_encryption_hides_names_and_still_lists() {
    let env = Env::new().await;
    let o = VfsOptions {
        name_encryption: true,
        ..opts(CipherKind::Aes256Gcm, 4096)
    };
    let vfs = env.vfs(o);
    vfs.write("docs/secret-plan.txt", b"one").await.unwrap();
    vfs.write("docs/deep/inner.txt", b"two").await.unwrap();
    vfs.write("top.txt", b"three").await.unwrap();
    // The backend holds only hex names, and no file contains a plaintext name.
    let mut raw_names = Vec::new();
    for e in std::fs::read_dir(env.volume_dir()).unwrap() {
        let e = e.unwrap();
        let n = e.file_name().to_string_lossy().into_owned();
        assert_eq!(n.len(), 64);
        assert!(n.chars().all(|c| c.is_ascii_hexdigit()), "{n}");
        let bytes = std::fs::read(e.path()).unwrap();
        for name in ["secret-plan", "docs", "inner", "top.txt"] {
            assert!(!bytes.windows(name.len()).any(|w| w == name.as_bytes()));
        }
        raw_names.push(n);
    }
    assert_eq!(raw_names.len(), 3);
    assert!(vfs
        .ownership_key("docs/secret-plan.txt")
        .unwrap()
        .starts_with("vfs/vol/"));
    assert!(!vfs
        .ownership_key("docs/secret-plan.txt")
        .unwrap()
        .contains("secret"));

    let root: Vec<_> = vfs
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.is_dir))
        .collect();
    assert_eq!(root, vec![("docs".into(), true), ("top.txt".into(), false)]);
    let docs: Vec<_> = vfs
        .list("docs")
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.name, e.is_dir))
        .collect();
    assert_eq!(
        docs,
        vec![("deep".into(), true), ("secret-plan.txt".into(), false)]
    );
    assert_eq!(vfs.walk().await.unwrap().len(), 3);

    vfs.rename("top.txt", "docs/moved.txt").await.unwrap();
    assert_eq!(vfs.read("docs/moved.txt").await.unwrap(), b"three");
    assert!(matches!(
        vfs.read("top.txt").await,
        Err(VfsError::NotFound { .. })
    ));

    // Swapping two hashed objects is caught: each header carries the name it was sealed for.
    let a = env
        .volume_dir()
        .join(vfs.backend_name("docs/moved.txt").unwrap());
    let b = env
        .volume_dir()
        .join(vfs.backend_name("docs/secret-plan.txt").unwrap());
    let (ra, rb) = (std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    std::fs::write(&a, &rb).unwrap();
    std::fs::write(&b, &ra).unwrap();
    assert!(matches!(
        vfs.read("docs/moved.txt").await,
        Err(VfsError::Tampered { .. })
    ));
}

#[tokio::test]
async fn directories_rename_delete_and_path_escape() {
    let env = Env::new().await;
    let vfs = env.vfs(opts(CipherKind::Aes256Gcm, 4096));
    vfs.write("a/b/c.txt", b"c").await.unwrap();
    vfs.write("a/d.txt", b"d").await.unwrap();
    let names: Vec<_> = vfs
        .list("a")
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(names, vec!["b", "d.txt"]);
    vfs.rename("a/d.txt", "e/f.txt").await.unwrap();
    assert_eq!(vfs.read("/e//f.txt").await.unwrap(), b"d");
    vfs.delete("e/f.txt").await.unwrap();
    assert!(matches!(
        vfs.delete("e/f.txt").await,
        Err(VfsError::NotFound { .. })
    ));
    assert!(matches!(
        vfs.stat("nope").await,
        Err(VfsError::NotFound { .. })
    ));
    for bad in ["../x", "a/../../x", "/../etc/passwd"] {
        let e = vfs.create(bad).await.unwrap_err();
        assert!(matches!(e, VfsError::PathEscape { .. }), "{bad}: {e}");
        assert!(matches!(
            vfs.read(bad).await,
            Err(VfsError::PathEscape { .. })
        ));
    }
    assert!(!env.dir.path().join("x").exists());
}

#[tokio::test]
async fn two_nodes_racing_for_one_file_one_is_refused() {
    let env = Env::new().await;
    let o = opts(CipherKind::Aes256Gcm, 4096);
    let node_b = env.hub.connect(SessionConfig::default()).await.unwrap();
    let a = env.vfs(o);
    let b = env.vfs_with(o, env.keyring.clone(), node_b);
    for round in 0..20 {
        let path = format!("race/{round}");
        let (ra, rb) = tokio::join!(a.create(&path), b.create(&path));
        let (winner, loser) = match (ra, rb) {
            (Ok(w), Err(l)) => (w, l),
            (Err(l), Ok(w)) => (w, l),
            (Ok(_), Ok(_)) => panic!("round {round}: both nodes got the file"),
            (Err(x), Err(y)) => panic!("round {round}: both refused: {x} / {y}"),
        };
        assert!(matches!(loser, VfsError::NotOwner { .. }), "{loser}");
        assert_eq!(loser.exit_code(), 6);
        let mut w = winner;
        w.write_at(0, path.as_bytes()).await.unwrap();
        w.close().await.unwrap();
    }
    // Once released, the other node can write.
    b.write("race/0", b"b wins later").await.unwrap();
    assert_eq!(a.read("race/0").await.unwrap(), b"b wins later");
    // A writer that loses its session cannot commit.
    let node_c = env.hub.connect(SessionConfig::default()).await.unwrap();
    let c = env.vfs_with(o, env.keyring.clone(), node_c.clone());
    let mut f = c.create("race/lost").await.unwrap();
    f.write_at(0, b"never visible").await.unwrap();
    node_c.close().await.unwrap();
    let e = f.commit().await.unwrap_err();
    assert!(matches!(e, VfsError::OwnershipLost { .. }), "{e}");
    assert!(matches!(
        a.read("race/lost").await,
        Err(VfsError::NotFound { .. })
    ));
}
