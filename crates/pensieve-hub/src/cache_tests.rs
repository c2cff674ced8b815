use std::path::{Path, PathBuf};

use super::*;

/// A scratch folder removed at the end of the test.
pub(crate) struct Scratch(pub PathBuf);

impl Scratch {
    pub(crate) fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "pensieve-hub-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Lay out `repo` at `commit` as huggingface_hub does: blobs named by content, snapshot
/// files linking to them, `refs/main`.
fn put(root: &Path, repo: &str, commit: &str, files: &[(&str, &[u8])]) {
    let dir = root.join(format!("models--{}", repo.replace('/', "--")));
    std::fs::create_dir_all(dir.join("refs")).unwrap();
    std::fs::write(dir.join("refs/main"), commit).unwrap();
    for (path, content) in files {
        let blob = dir
            .join("blobs")
            .join(format!("{:x}", content.len() * 31 + content[0] as usize));
        std::fs::create_dir_all(blob.parent().unwrap()).unwrap();
        std::fs::write(&blob, content).unwrap();
        let link = dir.join("snapshots").join(commit).join(path);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&blob, &link).unwrap();
    }
}

#[test]
fn finds_lists_and_removes_gguf_models() {
    let scratch = Scratch::new("cache");
    let cache = HfCache::new(&scratch.0);
    put(
        &scratch.0,
        "org/m-GGUF",
        "c1",
        &[
            ("m-Q4_K_M.gguf", b"aaaa"),
            ("m-Q8_0.gguf", b"bbbbbbbb"),
            ("mmproj-m-f16.gguf", b"pp"),
            ("README.md", b"r"),
        ],
    );
    put(
        &scratch.0,
        "org/mlx",
        "c2",
        &[("config.json", b"{}"), ("model.safetensors", b"sss")],
    );
    let names: Vec<_> = cache.models().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["org/m-GGUF:Q4_K_M", "org/m-GGUF:Q8_0", "org/mlx"]);

    let q8 = cache
        .find("org/m-GGUF", Some("q8_0"), "main")
        .unwrap()
        .unwrap();
    assert_eq!(q8.size, 8);
    assert!(q8.path.ends_with("snapshots/c1/m-Q8_0.gguf"));
    // The vision projector beside it, for every quant; not a model of its own.
    assert!(q8
        .mmproj
        .as_ref()
        .is_some_and(|p| p.ends_with("snapshots/c1/mmproj-m-f16.gguf")));
    assert!(cache.find("org/absent", None, "main").unwrap().is_none());
    assert!(cache.find("org/m-GGUF", Some("F16"), "main").is_err());

    assert_eq!(cache.remove(&q8).unwrap(), 8);
    let names: Vec<_> = cache.models().into_iter().map(|m| m.name).collect();
    assert_eq!(names, ["org/m-GGUF:Q4_K_M", "org/mlx"]);
    let default = cache.find("org/m-GGUF", None, "main").unwrap().unwrap();
    // The repo's last model: its projector and README go with it.
    assert_eq!(cache.remove(&default).unwrap(), 4 + 2 + 1);
    assert!(!cache.repo_dir("org/m-GGUF").exists());
    assert_eq!(cache.models().len(), 1);

    let mlx = cache.find("org/mlx", None, "main").unwrap().unwrap();
    assert_eq!(mlx.format, ModelFormat::Folder);
    cache.remove(&mlx).unwrap();
    assert!(!cache.repo_dir("org/mlx").exists());
}

#[test]
fn a_blob_shared_by_two_snapshots_stays() {
    let scratch = Scratch::new("shared");
    let cache = HfCache::new(&scratch.0);
    put(&scratch.0, "org/r", "old", &[("m-Q4_0.gguf", b"same")]);
    put(&scratch.0, "org/r", "new", &[("m-Q4_0.gguf", b"same")]);
    let model = cache.find("org/r", None, "main").unwrap().unwrap();
    assert!(model
        .path
        .starts_with(scratch.0.join("models--org--r/snapshots/new")));
    assert_eq!(
        cache.remove(&model).unwrap(),
        0,
        "the old snapshot still uses it"
    );
    assert!(cache.find("org/r", None, "old").unwrap().is_some());
}
