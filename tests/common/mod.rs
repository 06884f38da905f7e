//! Helpers shared by the end-to-end test files: paths, a broker, temp folders, the daemon.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use inspectd::config::Config;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// A broker address: the one named by the environment, or a fresh embedded one.
pub fn broker() -> (String, u16) {
    if let Ok(addr) = std::env::var("INSPECTD_TEST_BROKER") {
        let (h, p) = addr
            .rsplit_once(':')
            .expect("INSPECTD_TEST_BROKER is host:port");
        return (h.to_string(), p.parse().unwrap());
    }
    let port = inspectd::broker::free_port().unwrap();
    inspectd::broker::spawn(([127, 0, 0, 1], port).into()).unwrap();
    ("127.0.0.1".into(), port)
}

pub fn tmp(tag: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("inspectd-{tag}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The daemon running in-process until `stop`.
pub struct Daemon {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Daemon {
    pub fn start(cfg: Config) -> Daemon {
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async {
            let _ = rx.await;
        };
        let task = tokio::spawn(inspectd::daemon::run(cfg, shutdown, Default::default()));
        Daemon { stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}
