//! `keyward-bench vfs`: the encrypted VFS, per cipher, against
//!
//! 1. plain `std::fs`: sequential write of 1 GiB in 1 MiB calls, timed through the final
//!    fsync (the VFS's commit: fsync, rename, directory fsync), on the real disk;
//! 2. the cipher's own limit: a sequential 1 GiB read from the page cache through the VFS
//!    against the RustCrypto AEAD (`SegmentCipher`) opening 1 GiB of sealed segments of the
//!    same size in memory on one core, measured in the same run;
//! 3. itself: random 4 KiB reads, warm, on a 1 MiB and on a 1 GiB file (default cipher).
//!
//! Every comparison runs its contenders interleaved (harness `interleave`), files are deleted
//! between rounds, and the result line holds Keyward / anchor ratios.
//!
//! Expect a long run: RustCrypto's `twofish` 0.8 computes its S-boxes bit by bit for every
//! block (a few MB/s here), so each GiB of Twofish-256-GCM takes minutes, in the VFS and in
//! the cipher's own limit alike.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use keyward_ownership::{Coordinator, InProcessHub, SessionConfig};
use keyward_vfs::crypto::{random_bytes, SegmentCipher, DATA_KEY_LEN, NONCE_LEN, TAG_LEN};
use keyward_vfs::format::{DEFAULT_SEGMENT_SIZE, SEGMENT_OVERHEAD};
use keyward_vfs::{CipherKind, Keyring, LocalBackend, Vfs, VfsOptions};
use rand::{Rng, SeedableRng};

use crate::harness::{get, interleave, BenchError, Contender, Measures, Plan, ResultLine};

const GIB: u64 = 1 << 30;
const MIB: usize = 1 << 20;
/// Bytes per write or read call in the sequential parts.
const CHUNK: usize = MIB;
const PAGE: u64 = 4096;
/// Where to put the files instead of the system temp dir (must be a real disk).
const DIR_ENV: &str = "KEYWARD_BENCH_VFS_DIR";

fn setup(e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// The short name used in result keys.
fn key_name(c: CipherKind) -> &'static str {
    match c {
        CipherKind::Aes256Gcm => "aes256gcm",
        CipherKind::Aes128Gcm => "aes128gcm",
        CipherKind::Twofish256Gcm => "twofish",
    }
}

/// The file system type holding `dir`, from /proc/self/mountinfo (longest mount prefix).
fn fs_type(dir: &Path) -> Option<String> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in info.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (Some(mount), Some(fstype)) = (fields.get(4), fields.get(sep + 1)) else {
            continue;
        };
        let mount = mount.replace("\\040", " ");
        if dir.starts_with(&mount) && best.as_ref().is_none_or(|(l, _)| mount.len() >= *l) {
            best = Some((mount.len(), (*fstype).to_owned()));
        }
    }
    best.map(|(_, t)| t)
}

/// A temp dir on a real disk: the write part measures fsync, which a RAM file system fakes.
fn bench_dir() -> Result<tempfile::TempDir, BenchError> {
    let base = std::env::var_os(DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = tempfile::Builder::new()
        .prefix("keyward-bench-vfs.")
        .tempdir_in(&base)
        .map_err(|e| setup(format!("temp dir in {}: {e}", base.display())))?;
    let fs = fs_type(dir.path()).unwrap_or_else(|| "unknown".into());
    eprintln!("vfs bench: files in {} ({fs})", dir.path().display());
    if matches!(fs.as_str(), "tmpfs" | "ramfs") {
        return Err(setup(format!(
            "{} is on {fs}, not a disk: set {DIR_ENV} to a directory on a real disk",
            base.display()
        )));
    }
    Ok(dir)
}

struct Env {
    dir: PathBuf,
    coord: Coordinator,
    keyring: Keyring,
    /// One MiB of random bytes, written over and over.
    data: Arc<Vec<u8>>,
}

impl Env {
    fn vfs(&self, cipher: CipherKind) -> Result<Vfs, BenchError> {
        let volume = format!("bench-{}", key_name(cipher));
        let backend = LocalBackend::new(&self.dir, &volume).map_err(setup)?;
        Vfs::new(
            &volume,
            Arc::new(backend),
            self.keyring.clone(),
            VfsOptions {
                cipher,
                ..VfsOptions::default()
            },
            self.coord.clone(),
        )
        .map_err(setup)
    }
}

/// Writes `len` bytes of the pattern through the VFS and commits (create … close).
async fn vfs_write(vfs: &Vfs, path: &str, data: &[u8], len: u64) -> Result<(), String> {
    let mut f = vfs.create(path).await.map_err(|e| e.to_string())?;
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(data.len() as u64) as usize;
        f.write_at(off, &data[..n])
            .await
            .map_err(|e| e.to_string())?;
        off += n as u64;
    }
    f.close().await.map_err(|e| e.to_string())
}

