//! `pillion validate`: the agent's source checked offline by the real binary.
#![allow(clippy::unwrap_used)] // Tests: a panic with its reason is the report.

use std::process::Command;

fn validate(args: &[&std::path::Path]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pillion"))
        .arg("validate")
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success(), text)
}

#[test]
fn a_source_directory_is_checked_file_by_file_and_as_a_whole() {
    let dir = std::env::temp_dir().join(format!("pillion-validate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("a.yaml"),
        "workloads:\n  - {name: api, namespace: shop, token: api-token-456, addresses: [198.18.0.3]}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("b.yaml"),
        "services:\n  - name: api\n    namespace: shop\n    ports: [{port: 80}]\n    \
         endpoints: [{workload: api}]\n",
    )
    .unwrap();
    let (ok, text) = validate(&[&dir]);
    assert!(ok, "{text}");
    assert!(
        text.contains("2 file(s), 1 workload(s), 1 service(s)"),
        "{text}"
    );

    // Each file's own problem, with its line; then the exit code says so.
    std::fs::write(dir.join("c.yaml"), "services:\n  - name: x\n    ports: [\n").unwrap();
    std::fs::write(
        dir.join("d.yaml"),
        "services:\n  - {name: y, namespace: shop, ports: [{port: 0}]}\n",
    )
    .unwrap();
    let (ok, text) = validate(&[&dir]);
    assert!(!ok, "{text}");
    let c = dir.join("c.yaml").display().to_string();
    let d = dir.join("d.yaml").display().to_string();
    assert!(text.contains(&format!("✗ {c}:")), "{text}");
    assert!(text.contains(&format!("✗ {d}:2:")), "{text}");

    // A problem between files names the file it is in.
    std::fs::remove_file(dir.join("c.yaml")).unwrap();
    std::fs::remove_file(dir.join("d.yaml")).unwrap();
    std::fs::remove_file(dir.join("a.yaml")).unwrap();
    let (ok, text) = validate(&[&dir]);
    assert!(!ok, "{text}");
    let b = dir.join("b.yaml").display().to_string();
    assert!(
        text.contains(&format!("✗ {b}:5:")) && text.contains("no workload named `api`"),
        "{text}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
