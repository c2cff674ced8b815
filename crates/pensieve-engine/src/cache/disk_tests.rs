//! The disk tier's files: what a crash, a bit flip, another model or another server
//! leave behind is never served.

use super::*;

fn temp_root() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pensieve-disk-{}", rand::random::<u64>()));
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn tokens(n: usize) -> Arc<[TokenId]> {
    (0..n as TokenId).map(|t| t * 7 + 1).collect()
}

/// One snapshot written and the store closed; returns the file's path.
fn write_one(root: &Path, fingerprint: &str, t: &Arc<[TokenId]>, state: &[u8]) -> PathBuf {
    let (mut store, _) = DiskStore::open(root, fingerprint).unwrap();
    assert!(store.write(1, t.clone(), t.len(), Arc::new(state.to_vec())));
    store.flush();
    assert!(store.failed_writes().is_empty());
    store.path_of(t)
}

fn reopen(root: &Path, fingerprint: &str) -> (DiskStore, Vec<FoundFile>) {
    DiskStore::open(root, fingerprint).unwrap()
}

#[test]
fn a_written_snapshot_reads_back_and_leaves_no_temporary_file() {
    let root = temp_root();
    let t = tokens(40);
    let path = write_one(&root, "m", &t, &[5u8; 1000]);
    let (mut store, found) = reopen(&root, "m");
    assert_eq!(found.len(), 1);
    assert_eq!(&*found[0].tokens, &*t);
    assert_eq!(found[0].bytes, 1000);
    assert_eq!(store.read(&t), Some(vec![5u8; 1000]));
    let names: Vec<String> = fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    let _ = fs::remove_dir_all(root);
}

/// Each kind of damage, applied to a good file: the store must drop it at start-up
/// (header damage) or when it is read (snapshot damage), and delete it.
#[test]
fn damaged_files_are_never_served_and_are_removed() {
    type Damage = Box<dyn Fn(&Path)>;
    let flip = |at: fn(u64) -> u64| {
        move |p: &Path| {
            let mut b = fs::read(p).unwrap();
            let i = at(b.len() as u64) as usize;
            b[i] ^= 0x10;
            fs::write(p, b).unwrap();
        }
    };
    let cases: Vec<(&str, Damage, bool)> = vec![
        // (what, damage, caught at start-up)
        (
            "truncated in the snapshot",
            Box::new(|p: &Path| {
                let len = fs::metadata(p).unwrap().len();
                File::options()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_len(len - 100)
                    .unwrap();
            }),
            true,
        ),
        (
            "truncated in the header",
            Box::new(|p: &Path| {
                File::options()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_len(30)
                    .unwrap()
            }),
            true,
        ),
        (
            "empty (torn before any write)",
            Box::new(|p: &Path| fs::write(p, b"").unwrap()),
            true,
        ),
        (
            "trailing bytes",
            Box::new(|p: &Path| {
                let mut f = File::options().append(true).open(p).unwrap();
                f.write_all(b"junk").unwrap();
            }),
            true,
        ),
        ("a bit flipped in the magic", Box::new(flip(|_| 2)), true),
        (
            "a bit flipped in a token id",
            Box::new(flip(|_| 8 + 4 + 1 + 4 + 4 + 9)),
            true,
        ),
        (
            "a bit flipped in the snapshot",
            Box::new(flip(|n| n / 2 + 40)),
            false,
        ),
        (
            "a bit flipped in the snapshot's checksum",
            Box::new(flip(|n| n - 1)),
            false,
        ),
        (
            "another version's file",
            Box::new(|p: &Path| {
                let mut b = fs::read(p).unwrap();
                b[..8].copy_from_slice(b"PNSVKV01");
                fs::write(p, b).unwrap();
            }),
            true,
        ),
    ];
    for (what, damage, at_start) in cases {
        let root = temp_root();
        let t = tokens(40);
        let state: Vec<u8> = (0..4000u32).map(|i| (i % 251) as u8).collect();
        let path = write_one(&root, "m", &t, &state);
        damage(&path);
        let (mut store, found) = reopen(&root, "m");
        if at_start {
            assert!(found.is_empty(), "{what}: indexed");
            assert!(!path.exists(), "{what}: not removed at start-up");
        } else {
            assert_eq!(found.len(), 1, "{what}: the header is good");
            assert_eq!(store.read(&t), None, "{what}: served");
            assert!(!path.exists(), "{what}: not removed after the read");
        }
        let _ = fs::remove_dir_all(root);
    }
}

#[test]
fn another_models_file_is_removed_and_a_leftover_temporary_file_too() {
    let root = temp_root();
    let t = tokens(10);
    let theirs = write_one(&root, "model-b", &t, &[1u8; 64]);
    // Put model B's file where model A's would be: a hash collision, or a copy by hand.
    let (store, _) = reopen(&root, "model-a");
    let ours = store.path_of(&t);
    drop(store);
    fs::copy(&theirs, &ours).unwrap();
    let tmp = ours.with_extension("123.0.tmp");
    fs::write(&tmp, b"half a file").unwrap();
    let (mut store, found) = reopen(&root, "model-a");
    assert!(found.is_empty());
    assert!(!ours.exists() && !tmp.exists());
    assert_eq!(store.read(&t), None);
    // Model B's own file is untouched.
    assert!(theirs.exists());
    let _ = fs::remove_dir_all(root);
}

#[test]
fn a_second_server_on_the_same_directory_runs_without_it() {
    let root = temp_root();
    let (_first, _) = reopen(&root, "m");
    let err = DiskStore::open(&root, "m")
        .err()
        .expect("the directory is locked");
    assert_eq!(err.kind(), io::ErrorKind::ResourceBusy);
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "the message names the holder: {msg}"
    );
    // Another model on the same --cache-dir is another directory.
    assert!(DiskStore::open(&root, "other").is_ok());
    drop(_first);
    assert!(
        DiskStore::open(&root, "m").is_ok(),
        "the lock goes with the store"
    );
    let _ = fs::remove_dir_all(root);
}

#[test]
fn header_lengths_cannot_make_huge_allocations() {
    let t = tokens(3);
    let mut file = encode_header("m", &t, 3, 10).unwrap();
    // Claim 2^30 tokens in a file of a few dozen bytes.
    let at = 8 + 4 + 1 + 4;
    file[at..at + 4].copy_from_slice(&(1u32 << 30).to_le_bytes());
    let len = file.len() as u64;
    let err = parse_header(&mut &file[..], "m", len).err().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    // A snapshot length past the end of the file.
    let mut file = encode_header("m", &t, 3, usize::MAX >> 1).unwrap();
    file.extend_from_slice(&[0; 14]);
    let len = file.len() as u64;
    let err = decode_file(&mut &file[..], "m", &t, len).err().unwrap();
    assert_eq!(err.kind(), io::ErrorKind::InvalidData);
}

#[test]
fn the_reader_over_bytes_takes_a_written_file_and_refuses_a_flipped_one() {
    let root = temp_root();
    let t = tokens(12);
    let path = write_one(&root, "m", &t, &[9u8; 300]);
    let mut bytes = fs::read(&path).unwrap();
    assert_eq!(
        super::super::read_snapshot_file(&bytes, "m").unwrap(),
        vec![9u8; 300]
    );
    let n = bytes.len();
    bytes[n - 10] ^= 1;
    assert!(super::super::read_snapshot_file(&bytes, "m").is_err());
    let _ = fs::remove_dir_all(root);
}
