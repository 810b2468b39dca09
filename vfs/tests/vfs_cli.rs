//! The `keyward vfs` commands through `cli::run`, and the `[vfs]` config section.

use keyward_ownership::{InProcessHub, SessionConfig};
use keyward_vfs::{run, KeyCommand, VfsCommand, VfsConfig, VfsError};

#[test]
fn config_section_parses_with_defaults_and_refuses_unknown_keys() {
    let c: VfsConfig = toml::from_str(
        r#"
        volume = "photos"
        cipher = "twofish-256-gcm"
        name_encryption = true
        "#,
    )
    .unwrap();
    assert_eq!(c.volume, "photos");
    assert_eq!(c.cipher, keyward_vfs::CipherKind::Twofish256Gcm);
    assert_eq!(c.segment_size, 65536);
    assert_eq!(c.root, std::path::PathBuf::from("./keyward-data/vfs"));
    assert!(toml::from_str::<VfsConfig>("volumes = \"x\"").is_err());
    assert_eq!(
        toml::from_str::<VfsConfig>("").unwrap(),
        VfsConfig::default()
    );
    let bad = VfsConfig {
        volume: "../x".into(),
        ..VfsConfig::default()
    };
    assert!(bad.validate().is_err());
}

#[tokio::test]
async fn put_get_ls_stat_mv_rm_and_keys() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = VfsConfig {
        root: dir.path().join("data"),
        segment_size: 4096,
        ..VfsConfig::default()
    };
    let hub = InProcessHub::new();
    let coord = hub.connect(SessionConfig::default()).await.unwrap();
    let key = |cmd| VfsCommand::Key { cmd };

    // No keyring yet: a clear key error, exit code 1.
    let e = run(
        VfsCommand::Ls {
            dir: String::new(),
            long: false,
        },
        &cfg,
        coord.clone(),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, VfsError::Key(_)), "{e}");
    run(key(KeyCommand::Init), &cfg, coord.clone())
        .await
        .unwrap();
    assert!(run(key(KeyCommand::Init), &cfg, coord.clone())
        .await
        .is_err());

    let src = dir.path().join("in.bin");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&src, &data).unwrap();
    run(
        VfsCommand::Put {
            src: src.clone(),
            dest: "a/in.bin".into(),
        },
        &cfg,
        coord.clone(),
    )
    .await
    .unwrap();
    let out = dir.path().join("out.bin");
    run(
        VfsCommand::Get {
            src: "a/in.bin".into(),
            dest: out.clone(),
        },
        &cfg,
        coord.clone(),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), data);
    run(
        VfsCommand::Ls {
            dir: "a".into(),
            long: true,
        },
        &cfg,
        coord.clone(),
    )
    .await
    .unwrap();
    run(
        VfsCommand::Stat {
            path: "a/in.bin".into(),
        },
        &cfg,
        coord.clone(),
    )
    .await
    .unwrap();
    run(
        VfsCommand::Mv {
            from: "a/in.bin".into(),
            to: "b.bin".into(),
        },
        &cfg,
        coord.clone(),
    )
    .await
    .unwrap();
    let e = run(
        VfsCommand::Stat {
            path: "a/in.bin".into(),
        },
        &cfg,
        coord.clone(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.exit_code(), 5);

    // Rotate, rekey everything, export: the export opens the volume on its own.
    run(key(KeyCommand::Rotate), &cfg, coord.clone())
        .await
        .unwrap();
    run(key(KeyCommand::Rekey { path: None }), &cfg, coord.clone())
        .await
        .unwrap();
    let backup = dir.path().join("backup.kwk");
    run(
        key(KeyCommand::Export {
            out: Some(backup.clone()),
        }),
        &cfg,
        coord.clone(),
    )
    .await
    .unwrap();
    let cfg2 = VfsConfig {
        key_file: Some(backup),
        ..cfg.clone()
    };
    let out2 = dir.path().join("out2.bin");
    run(
        VfsCommand::Get {
            src: "b.bin".into(),
            dest: out2.clone(),
        },
        &cfg2,
        coord.clone(),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(&out2).unwrap(), data);

    // A tampered file: exit code 7, and no partial plaintext is left at the destination.
    let stored = dir.path().join("data/default/b.bin");
    let mut raw = std::fs::read(&stored).unwrap();
    let mid = raw.len() / 2;
    raw[mid] ^= 0x40;
    std::fs::write(&stored, &raw).unwrap();
    let out3 = dir.path().join("out3.bin");
    let e = run(
        VfsCommand::Get {
            src: "b.bin".into(),
            dest: out3.clone(),
        },
        &cfg,
        coord.clone(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.exit_code(), 7, "{e}");
    assert!(!out3.exists());
    assert!(!dir.path().join("out3.bin.kwpart").exists());

    run(
        VfsCommand::Rm {
            path: "b.bin".into(),
        },
        &cfg,
        coord.clone(),
    )
    .await
    .unwrap();
    let e = run(
        VfsCommand::Rm {
            path: "b.bin".into(),
        },
        &cfg,
        coord.clone(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.exit_code(), 5);
}

#[tokio::test]
async fn passphrase_sealed_keyring_via_env() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = VfsConfig {
        root: dir.path().to_path_buf(),
        passphrase_env: Some("KW_VFS_TEST_PASSPHRASE_UNIQUE".into()),
        ..VfsConfig::default()
    };
    // Seal directly with cheap Argon2id parameters (the CLI uses the strong defaults).
    std::env::set_var("KW_VFS_TEST_PASSPHRASE_UNIQUE", "open sesame");
    let ring = keyward_vfs::Keyring::generate().unwrap();
    ring.save(
        &cfg.key_file_path(),
        Some((b"open sesame", keyward_vfs::KdfParams::insecure_fast())),
    )
    .unwrap();
    let text = std::fs::read_to_string(cfg.key_file_path()).unwrap();
    assert!(text.starts_with("keyward-vfs-sealed-keyring v1"));
    let hub = InProcessHub::new();
    let coord = hub.connect(SessionConfig::default()).await.unwrap();
    let vfs = keyward_vfs::Vfs::from_config(&cfg, coord.clone())
        .await
        .unwrap();
    vfs.write("x", b"sealed").await.unwrap();
    std::env::set_var("KW_VFS_TEST_PASSPHRASE_UNIQUE", "wrong");
    let e = keyward_vfs::Vfs::from_config(&cfg, coord)
        .await
        .unwrap_err();
    assert!(matches!(e, VfsError::WrongKey { .. }), "{e}");
}
