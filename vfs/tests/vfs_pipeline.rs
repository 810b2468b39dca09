//! The batched paths: sequential writes sealed in batches off the runtime thread, and
//! sequential reads opened ahead of the reader. Both must behave exactly like the one-segment
//! path: writes land in order whatever comes between them, and damage is reported at the
//! segment where it is, never as plaintext.

mod common;

use common::*;
use keyward_vfs::{CipherKind, Vfs, VfsError};
use tokio::io::AsyncReadExt;

const SEG: usize = 4096;
const STRIDE: usize = SEG + 28;

fn at(i: usize) -> usize {
    104 + i * STRIDE
}

/// Reads `path` front to back in `chunk`-byte calls until the end or the first error.
async fn read_seq(vfs: &Vfs, path: &str, chunk: usize) -> (Vec<u8>, Option<VfsError>) {
    let mut r = match vfs.open(path).await {
        Ok(r) => r,
        // Opening authenticates the last segment: damage may already show there.
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut out = Vec::new();
    let mut buf = vec![0u8; chunk];
    loop {
        match r.read_at(out.len() as u64, &mut buf).await {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, Some(e)),
        }
    }
}

#[tokio::test]
async fn sequential_reads_report_damage_at_its_segment() {
    let env = Env::new().await;
    let vfs = env.vfs(opts(CipherKind::Aes256Gcm, SEG as u32));
    let data = pattern(300 * SEG + 123, 77);
    vfs.write("big", &data).await.unwrap();
    let p = raw_path(&env, "big");
    let raw = read_raw(&p);

    for chunk in [SEG, 1000, 1 << 20] {
        let (back, err) = read_seq(&vfs, "big", chunk).await;
        assert!(err.is_none(), "chunk {chunk}: {err:?}");
        assert!(back == data, "chunk {chunk}: content differs");
    }

    // One flipped byte far into the file, read segment by segment.
    let mut bad = raw.clone();
    bad[at(200) + 500] ^= 1;
    std::fs::write(&p, &bad).unwrap();
    let (back, err) = read_seq(&vfs, "big", SEG).await;
    assert!(
        matches!(err, Some(VfsError::Tampered { .. })),
        "flip: {err:?}"
    );
    assert!(back == data[..200 * SEG], "flip: {} bytes back", back.len());
    // The stream reports it as invalid data after the good part.
    let mut s = vfs.open("big").await.unwrap().into_stream();
    let mut sink = Vec::new();
    let e = s.read_to_end(&mut sink).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    assert!(sink.len() <= 200 * SEG && sink[..] == data[..sink.len()]);

    // Two segments swapped.
    let mut swapped = raw.clone();
    swapped[at(150)..at(151)].copy_from_slice(&raw[at(151)..at(152)]);
    swapped[at(151)..at(152)].copy_from_slice(&raw[at(150)..at(151)]);
    std::fs::write(&p, &swapped).unwrap();
    let (back, err) = read_seq(&vfs, "big", SEG).await;
    assert!(
        matches!(
            err,
            Some(VfsError::Reordered {
                found: 150,
                sealed_for: 151,
                ..
            })
        ),
        "swap: {err:?}"
    );
    assert!(back == data[..150 * SEG]);

    // A segment from the middle left out: everything after it is misplaced.
    let mut cut = raw[..at(100)].to_vec();
    cut.extend_from_slice(&raw[at(101)..]);
    std::fs::write(&p, &cut).unwrap();
    let (back, err) = read_seq(&vfs, "big", 3 * SEG).await;
    assert!(err.as_ref().is_some_and(VfsError::is_integrity), "{err:?}");
    assert!(back.len() <= 100 * SEG && back[..] == data[..back.len()]);

    // A reread after repair is whole again.
    std::fs::write(&p, &raw).unwrap();
    let (back, err) = read_seq(&vfs, "big", SEG).await;
    assert!(err.is_none() && back == data);
}

#[tokio::test]
async fn queued_writes_stay_in_order_with_reads_truncation_and_gaps() {
    let env = Env::new().await;
    for cipher in CipherKind::ALL {
        let vfs = env.vfs(opts(cipher, SEG as u32));
        let path = format!("wb/{cipher}");
        let mut model = pattern(3 << 20, 3);
        let mut f = vfs.create(&path).await.unwrap();
        for (i, chunk) in model.chunks(10_000).enumerate() {
            f.write_at((i * 10_000) as u64, chunk).await.unwrap();
        }
        // Reading back before the commit sees every write, queued or not.
        let mut buf = vec![0u8; 50_000];
        let n = f.read_at(1_000_000, &mut buf).await.unwrap();
        assert!(
            buf[..n] == model[1_000_000..1_050_000],
            "{cipher}: read back"
        );
        // Rewrite inside already queued segments, then go on appending.
        let patch = pattern(20_000, 4);
        f.write_at(2_000_000, &patch).await.unwrap();
        model[2_000_000..2_020_000].copy_from_slice(&patch);
        let tail = pattern(70_000, 5);
        let end = model.len() as u64;
        f.write_at(end, &tail).await.unwrap();
        model.extend_from_slice(&tail);
        // Shrink below queued segments, then grow with a gap of zero segments.
        f.truncate(1_234_567).await.unwrap();
        model.truncate(1_234_567);
        let more = pattern(100_000, 6);
        f.write_at(2_500_000, &more).await.unwrap();
        model.resize(2_500_000, 0);
        model.extend_from_slice(&more);
        let mut gap = vec![1u8; 30_000];
        let n = f.read_at(1_300_000, &mut gap).await.unwrap();
        assert!(
            gap[..n].iter().all(|b| *b == 0),
            "{cipher}: gap reads zeros"
        );
        assert_eq!(f.len(), model.len() as u64);
        f.close().await.unwrap();
        let back = vfs.read(&path).await.unwrap();
        assert!(back == model, "{cipher}: committed content differs");
        let raw = std::fs::metadata(raw_path(&env, &path)).unwrap().len();
        let segs = (model.len() as u64).div_ceil(SEG as u64);
        assert_eq!(raw, 104 + model.len() as u64 + 28 * segs);
    }
}

#[tokio::test]
async fn an_abandoned_sequential_write_leaves_the_old_file() {
    let env = Env::new().await;
    let vfs = env.vfs(opts(CipherKind::Aes256Gcm, SEG as u32));
    let old = pattern(100_000, 8);
    vfs.write("keep", &old).await.unwrap();
    let mut f = vfs.create("keep").await.unwrap();
    f.write_at(0, &pattern(5 << 20, 9)).await.unwrap();
    // Aborted, or dropped, with batches still being sealed: nothing of it becomes visible.
    f.abort().await.unwrap();
    assert_eq!(vfs.read("keep").await.unwrap(), old);
    let mut f = vfs.create("keep").await.unwrap();
    f.write_at(0, &pattern(5 << 20, 10)).await.unwrap();
    drop(f);
    assert_eq!(vfs.read("keep").await.unwrap(), old);
}