// ---- (1) sequential write ----

struct PlainWrite {
    dir: PathBuf,
    data: Arc<Vec<u8>>,
}

#[async_trait]
impl Contender for PlainWrite {
    fn name(&self) -> &str {
        "plain"
    }
    async fn run(&mut self, round: usize) -> Result<Measures, String> {
        let path = self.dir.join(format!("plain-{round}.bin"));
        let data = self.data.clone();
        let elapsed = tokio::task::spawn_blocking(move || -> std::io::Result<Duration> {
            let start = Instant::now();
            let mut f = std::fs::File::create(&path)?;
            let mut left = GIB;
            while left > 0 {
                let n = left.min(data.len() as u64) as usize;
                f.write_all(&data[..n])?;
                left -= n as u64;
            }
            f.sync_all()?;
            let elapsed = start.elapsed();
            drop(f);
            std::fs::remove_file(&path)?;
            Ok(elapsed)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
        Ok([("write_mb_per_s".to_owned(), mb_per_s(GIB, elapsed))].into())
    }
}

struct VfsWrite {
    name: String,
    vfs: Vfs,
    data: Arc<Vec<u8>>,
}

#[async_trait]
impl Contender for VfsWrite {
    fn name(&self) -> &str {
        &self.name
    }
    async fn run(&mut self, round: usize) -> Result<Measures, String> {
        let path = format!("write/{round}.bin");
        let start = Instant::now();
        vfs_write(&self.vfs, &path, &self.data, GIB).await?;
        let elapsed = start.elapsed();
        self.vfs.delete(&path).await.map_err(|e| e.to_string())?;
        Ok([("write_mb_per_s".to_owned(), mb_per_s(GIB, elapsed))].into())
    }
}

// ---- (2) sequential read against the cipher ----

struct VfsSeqRead {
    name: String,
    vfs: Vfs,
    path: String,
}

#[async_trait]
impl Contender for VfsSeqRead {
    fn name(&self) -> &str {
        &self.name
    }
    async fn run(&mut self, _round: usize) -> Result<Measures, String> {
        let mut buf = vec![0u8; CHUNK];
        let start = Instant::now();
        let mut r = self.vfs.open(&self.path).await.map_err(|e| e.to_string())?;
        let mut off = 0u64;
        loop {
            let n = r.read_at(off, &mut buf).await.map_err(|e| e.to_string())?;
            if n == 0 {
                break;
            }
            off += n as u64;
        }
        let elapsed = start.elapsed();
        if off != GIB {
            return Err(format!("read {off} bytes, expected {GIB}"));
        }
        Ok([("read_mb_per_s".to_owned(), mb_per_s(off, elapsed))].into())
    }
}

/// The RustCrypto AEAD opening 1 GiB of sealed segments in memory, on one core: the most a
/// reader could get out of this cipher on this machine without parallelism.
struct CipherLimit {
    name: String,
    cipher: Arc<SegmentCipher>,
    /// `nonce ‖ ciphertext ‖ tag` per segment, back to back, as in a file.
    sealed: Arc<Vec<u8>>,
    work: Option<Vec<u8>>,
}

fn segment_aad(index: u64) -> [u8; 25] {
    let mut a = [0u8; 25];
    a[..16].copy_from_slice(&[0xA5; 16]);
    a[16..24].copy_from_slice(&index.to_le_bytes());
    a
}

impl CipherLimit {
    fn build(kind: CipherKind, data: &[u8]) -> Result<CipherLimit, BenchError> {
        let mut key = [0u8; DATA_KEY_LEN];
        random_bytes(&mut key).map_err(setup)?;
        let cipher = SegmentCipher::new(kind, &key).map_err(setup)?;
        let seg = DEFAULT_SEGMENT_SIZE as usize;
        let stride = seg + SEGMENT_OVERHEAD;
        let count = (GIB / seg as u64) as usize;
        let mut sealed = vec![0u8; count * stride];
        for (i, s) in sealed.chunks_mut(stride).enumerate() {
            let (nonce, rest) = s.split_at_mut(NONCE_LEN);
            random_bytes(nonce).map_err(setup)?;
            let (body, tag) = rest.split_at_mut(seg);
            let at = (i * seg) % data.len();
            body.copy_from_slice(&data[at..at + seg]);
            let n: [u8; NONCE_LEN] = (&*nonce).try_into().map_err(setup)?;
            let t = cipher.seal(&n, &segment_aad(i as u64), body);
            tag.copy_from_slice(&t);
        }
        Ok(CipherLimit {
            name: format!("cipher-{}", key_name(kind)),
            cipher: Arc::new(cipher),
            sealed: Arc::new(sealed),
            work: None,
        })
    }
}

#[async_trait]
impl Contender for CipherLimit {
    fn name(&self) -> &str {
        &self.name
    }
    async fn run(&mut self, _round: usize) -> Result<Measures, String> {
        let cipher = self.cipher.clone();
        let sealed = self.sealed.clone();
        let mut work = self.work.take().unwrap_or_default();
        let (work, elapsed) = tokio::task::spawn_blocking(move || {
            // Opening works in place: start every round from the sealed bytes (untimed).
            work.clear();
            work.extend_from_slice(&sealed);
            let seg = DEFAULT_SEGMENT_SIZE as usize;
            let stride = seg + SEGMENT_OVERHEAD;
            let start = Instant::now();
            for (i, s) in work.chunks_mut(stride).enumerate() {
                let (nonce, rest) = s.split_at_mut(NONCE_LEN);
                let (body, tag) = rest.split_at_mut(seg);
                let n: [u8; NONCE_LEN] = (&*nonce).try_into().map_err(|_| "nonce")?;
                let t: [u8; TAG_LEN] = (&*tag).try_into().map_err(|_| "tag")?;
                cipher
                    .open(&n, &segment_aad(i as u64), body, &t)
                    .map_err(|_| "segment does not authenticate")?;
            }
            Ok::<_, &'static str>((work, start.elapsed()))
        })
        .await
        .map_err(|e| e.to_string())??;
        self.work = Some(work);
        Ok([("read_mb_per_s".to_owned(), mb_per_s(GIB, elapsed))].into())
    }
}

// ---- (3) random reads ----

struct RandomRead {
    name: String,
    vfs: Vfs,
    path: String,
    len: u64,
    reads: usize,
}

#[async_trait]
impl Contender for RandomRead {
    fn name(&self) -> &str {
        &self.name
    }
    async fn run(&mut self, round: usize) -> Result<Measures, String> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(round as u64);
        let pages = self.len / PAGE;
        let offsets: Vec<u64> = (0..self.reads)
            .map(|_| rng.random_range(0..pages) * PAGE)
            .collect();
        let mut r = self.vfs.open(&self.path).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; PAGE as usize];
        let start = Instant::now();
        for off in offsets {
            let n = r.read_at(off, &mut buf).await.map_err(|e| e.to_string())?;
            if n != buf.len() {
                return Err(format!("short read at {off}: {n}"));
            }
        }
        let us = start.elapsed().as_secs_f64() * 1e6 / self.reads as f64;
        Ok([("us_per_read".to_owned(), us)].into())
    }
}

