//! The RTSP test server, `tests/rtsp_server.py` (GStreamer's gst-rtsp-server serving clips
//! ffmpeg encodes at test time), for the test files that need a real RTSP camera
//! (`#[path = "common/rtsp_server.rs"] mod rtsp_server;`, beside `mod common;`).
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::common;
use common::root;

/// A running `tests/rtsp_server.py`; killed (SIGKILL, like a camera losing power) on drop.
pub struct Server {
    child: Option<Child>,
    port: u16,
    args: Vec<String>,
}

impl Server {
    /// Starts the server on a free port with `args` (mounts and options), its clips encoded into
    /// `clips` (kept there, so a restart serves the same bytes without encoding again).
    pub fn start(clips: &Path, args: &[String]) -> Server {
        let mut s = Server {
            child: None,
            port: common::free_port(),
            args: [
                vec!["--dir".to_string(), clips.display().to_string()],
                args.to_vec(),
            ]
            .concat(),
        };
        s.restart();
        s
    }

    /// (Re)starts the server on its port; returns once it listens.
    pub fn restart(&mut self) {
        let mut child = Command::new("/usr/bin/python3")
            .arg(root().join("tests/rtsp_server.py"))
            .arg("--port")
            .arg(self.port.to_string())
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting /usr/bin/python3 tests/rtsp_server.py (scripts/test installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(
            line.starts_with("ready"),
            "the RTSP server did not start (said {line:?}); run scripts/test to install what it needs"
        );
        self.child = Some(child);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self, mount: &str) -> String {
        format!("rtsp://127.0.0.1:{}{mount}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}
