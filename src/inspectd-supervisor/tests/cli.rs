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

/// Starts the supervisor with `args` (its broker need not exist) and returns its first stderr
/// line: the start-up line once the database is open, or the error.
fn first_line(args: &[&str], env: &[(&str, &Path)]) -> (String, Option<i32>) {
    use std::io::BufRead;
    let mut c = Command::new(env!("CARGO_BIN_EXE_inspectd-supervisor"));
    c.args(args)
        .env_remove("PGPASSFILE")
        .env("INSPECTD_LOG", "error")
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c.spawn().unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stderr.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    // An error ends the process at once; a supervisor that started runs until killed.
    let t0 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() && t0.elapsed() < std::time::Duration::from_secs(2) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let code = child.wait().unwrap().code();
    (line.trim_end().to_string(), code)
}

#[test]
fn postgresql_and_share_group_flags_are_checked_and_the_password_comes_from_a_file() {
    let dir = tmpdir("postgres");
    let ok_db = dir.join("sup.sqlite");
    let sup = |db: &str, extra: &[&str]| {
        let mut a = vec![
            "--broker",
            "mqtt://127.0.0.1:1",
            "--listen",
            "127.0.0.1:0",
            "--db",
            db,
        ];
        a.extend_from_slice(extra);
        run(&a)
    };
    // Several supervisors cannot share one SQLite file.
    assert_bad_input(
        &sup(s(&ok_db), &["--share-group", "plant"]),
        &["--share-group", "PostgreSQL"],
    );
    assert_bad_input(
        &sup(s(&ok_db), &["--evidence-dir", s(&dir)]),
        &["--evidence-dir"],
    );
    let c = inspectd_supervisor::pgtest::cluster();
    let url = c.create_db("cli");
    assert_bad_input(&sup(&url, &["--share-group", "a/b"]), &["--share-group"]);
    assert_bad_input(
        &sup(&url, &["--evidence-dir", "/nonexistent-folder"]),
        &["--evidence-dir", "/nonexistent-folder"],
    );
    // A server elsewhere without a checked certificate; a mode that does not exist.
    assert_bad_input(&sup("postgres://ops@db.plant/x", &[]), &["--db", "sslmode"]);
    assert_bad_input(
        &sup("postgresql://ops@127.0.0.1:1/x?sslmode=sometimes", &[]),
        &["--db", "sslmode"],
    );
    assert_bad_input(
        &sup(
            &format!(
                "postgres://ops@127.0.0.1:{}/x?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
                c.port
            ),
            &[],
        ),
        &["sslrootcert", "/nonexistent/ca.pem"],
    );
    // Nothing listening there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert_bad_input(
        &sup(
            &format!("postgres://ops@127.0.0.1:{port}/x?sslmode=disable"),
            &[],
        ),
        &["--db", "cannot connect"],
    );
    // The role `pwuser` logs in with its password only: from --db-password-file or PGPASSFILE.
    let pw_url = format!("postgres://pwuser@127.0.0.1:{}/cli?sslmode=disable", c.port);
    let wrong = dir.join("wrong");
    std::fs::write(&wrong, "not-it\n").unwrap();
    assert_bad_input(
        &sup(&pw_url, &["--db-password-file", s(&wrong)]),
        &["--db", "password authentication failed"],
    );
    let right = dir.join("right");
    std::fs::write(
        &right,
        format!("{}\n", inspectd_supervisor::pgtest::PW_PASSWORD),
    )
    .unwrap();
    let args = |extra: &'static [&'static str]| {
        let mut a: Vec<String> = [
            "--broker",
            "mqtt://127.0.0.1:1",
            "--listen",
            "127.0.0.1:0",
            "--db",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.push(pw_url.clone());
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let mut with_file = args(&["--db-password-file"]);
    with_file.push(s(&right).to_string());
    let v: Vec<&str> = with_file.iter().map(String::as_str).collect();
    let (line, _) = first_line(&v, &[]);
    assert!(
        line.contains("database postgres://pwuser@127.0.0.1"),
        "{line}"
    );
    let pgpass = dir.join("pgpass");
    std::fs::write(
        &pgpass,
        format!(
            "127.0.0.1:{}:cli:pwuser:{}\n",
            c.port,
            inspectd_supervisor::pgtest::PW_PASSWORD
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
    let plain = args(&[]);
    let v: Vec<&str> = plain.iter().map(String::as_str).collect();
    let (line, _) = first_line(&v, &[("PGPASSFILE", &pgpass)]);
    assert!(
        line.contains("database postgres://pwuser@127.0.0.1"),
        "{line}"
    );
    // A password file others may read is ignored, as libpq does: no password, refused.
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (line, code) = first_line(&v, &[("PGPASSFILE", &pgpass)]);
    assert_eq!(code, Some(2), "{line}");
    assert!(line.contains("--db"), "{line}");
}