/// Reads the whole file once (warming the page cache) and checks it holds the pattern.
async fn verify(vfs: &Vfs, path: &str, data: &[u8], len: u64) -> Result<(), BenchError> {
    let mut r = vfs.open(path).await.map_err(setup)?;
    let mut buf = vec![0u8; data.len()];
    let mut off = 0u64;
    while off < len {
        let n = r.read_at(off, &mut buf).await.map_err(setup)?;
        if n == 0 || buf[..n] != data[..n] {
            return Err(setup(format!("{path}: content differs at {off}")));
        }
        off += n as u64;
    }
    Ok(())
}

pub async fn run(plan: Plan) -> Result<ResultLine, BenchError> {
    let tmp = bench_dir()?;
    let hub = InProcessHub::new();
    let coord = hub.connect(SessionConfig::default()).await.map_err(setup)?;
    let mut data = vec![0u8; CHUNK];
    rand::rng().fill(&mut data[..]);
    let env = Env {
        dir: tmp.path().to_owned(),
        coord,
        keyring: Keyring::generate().map_err(setup)?,
        data: Arc::new(data),
    };
    let mut result = ResultLine::default();

    // (1) Sequential write, all ciphers and plain std::fs interleaved in one rotation.
    eprintln!("vfs bench: (1) sequential write of 1 GiB including fsync");
    let mut plain = PlainWrite {
        dir: env.dir.join("plain"),
        data: env.data.clone(),
    };
    std::fs::create_dir_all(&plain.dir)?;
    let mut writers = Vec::new();
    for c in CipherKind::ALL {
        writers.push(VfsWrite {
            name: format!("vfs-{}", key_name(c)),
            vfs: env.vfs(c)?,
            data: env.data.clone(),
        });
    }
    let writes = {
        let mut all: Vec<&mut dyn Contender> = vec![&mut plain];
        all.extend(writers.iter_mut().map(|w| w as &mut dyn Contender));
        interleave(plan, &mut all).await
    };
    let plain_mbps = get(&writes, "plain", "write_mb_per_s");

    // (2) Sequential read, per cipher, against the cipher's own limit; (3) on the default
    // cipher's files.
    let mut reads = Vec::new();
    let mut growth = None;
    for c in CipherKind::ALL {
        eprintln!("vfs bench: (2) sequential read of 1 GiB, {c}");
        let vfs = env.vfs(c)?;
        let path = "read/seq.bin";
        vfs_write(&vfs, path, &env.data, GIB).await.map_err(setup)?;
        verify(&vfs, path, &env.data, GIB).await?;
        let mut limit = CipherLimit::build(c, &env.data)?;
        let mut reader = VfsSeqRead {
            name: format!("vfs-{}", key_name(c)),
            vfs: vfs.clone(),
            path: path.to_owned(),
        };
        let m = interleave(plan, &mut [&mut reader, &mut limit]).await;
        let vfs_read = get(&m, &reader.name, "read_mb_per_s");
        let cipher_read = get(&m, &limit.name, "read_mb_per_s");
        drop(limit);
        reads.push((c, vfs_read, cipher_read));

        if c == CipherKind::default() {
            eprintln!("vfs bench: (3) random 4 KiB reads, 1 MiB and 1 GiB files, {c}");
            let small = "read/small.bin";
            vfs_write(&vfs, small, &env.data, MIB as u64)
                .await
                .map_err(setup)?;
            verify(&vfs, small, &env.data, MIB as u64).await?;
            let n = if plan.quick { 5_000 } else { 20_000 };
            let mut a = RandomRead {
                name: "random-1mib".into(),
                vfs: vfs.clone(),
                path: small.into(),
                len: MIB as u64,
                reads: n,
            };
            let mut b = RandomRead {
                name: "random-1gib".into(),
                vfs: vfs.clone(),
                path: path.into(),
                len: GIB,
                reads: n,
            };
            let m = interleave(plan, &mut [&mut a, &mut b]).await;
            let sa = get(&m, "random-1mib", "us_per_read");
            let sb = get(&m, "random-1gib", "us_per_read");
            eprintln!(
                "vfs bench: random 4 KiB read: 1 MiB file {} us, 1 GiB file {} us",
                fmt(sa),
                fmt(sb)
            );
            growth = ResultLine::ratio(sb, sa);
            vfs.delete(small).await.map_err(setup)?;
        }
        vfs.delete(path).await.map_err(setup)?;
    }

    eprintln!("vfs bench: plain write {} MB/s", fmt(plain_mbps));
    for (c, vfs_read, cipher_read) in &reads {
        let k = key_name(*c);
        let w = get(&writes, &format!("vfs-{k}"), "write_mb_per_s");
        eprintln!(
            "vfs bench: {c}: write {} MB/s; read {} MB/s, cipher alone {} MB/s",
            fmt(w),
            fmt(*vfs_read),
            fmt(*cipher_read)
        );
        result
            .set(
                &format!("write_ratio_{k}"),
                ResultLine::ratio(w, plain_mbps),
            )
            .set(
                &format!("read_vs_cipher_{k}"),
                ResultLine::ratio(*vfs_read, *cipher_read),
            );
    }
    result.set("random_read_growth", growth);
    drop(tmp);
    Ok(result)
}

fn fmt(v: Option<f64>) -> String {
    v.map(crate::harness::fmt_number)
        .unwrap_or_else(|| "NA".into())
}
