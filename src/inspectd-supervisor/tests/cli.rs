//! The supervisor's command line: every bad argument answered with exit code 2 and one line
//! that names it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_inspectd-supervisor"))
        .args(args)
        .output()
        .expect("run inspectd-supervisor")
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("inspectd-sup-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Asserts exit code 2 and a single stderr line containing every `needle`.
fn assert_bad_input(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "one line expected: {err}"
    );
    for n in needles {
        assert!(err.contains(n), "{n:?} not in {err:?}");
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn every_bad_argument_is_named() {
    let dir = tmpdir("supervise");
    let db = dir.join("sup.sqlite");
    let garbage = dir.join("not-a-db.sqlite");
    std::fs::write(&garbage, vec![b'x'; 4096]).unwrap();
    // A supervisor that would start but for the flags under test (each flag given once).
    let sup = |listen: &str, db: &str, extra: &[&str]| {
        let mut a = vec![
            "--broker",
            "mqtt://127.0.0.1:1",
            "--listen",
            listen,
            "--db",
            db,
        ];
        a.extend_from_slice(extra);
        run(&a)
    };
    let ok_db = s(&db);
    assert_bad_input(
        &run(&["--broker", "ftp://plant", "--db", ok_db]),
        &["--broker", "ftp://plant"],
    );
    assert_bad_input(
        &run(&["--broker", "mqtt://10.0.0.5:1883", "--db", ok_db]),
        &["--broker", "plaintext"],
    );
    assert_bad_input(&sup("everywhere", ok_db, &[]), &["--listen", "everywhere"]);
    assert_bad_input(
        &sup("127.0.0.1:0", "/nonexistent-folder/sup.sqlite", &[]),
        &["--db", "/nonexistent-folder"],
    );
    assert_bad_input(
        &sup("127.0.0.1:0", s(&garbage), &[]),
        &["--db", "not-a-db.sqlite"],
    );
    assert_bad_input(
        &sup("127.0.0.1:0", ok_db, &["--prefix", "a/b"]),
        &["--prefix"],
    );
    assert_bad_input(
        &sup("127.0.0.1:0", ok_db, &["--retain-days", "0"]),
        &["--retain-days"],
    );
    assert_bad_input(
        &sup("127.0.0.1:0", ok_db, &["--ca-file", s(&garbage)]),
        &["--broker", "plaintext"],
    );
    // An anonymous UI others can reach; a users file that is missing or wrong.
    assert_bad_input(
        &sup("0.0.0.0:0", ok_db, &[]),
        &["--listen 0.0.0.0:0", "--users-file"],
    );
    assert_bad_input(
        &sup("0.0.0.0:0", ok_db, &["--users-file", "/nonexistent/users"]),
        &["--users-file", "/nonexistent/users"],
    );
    let users = dir.join("users");
    std::fs::write(
        &users,
        "anna:correct horse
bo:short
",
    )
    .unwrap();
    assert_bad_input(
        &sup("127.0.0.1:0", ok_db, &["--users-file", s(&users)]),
        &["--users-file", "users: line 2", "shorter than 8"],
    );
    // The port is taken: named, exit 2.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    assert_bad_input(&sup(&addr, ok_db, &[]), &["--listen", &addr]);
    assert_bad_input(
        &run(&[
            "loadgen",
            "--broker",
            "mqtt://127.0.0.1:1",
            "--verdicts",
            "0",
        ]),
        &["--verdicts"],
    );
}
