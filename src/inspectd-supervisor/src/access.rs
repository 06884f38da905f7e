//! Who may use the supervisor's UI. The UI can pause a line, so:
//! - with `--users-file`, every request needs HTTP Basic credentials from that file, and the
//!   name is what an acknowledgement records;
//! - without it, the UI listens on loopback only, unless `--allow-anonymous-ui` says otherwise;
//! - a state-changing request (POST) from another site is refused either way: a page on the
//!   internet must not be able to submit the command form to `127.0.0.1:8080`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;

/// The operators allowed in: (name, password).
#[derive(Clone, Debug, Default)]
pub struct Users(Vec<(String, String)>);

/// The operator a request was made by (a request extension), when logins are on.
#[derive(Clone, Debug)]
pub struct Operator(pub String);

impl Users {
    /// Reads `name:password` lines (`#` comments and blank lines allowed).
    pub fn load(path: &Path) -> Result<Users> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--users-file {}: cannot read", path.display()))?;
        Users::parse(&text).with_context(|| format!("--users-file {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Users> {
        let mut users: Vec<(String, String)> = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let Some((name, password)) = line.split_once(':') else {
                bail!("line {n}: not `name:password`");
            };
            let name = name.trim();
            if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
                bail!("line {n}: a name is 1 to 64 characters, no control characters");
            }
            if password.len() < 8 {
                bail!("line {n}: {name}'s password is shorter than 8 characters");
            }
            if users.iter().any(|(u, _)| u == name) {
                bail!("line {n}: {name} is listed twice");
            }
            users.push((name.to_string(), password.to_string()));
        }
        if users.is_empty() {
            bail!("no users in it");
        }
        Ok(Users(users))
    }

    /// The name behind an `Authorization: Basic` header, if its password is right.
    pub fn check(&self, authorization: Option<&str>) -> Option<String> {
        let b64 = authorization?.strip_prefix("Basic ")?.trim();
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let (name, password) = raw.split_once(':')?;
        // Every entry is compared in full, whatever matches: the time taken says nothing.
        let mut found = None;
        for (u, p) in &self.0 {
            let ok = same(u.as_bytes(), name.as_bytes()) & same(p.as_bytes(), password.as_bytes());
            if ok {
                found = Some(u.clone());
            }
        }
        found
    }
}

/// Constant-time equality (for equal lengths; the lengths themselves are not secret enough to
/// matter here).
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses a UI that anyone on the network could use.
pub fn check_listen(
    listen: SocketAddr,
    users: Option<&Users>,
    allow_anonymous: bool,
) -> Result<()> {
    if !listen.ip().is_loopback() && users.is_none() && !allow_anonymous {
        bail!(
            "--listen {listen}: the UI can pause lines; on an address other machines reach it \
             needs --users-file (or --allow-anonymous-ui behind a proxy that logs people in)"
        );
    }
    Ok(())
}

/// Whether a request came from another site (a form or script on a page elsewhere).
fn cross_site(h: &HeaderMap) -> bool {
    let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok());
    if let Some(site) = get("sec-fetch-site") {
        return !matches!(site, "same-origin" | "none");
    }
    // Older browsers: the Origin header against the Host the request was sent to.
    match (get("origin"), get("host")) {
        (Some(origin), Some(host)) => {
            let o = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"))
                .unwrap_or(origin);
            !o.eq_ignore_ascii_case(host)
        }
        (Some(_), None) => true,
        _ => false,
    }
}

/// The middleware: logs in (when users are configured) and stops cross-site POSTs.
pub async fn guard(
    State(users): State<Option<Arc<Users>>>,
    mut req: Request,
    next: Next,
) -> Response {
    if let Some(users) = &users {
        let auth = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match users.check(auth) {
            Some(name) => {
                req.extensions_mut().insert(Operator(name));
            }
            None => {
                return (
                    StatusCode::UNAUTHORIZED,
                    [(
                        header::WWW_AUTHENTICATE,
                        "Basic realm=\"inspectd supervisor\", charset=\"UTF-8\"",
                    )],
                    "log in with a name and password from the supervisor's --users-file\n",
                )
                    .into_response();
            }
        }
    }
    if req.method() == Method::POST && cross_site(req.headers()) {
        return (
            StatusCode::FORBIDDEN,
            "refused: a form from another site may not change anything here\n",
        )
            .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(s: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(s)
        )
    }

    #[test]
    fn users_file_lines_and_passwords() {
        let u = Users::parse("# operators\n\nanna:correct horse\nbo:s3cret:with:colons\n").unwrap();
        assert_eq!(
            u.check(Some(&basic("anna:correct horse"))).as_deref(),
            Some("anna")
        );
        assert_eq!(
            u.check(Some(&basic("bo:s3cret:with:colons"))).as_deref(),
            Some("bo")
        );
        for bad in [
            basic("anna:correct horsE"),
            basic("anna:correct hors"),
            basic("bo:correct horse"),
            basic("anna"),
            "Basic ???".into(),
            "Bearer x".into(),
        ] {
            assert_eq!(u.check(Some(&bad)), None, "{bad}");
        }
        assert_eq!(u.check(None), None);
        for (text, err) in [
            ("anna\n", "line 1: not `name:password`"),
            (
                "anna:short\n",
                "line 1: anna's password is shorter than 8 characters",
            ),
            ("a:12345678\na:87654321\n", "line 2: a is listed twice"),
            (":12345678\n", "line 1: a name is 1 to 64 characters"),
            ("# none\n", "no users in it"),
        ] {
            let e = format!("{:#}", Users::parse(text).unwrap_err());
            assert!(e.starts_with(err), "{text:?}: {e}");
        }
    }

    #[test]
    fn anonymous_ui_only_on_loopback_unless_allowed() {
        let users = Users::parse("a:12345678").unwrap();
        let lo: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let lan: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        let v6: SocketAddr = "[::1]:8080".parse().unwrap();
        assert!(check_listen(lo, None, false).is_ok());
        assert!(check_listen(v6, None, false).is_ok());
        assert!(check_listen(lan, Some(&users), false).is_ok());
        assert!(check_listen(lan, None, true).is_ok());
        let e = check_listen(lan, None, false).unwrap_err().to_string();
        assert!(
            e.starts_with("--listen 0.0.0.0:8080:") && e.contains("--users-file"),
            "{e}"
        );
    }

    #[test]
    fn posts_from_other_sites_are_told_apart() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().unwrap());
            }
            m
        };
        assert!(!cross_site(&h(&[])), "curl, scripts: no browser headers");
        assert!(!cross_site(&h(&[("sec-fetch-site", "same-origin")])));
        assert!(cross_site(&h(&[("sec-fetch-site", "cross-site")])));
        assert!(cross_site(&h(&[("sec-fetch-site", "same-site")])));
        assert!(!cross_site(&h(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080")
        ])));
        assert!(cross_site(&h(&[
            ("origin", "https://evil.example"),
            ("host", "127.0.0.1:8080")
        ])));
        assert!(cross_site(&h(&[
            ("origin", "null"),
            ("host", "127.0.0.1:8080")
        ])));
    }
}
