//! The CI workflow (`.github/workflows/`) passes actionlint, and the lint
//! really looks: a broken workflow fails it.

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn actionlint(files: &[PathBuf]) -> (i32, String) {
    let cache = xtask::util::cache_dir().unwrap();
    let pkg = xtask::setup::actionlint_dir(&cache);
    assert!(
        pkg.join("main.wasm").is_file(),
        "actionlint is not installed in {}: run `cargo xtask setup`",
        pkg.display()
    );
    let out = Command::new("node")
        .arg(root().join("xtask/actionlint.cjs"))
        .arg(&pkg)
        .args(files)
        .output()
        .expect("run node (it comes with this machine's image)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_workflows_pass_actionlint() {
    let dir = root().join(".github/workflows");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml" || x == "yaml"))
        .collect();
    assert!(!files.is_empty(), "no workflow in {}", dir.display());
    let (code, text) = actionlint(&files);
    assert_eq!(code, 0, "actionlint:\n{text}");
}

#[test]
fn actionlint_catches_a_broken_workflow() {
    let dir = std::env::temp_dir().join(format!("xtask-actionlint-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yml");
    std::fs::write(
        &bad,
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.nope }}\n",
    )
    .unwrap();
    let (code, text) = actionlint(&[bad]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("\"nope\" is not defined"), "{text}");
}
