//! A throwaway PostgreSQL cluster for tests (this crate's unit tests and the integration tests
//! at the repository root), started the way other tests start Mosquitto: `initdb` into a temp
//! folder, `postgres` on a free loopback port and a socket in that folder. `cargo test` alone
//! needs nothing else than Debian's `postgresql` package.
//!
//! PostgreSQL refuses to run as root (CI runs as root): then both run as the `postgres` system
//! user that Debian's package creates, on a folder given to it. The server stops and its folder
//! goes when the test process ends, however it ends: a watchdog shell waits for its stdin (a
//! pipe from this process) to close.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A running cluster. Its superuser is `inspectd` (trusted on loopback and the socket); the
/// role `pwuser` (password `pw-secret`) must log in with its password over TCP.
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    pub bin: PathBuf,
    /// Holding it keeps the server up: closing it (the process ending) stops it.
    _watchdog: Mutex<(Child, ChildStdin)>,
}

/// The password of the role `pwuser`.
pub const PW_PASSWORD: &str = "pw-secret";

fn as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The folder of `initdb` and `postgres`: on PATH, else Debian's newest /usr/lib/postgresql/N/bin.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            if d.join("initdb").is_file() && d.join("postgres").is_file() {
                return Some(d);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// `prog args` as the user that runs PostgreSQL.
fn command(root: bool, prog: &Path) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(prog);
        c
    } else {
        Command::new(prog)
    }
}

fn run(c: &mut Command, what: &str) {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Cluster {
    /// Starts a cluster. `fast`: without fsync (tests); otherwise as a server runs (benchmarks).
    pub fn start(fast: bool) -> Cluster {
        let bin = bin_dir().expect(
            "PostgreSQL's initdb and postgres: install Debian's `postgresql` package (scripts/test does)",
        );
        let root = as_root();
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "inspectd-pg-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sock")).unwrap();
        if root {
            run(
                Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir),
                "chown the cluster folder to postgres (Debian's postgresql package creates the user)",
            );
        }
        run(
            command(root, &bin.join("initdb"))
                .args(["-D"])
                .arg(dir.join("data"))
                .args([
                    "-U",
                    "inspectd",
                    "-A",
                    "trust",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ]),
            "initdb",
        );
        // Trusted: the superuser on the socket and loopback. Passwords: everyone else over TCP.
        let hba = "local all all trust\nhost all inspectd 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n";
        let hba_path = dir.join("data/pg_hba.conf");
        if root {
            let mut c = command(root, Path::new("sh"))
                .arg("-c")
                .arg(format!("cat > '{}'", hba_path.display()))
                .stdin(Stdio::piped())
                .spawn()
                .unwrap();
            c.stdin.take().unwrap().write_all(hba.as_bytes()).unwrap();
            assert!(c.wait().unwrap().success());
        } else {
            std::fs::write(&hba_path, hba).unwrap();
        }
        let port = free_port();
        let mut opts = format!(
            "-c listen_addresses=127.0.0.1 -c max_connections=300 -c unix_socket_directories='{}'",
            dir.join("sock").display()
        );
        if fast {
            opts.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        // The watchdog: the server runs until this process's end closes the pipe.
        let script = format!(
            "'{pg}' -D '{d}/data' -p {port} {opts} >'{d}/log' 2>&1 & pid=$!; cat >/dev/null; kill -INT $pid; wait $pid; rm -rf '{d}'",
            pg = bin.join("postgres").display(),
            d = dir.display(),
        );
        let mut child = command(root, Path::new("sh"))
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting postgres");
        let stdin = child.stdin.take().unwrap();
        let c = Cluster {
            dir,
            port,
            bin,
            _watchdog: Mutex::new((child, stdin)),
        };
        let t0 = Instant::now();
        loop {
            let r = c.admin().and_then(|mut cl| {
                cl.batch_execute(&format!(
                    "CREATE ROLE pwuser LOGIN PASSWORD '{PW_PASSWORD}' CREATEDB"
                ))
            });
            match r {
                Ok(()) => break,
                Err(e) if t0.elapsed() > Duration::from_secs(60) => panic!(
                    "postgres did not come up: {e}\n{}",
                    std::fs::read_to_string(c.dir.join("log")).unwrap_or_default()
                ),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        c
    }

    /// The superuser on database `postgres`.
    pub fn admin(&self) -> Result<postgres::Client, postgres::Error> {
        postgres::Config::new()
            .host("127.0.0.1")
            .port(self.port)
            .user("inspectd")
            .dbname("postgres")
            .connect(postgres::NoTls)
    }

    /// `--db` for database `db` as the superuser, over loopback TCP.
    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://inspectd@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }

    /// The socket folder (`?host=` of a URL).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.join("sock")
    }

    /// A new, empty database; returns its `--db` URL.
    pub fn create_db(&self, db: &str) -> String {
        let mut c = self.admin().expect("connecting to the test cluster");
        // One statement each: together they would run in one transaction, which neither may.
        c.batch_execute(&format!("DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE)"))
            .unwrap();
        c.batch_execute(&format!("CREATE DATABASE \"{db}\" OWNER pwuser"))
            .unwrap();
        self.url(db)
    }
}

/// The cluster of this test process (started on first use).
pub fn cluster() -> &'static Cluster {
    static C: OnceLock<Cluster> = OnceLock::new();
    C.get_or_init(|| Cluster::start(true))
}
