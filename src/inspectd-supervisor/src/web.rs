//! The supervisor's web UI: server-rendered pages, one small script (ours, served from here) for
//! live updates over server-sent events. Every string that came from a device goes through
//! `esc` (HTML) or `enc` (URL) before it is shown.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Value};

use super::access::Operator;
use super::ingest::{Reject, KINDS};
use super::store::{self, AlertRow, Cursor, Event, Filter, FleetRow, VerdictRow};
use super::{Hub, Outgoing};
use inspectd_contract::timefmt::{now_ms, parse_ms, rfc3339_ms};

const CSS: &str = include_str!("assets/app.css");
const JS: &str = include_str!("assets/app.js");

type Shared = State<Arc<Hub>>;

/// The logged-in operator, when the supervisor has a users file.
type Who = Option<axum::Extension<Operator>>;

fn name_of(who: &Who) -> Option<&str> {
    who.as_ref().map(|axum::Extension(Operator(n))| n.as_str())
}

pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route("/", get(fleet_page))
        .route("/fragment/fleet", get(fleet_fragment))
        .route("/live", get(live_page))
        .route("/alerts", get(alerts_page))
        .route("/alerts/:id/ack", post(ack_alert))
        .route("/history", get(history_page))
        .route("/history.csv", get(history_csv))
        .route("/verdict/:device/:seq", get(verdict_page))
        .route("/picture/:device/:seq", get(picture))
        .route("/heatmap/:device/:seq", get(heatmap))
        .route("/device/:device", get(device_page))
        .route("/device/:device/cmd", post(send_command))
        .route("/fragment/commands/:device", get(commands_fragment))
        .route("/events", get(events))
        .route("/metrics", get(metrics))
        .route("/api/fleet", get(api_fleet))
        .route("/api/stats", get(api_stats))
        .route(
            "/static/app.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css")], CSS) }),
        )
        .route(
            "/static/app.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript")], JS) }),
        )
        .with_state(hub)
}

/// HTML-escapes text for element content and quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            '\r' => o.push_str("&#13;"),
            c => o.push(c),
        }
    }
    o
}

/// Percent-encodes a path segment or query value.
pub fn enc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            o.push(b as char);
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

/// A CSV field: quoted when needed; text that a spreadsheet would run as a formula is
/// prefixed with `'`.
pub fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

struct WebError(StatusCode, String);

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let body = layout(
            &self.0.to_string(),
            "",
            &format!("<p class=\"error\">{}</p>", esc(&self.1)),
            0,
        );
        (self.0, body).into_response()
    }
}

impl From<anyhow::Error> for WebError {
    fn from(e: anyhow::Error) -> Self {
        tracing::error!("web request: {e:#}");
        WebError(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}"))
    }
}

fn not_found(what: String) -> WebError {
    WebError(StatusCode::NOT_FOUND, what)
}

/// Runs a database read off the async workers.
async fn db<T: Send + 'static>(
    hub: &Arc<Hub>,
    f: impl FnOnce(&rusqlite::Connection) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, WebError> {
    let path = hub.db.clone();
    tokio::task::spawn_blocking(move || {
        let conn = store::open_read(&path)?;
        f(&conn)
    })
    .await
    .map_err(|e| WebError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(WebError::from)
}

fn layout(title: &str, page: &str, body: &str, open_alerts: i64) -> Html<String> {
    let nav: String = [
        ("fleet", "/", "Fleet"),
        ("live", "/live", "Live"),
        ("alerts", "/alerts", "Alerts"),
        ("history", "/history", "History"),
    ]
    .iter()
    .map(|(id, href, name)| {
        let badge = if *id == "alerts" {
            format!(
                " <span id=\"alert-count\" class=\"count{}\">{open_alerts}</span>",
                if open_alerts > 0 { " hot" } else { "" }
            )
        } else {
            String::new()
        };
        format!(
            "<a href=\"{href}\"{}>{name}{badge}</a>",
            if *id == page { " class=\"here\"" } else { "" }
        )
    })
    .collect();
    Html(format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
<title>{} · inspectd supervisor</title><link rel=\"stylesheet\" href=\"/static/app.css\"></head>\
<body data-page=\"{page}\"><header><span class=\"brand\">inspectd supervisor</span><nav>{nav}</nav>\
<span id=\"conn\" class=\"conn\" title=\"live updates\"></span></header><main>{body}</main>\
<script src=\"/static/app.js\"></script></body></html>",
        esc(title)
    ))
}

fn open_alert_count(conn: &rusqlite::Connection) -> anyhow::Result<i64> {
    Ok(store::counts(conn)?[2])
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.1} %", v * 100.0))
}

fn ago(ms: i64, now: i64) -> String {
    let s = (now - ms).max(0) / 1000;
    match s {
        0..=59 => format!("{s} s ago"),
        60..=3599 => format!("{} min ago", s / 60),
        3600..=86_399 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

pub fn fleet_rows(rows: &[FleetRow], now: i64) -> String {
    if rows.is_empty() {
        return "<tr><td colspan=\"11\" class=\"empty\">No device has reported yet.</td></tr>"
            .into();
    }
    let mut o = String::new();
    for r in rows {
        let d = esc(&r.device);
        let camera = match r.camera.as_deref() {
            Some("lost") => "<span class=\"badge bad\">camera lost</span>".to_string(),
            Some(c) => esc(c),
            None => "–".into(),
        };
        let _ = write!(
            o,
            "<tr class=\"device state-{state}\" data-device=\"{d}\" data-state=\"{state}\">\
<td><a href=\"/device/{u}\">{d}</a></td><td><span class=\"badge {state}\">{state}</span>{paused}</td>\
<td title=\"{seen}\">{ago}</td><td>{model}</td><td>{camera}</td><td>{fps}</td><td>{p95}</td><td>{spool}</td>\
<td>{n}</td><td>{dr}</td><td>{sr}</td></tr>",
            state = esc(&r.state),
            u = enc(&r.device),
            paused = if r.paused { " <span class=\"badge paused\">paused</span>" } else { "" },
            seen = esc(&rfc3339_ms(r.last_seen)),
            ago = ago(r.last_seen, now),
            model = if r.model.is_empty() { "–".into() } else { format!("{} {}", esc(&r.model), esc(&r.model_version)) },
            fps = r.fps.map_or("–".into(), |v| format!("{v:.1}")),
            p95 = r.p95_ms.map_or("–".into(), |v| format!("{v:.1} ms")),
            spool = r.spool_depth.map_or("–".into(), |v| v.to_string()),
            n = r.inspected,
            dr = pct(r.defect_rate),
            sr = pct(r.suspect_rate),
        );
    }
    o
}

async fn fleet_page(State(hub): Shared) -> Result<Html<String>, WebError> {
    let stale = hub.stale_after_ms;
    let (rows, open) = db(&hub, move |c| {
        Ok((store::fleet(c, now_ms(), stale)?, open_alert_count(c)?))
    })
    .await?;
    let body = format!(
        "<h1>Fleet</h1><p class=\"hint\">State from each box's status and last will; <em>stale</em>: online but silent for {} s. \
Rates over the last hour.</p><table class=\"grid\"><thead><tr><th>device</th><th>state</th><th>last seen</th><th>model</th>\
<th>camera</th><th>fps</th><th>p95 latency</th><th>spool</th><th>parts (1 h)</th><th>defect rate</th><th>suspect rate</th></tr></thead>\
<tbody id=\"fleet\" data-src=\"/fragment/fleet\">{}</tbody></table>",
        stale / 1000,
        fleet_rows(&rows, now_ms())
    );
    Ok(layout("Fleet", "fleet", &body, open))
}

async fn fleet_fragment(State(hub): Shared) -> Result<Html<String>, WebError> {
    let stale = hub.stale_after_ms;
    let rows = db(&hub, move |c| store::fleet(c, now_ms(), stale)).await?;
    Ok(Html(fleet_rows(&rows, now_ms())))
}

fn picture_url(device: &str, seq: i64) -> String {
    format!("/picture/{}/{seq}", enc(device))
}

/// One verdict row (Live and History); defect and suspect rows carry the picture.
pub fn verdict_row(v: &VerdictRow) -> String {
    let d = esc(&v.device);
    let picture = if v.verdict != "ok" && (v.has_evidence || v.has_map) {
        let src = picture_url(&v.device, v.seq);
        format!(
            "<a href=\"/verdict/{u}/{seq}\"><img class=\"evidence\" loading=\"lazy\" alt=\"evidence {d} #{seq}\" data-key=\"{d}/{seq}\" data-src=\"{src}\" src=\"{src}\"></a>",
            u = enc(&v.device),
            seq = v.seq
        )
    } else {
        String::new()
    };
    let reasons: Vec<String> = v
        .reasons
        .iter()
        .map(|r| format!("<li>{}</li>", esc(r)))
        .collect();
    format!(
        "<tr class=\"verdict v-{k}\" data-device=\"{d}\" data-seq=\"{seq}\"><td>{ts}</td><td><a href=\"/device/{u}\">{d}</a></td>\
<td><a href=\"/verdict/{u}/{seq}\">{seq}</a></td><td>{part}</td><td><span class=\"badge {k}\">{k}</span></td><td>{label}</td>\
<td class=\"num\">{conf:.3}</td><td><ul class=\"reasons\">{reasons}</ul></td><td>{picture}</td></tr>",
        k = esc(&v.verdict),
        u = enc(&v.device),
        seq = v.seq,
        ts = esc(&v.ts),
        part = esc(v.part_id.as_deref().unwrap_or("")),
        label = esc(&v.label),
        conf = v.confidence,
        reasons = reasons.concat(),
    )
}

const VERDICT_HEAD: &str = "<thead><tr><th>time</th><th>device</th><th>seq</th><th>part</th><th>verdict</th><th>label</th>\
<th>confidence</th><th>reasons</th><th>evidence</th></tr></thead>";

async fn live_page(
    State(hub): Shared,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Html<String>, WebError> {
    let device = q.get("device").filter(|d| !d.is_empty()).cloned();
    let f = Filter {
        device: device.clone(),
        ..Default::default()
    };
    // One read transaction: the rows and the cursor are the same snapshot.
    let (rows, open, cursor) = db(&hub, move |c| {
        let t = c.unchecked_transaction()?;
        Ok((
            store::verdicts(&t, &f, 50)?,
            open_alert_count(&t)?,
            store::cursor(&t)?,
        ))
    })
    .await?;
    let rows: String = rows.iter().map(verdict_row).collect();
    let scope = match &device {
        Some(d) => format!(
            " for <strong>{}</strong> (<a href=\"/live\">all devices</a>)",
            esc(d)
        ),
        None => String::new(),
    };
    let body = format!(
        "<h1>Live</h1><p class=\"hint\">Newest first{scope}; new verdicts appear as they arrive. \
Defect and suspect rows show the frame with the heatmap.</p>\
<table class=\"grid live\" data-device=\"{dev}\" data-cursor=\"{cur}\">{VERDICT_HEAD}<tbody id=\"live\">{rows}</tbody></table>",
        dev = esc(device.as_deref().unwrap_or("")),
        cur = cursor.id(),
    );
    Ok(layout("Live", "live", &body, open))
}

/// An alert's row; `who` (the logged-in operator) acknowledges without typing a name.
pub fn alert_row(a: &AlertRow, now: i64, who: Option<&str>) -> String {
    let d = esc(&a.device);
    let picture = match a.seq {
        Some(seq) if a.has_picture => format!(
            "<a href=\"/verdict/{u}/{seq}\"><img class=\"evidence\" loading=\"lazy\" alt=\"evidence {d} #{seq}\" data-key=\"{d}/{seq}\" data-src=\"{src}\" src=\"{src}\"></a>",
            u = enc(&a.device),
            src = picture_url(&a.device, seq)
        ),
        _ => String::new(),
    };
    let action = match (&a.acked_by, a.acked_at) {
        (Some(by), Some(at)) => format!(
            "acknowledged by <strong>{}</strong> at {} ({})",
            esc(by),
            esc(&rfc3339_ms(at)),
            ago(at, now)
        ),
        _ => {
            // Logged in, the name is the login's; otherwise it is typed.
            let (field, button) = match who {
                Some(name) => (String::new(), format!("Acknowledge as {}", esc(name))),
                None => (
                    "<input name=\"by\" placeholder=\"your name\" required maxlength=\"64\">"
                        .into(),
                    "Acknowledge".into(),
                ),
            };
            format!(
                "<form method=\"post\" action=\"/alerts/{}/ack\" class=\"ack\">{field}<button type=\"submit\">{button}</button></form>",
                a.id
            )
        }
    };
    format!(
        "<tr class=\"alert kind-{k} sev-{sev}\" data-id=\"{id}\" data-device=\"{d}\"><td>{ts}</td><td><a href=\"/device/{u}\">{d}</a></td>\
<td><span class=\"badge {k}\">{k}</span></td><td>{sev}</td><td>{msg}</td><td>{picture}</td><td>{action}</td></tr>",
        k = esc(&a.kind),
        sev = esc(&a.severity),
        id = a.id,
        u = enc(&a.device),
        ts = esc(&a.ts),
        msg = esc(&a.message),
    )
}

const ALERT_HEAD: &str = "<thead><tr><th>time</th><th>device</th><th>kind</th><th>severity</th><th>message</th><th>evidence</th><th></th></tr></thead>";

async fn alerts_page(State(hub): Shared, who: Who) -> Result<Html<String>, WebError> {
    let ((open, done), cursor) = db(&hub, |c| {
        let t = c.unchecked_transaction()?;
        Ok((store::alerts(&t, 100)?, store::cursor(&t)?))
    })
    .await?;
    let now = now_ms();
    let name = name_of(&who);
    let open_rows: String = open.iter().map(|a| alert_row(a, now, name)).collect();
    let done_rows: String = done.iter().map(|a| alert_row(a, now, name)).collect();
    let body = format!(
        "<h1>Alerts</h1><p class=\"hint\">Open alerts, newest first; suspect predictions are highlighted with their evidence.</p>\
<table class=\"grid alerts\" data-cursor=\"{cur}\">{ALERT_HEAD}<tbody id=\"alerts\">{open_rows}</tbody></table>\
<h2>Acknowledged</h2><table class=\"grid alerts done\">{ALERT_HEAD}<tbody>{done_rows}</tbody></table>",
        cur = cursor.id()
    );
    Ok(layout("Alerts", "alerts", &body, open.len() as i64))
}

async fn ack_alert(
    State(hub): Shared,
    who: Who,
    Path(id): Path<i64>,
    Form(f): Form<HashMap<String, String>>,
) -> Result<Response, WebError> {
    // Logged in, the name is the login's; otherwise the one typed.
    let by = match name_of(&who) {
        Some(n) => n.to_string(),
        None => f
            .get("by")
            .map(|s| s.trim().to_string())
            .unwrap_or_default(),
    };
    if by.is_empty() || by.chars().count() > 64 {
        return Err(WebError(
            StatusCode::BAD_REQUEST,
            "acknowledge: give your name (at most 64 characters)".into(),
        ));
    }
    let done = db(&hub, move |c| store::ack(c, id, &by, now_ms())).await?;
    if !done {
        return Err(not_found(format!("alert {id}: no such open alert")));
    }
    Ok(Redirect::to("/alerts").into_response())
}

fn filter_of(q: &HashMap<String, String>) -> Result<Filter, WebError> {
    let get = |k: &str| {
        q.get(k)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    };
    let time = |k: &str| -> Result<Option<i64>, WebError> {
        match get(k) {
            None => Ok(None),
            Some(s) => parse_ms(&s).map(Some).ok_or_else(|| {
                WebError(
                    StatusCode::BAD_REQUEST,
                    format!("{k} {s:?}: not a time like 2026-11-26T08:00"),
                )
            }),
        }
    };
    let verdict = get("verdict");
    if let Some(v) = &verdict {
        if !matches!(v.as_str(), "ok" | "defect" | "suspect") {
            return Err(WebError(
                StatusCode::BAD_REQUEST,
                format!("verdict {v:?}: one of ok, defect, suspect"),
            ));
        }
    }
    Ok(Filter {
        device: get("device"),
        verdict,
        label: get("label"),
        part_id: get("part_id"),
        from_ms: time("from")?,
        to_ms: time("to")?,
    })
}

async fn history_page(
    State(hub): Shared,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Html<String>, WebError> {
    let f = filter_of(&q)?;
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(200)
        .clamp(1, 5000);
    let stale = hub.stale_after_ms;
    let (rows, devices, open) = {
        let f = f.clone();
        db(&hub, move |c| {
            Ok((
                store::verdicts(c, &f, limit)?,
                store::fleet(c, now_ms(), stale)?,
                open_alert_count(c)?,
            ))
        })
        .await?
    };
    let val = |k: &str| esc(q.get(k).map(String::as_str).unwrap_or(""));
    let opt = |cur: &Option<String>, v: &str, name: &str| {
        format!(
            "<option value=\"{}\"{}>{}</option>",
            esc(v),
            if cur.as_deref() == Some(v) {
                " selected"
            } else {
                ""
            },
            esc(name)
        )
    };
    let mut dev_opts = opt(&f.device, "", "all devices");
    for d in &devices {
        dev_opts.push_str(&opt(&f.device, &d.device, &d.device));
    }
    let verdict_opts: String = [
        ("", "any verdict"),
        ("ok", "ok"),
        ("defect", "defect"),
        ("suspect", "suspect"),
    ]
    .iter()
    .map(|(v, n)| opt(&f.verdict, v, n))
    .collect();
    let query: String = q
        .iter()
        .filter(|(k, v)| !v.is_empty() && k.as_str() != "limit")
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&");
    let rows_html: String = rows.iter().map(verdict_row).collect();
    let body = format!(
        "<h1>History</h1><form class=\"filters\" method=\"get\" action=\"/history\">\
<label>device <select name=\"device\">{dev_opts}</select></label>\
<label>verdict <select name=\"verdict\">{verdict_opts}</select></label>\
<label>label <input name=\"label\" value=\"{label}\"></label><label>part id <input name=\"part_id\" value=\"{part}\"></label>\
<label>from (UTC) <input type=\"datetime-local\" step=\"1\" name=\"from\" value=\"{from}\"></label>\
<label>to (UTC) <input type=\"datetime-local\" step=\"1\" name=\"to\" value=\"{to}\"></label>\
<button type=\"submit\">Filter</button> <a class=\"button\" href=\"/history.csv?{query}\">Export CSV</a></form>\
<p class=\"hint\">{n} verdicts shown (newest first, at most {limit}; the CSV has up to 100000).</p>\
<table class=\"grid\">{VERDICT_HEAD}<tbody id=\"history\">{rows_html}</tbody></table>",
        label = val("label"),
        part = val("part_id"),
        from = val("from"),
        to = val("to"),
        n = rows.len(),
        query = esc(&query),
    );
    Ok(layout("History", "history", &body, open))
}

async fn history_csv(
    State(hub): Shared,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, WebError> {
    let f = filter_of(&q)?;
    let rows = db(&hub, move |c| store::verdicts(c, &f, 100_000)).await?;
    let mut o =
        String::from("device,seq,ts,part_id,verdict,label,confidence,reasons,model,latency_ms\n");
    for v in rows {
        let _ = writeln!(
            o,
            "{},{},{},{},{},{},{:.4},{},{},{}",
            csv_field(&v.device),
            v.seq,
            csv_field(&v.ts),
            csv_field(v.part_id.as_deref().unwrap_or("")),
            csv_field(&v.verdict),
            csv_field(&v.label),
            v.confidence,
            csv_field(&v.reasons.join("; ")),
            csv_field(&v.model),
            v.latency_ms.map_or(String::new(), |l| format!("{l:.2}")),
        );
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"inspectd-history.csv\"",
            ),
        ],
        o,
    )
        .into_response())
}

async fn verdict_page(
    State(hub): Shared,
    Path((device, seq)): Path<(String, i64)>,
) -> Result<Html<String>, WebError> {
    let (dev, s) = (device.clone(), seq);
    let (found, open) = db(&hub, move |c| {
        Ok((store::verdict(c, &dev, s)?, open_alert_count(c)?))
    })
    .await?;
    let Some((v, _, raw)) = found else {
        return Err(not_found(format!("verdict {device} #{seq}: not stored")));
    };
    let raw: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
    let scores: String = raw
        .get("scores")
        .and_then(Value::as_object)
        .map(|m| {
            let mut s: Vec<_> = m
                .iter()
                .filter_map(|(k, v)| v.as_f64().map(|v| (k, v)))
                .collect();
            s.sort_by(|a, b| b.1.total_cmp(&a.1));
            s.iter()
                .map(|(k, v)| format!("<tr><td>{}</td><td class=\"num\">{v:.4}</td></tr>", esc(k)))
                .collect()
        })
        .unwrap_or_default();
    let u = enc(&device);
    let pretty = serde_json::to_string_pretty(&raw).unwrap_or_default();
    let pictures = format!(
        "<figure><img class=\"big\" alt=\"evidence\" src=\"{}\"><figcaption>{}</figcaption></figure>{}",
        picture_url(&device, seq),
        if v.has_evidence { "frame with the heatmap (from the device)" } else { "heatmap rendered from the map (no evidence picture)" },
        if v.has_map { format!("<figure><img class=\"big\" alt=\"heatmap\" src=\"/heatmap/{u}/{seq}\"><figcaption>class activation map</figcaption></figure>") } else { String::new() },
    );
    let body = format!(
        "<h1>Verdict <span class=\"badge {k}\">{k}</span> {label} {conf:.3}</h1>\
<p><a href=\"/device/{u}\">{d}</a> · seq {seq} · {ts} · part {part} · model {model}</p>\
<div class=\"pictures\">{pictures}</div><h2>Reasons</h2><ul class=\"reasons\">{reasons}</ul>\
<h2>Scores</h2><table class=\"grid narrow\">{scores}</table><h2>Message</h2><pre>{pretty}</pre>",
        k = esc(&v.verdict),
        label = esc(&v.label),
        conf = v.confidence,
        d = esc(&device),
        ts = esc(&v.ts),
        part = esc(v.part_id.as_deref().unwrap_or("–")),
        model = esc(&v.model),
        reasons = v
            .reasons
            .iter()
            .map(|r| format!("<li>{}</li>", esc(r)))
            .collect::<String>(),
        pretty = esc(&pretty),
    );
    Ok(layout(&format!("{device} #{seq}"), "", &body, open))
}

/// Heatmaps rendered at once. Each render is bounded (the map decode refuses more than
/// [`inspectd_cam::heatmap::MAX_MAP_SIDE`] a side, the output is 192×192), so this caps the memory
/// renders take together, and keeps them from taking every blocking thread.
const MAX_RENDERS: usize = 2;
static RENDERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_RENDERS);
/// How long a render waits for its turn before the answer is 503.
const RENDER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Renders a CAM map (8-bit grayscale PNG at feature resolution) as a jet-coloured PNG.
pub fn render_heatmap(map_png: &[u8], side: usize) -> anyhow::Result<Vec<u8>> {
    let map = inspectd_cam::heatmap::map_from_png(map_png)?;
    let (h, w) = (map.shape()[0], map.shape()[1]);
    let up = inspectd_cam::heatmap::resize_bilinear(map.data(), h, w, side, side);
    let mut img = image::RgbImage::new(side as u32, side as u32);
    for (p, v) in img.pixels_mut().zip(up) {
        *p = image::Rgb(inspectd_cam::heatmap::jet(v.clamp(0.0, 1.0)));
    }
    inspectd_cam::heatmap::png(&img)
}

fn image_response(content_type: &'static str, bytes: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=60"),
        ],
        bytes,
    )
        .into_response()
}

async fn heatmap_of(hub: &Arc<Hub>, device: String, seq: i64) -> Result<Response, WebError> {
    let (d, s) = (device.clone(), seq);
    let map = db(
        hub,
        move |c| Ok(store::verdict(c, &d, s)?.and_then(|v| v.1)),
    )
    .await?;
    let Some(map) = map else {
        return Err(not_found(format!("verdict {device} #{seq}: no map stored")));
    };
    // Renders queue for a permit rather than fail: a page shows a dozen pictures at once and a
    // 503 would leave holes in it, while a queued request holds only its map (≤ 64 KiB) and a
    // render takes milliseconds. Only a request stuck behind a jam for RENDER_WAIT gets a 503.
    let permit = tokio::time::timeout(RENDER_WAIT, RENDERS.acquire())
        .await
        .map_err(|_| {
            WebError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("verdict {device} #{seq}: too many heatmaps being rendered, try again"),
            )
        })?
        .map_err(|e| WebError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let png = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        render_heatmap(&map, 192)
    })
    .await
    .map_err(|e| WebError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
    .map_err(|e| {
        WebError(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("verdict {device} #{seq}: map: {e:#}"),
        )
    })?;
    Ok(image_response("image/png", png))
}

/// The evidence picture when the device sent one, else the heatmap rendered from the map.
async fn picture(
    State(hub): Shared,
    Path((device, seq)): Path<(String, i64)>,
) -> Result<Response, WebError> {
    let d = device.clone();
    if let Some(jpg) = db(&hub, move |c| store::evidence(c, &d, seq)).await? {
        return Ok(image_response("image/jpeg", jpg));
    }
    heatmap_of(&hub, device, seq).await
}

async fn heatmap(
    State(hub): Shared,
    Path((device, seq)): Path<(String, i64)>,
) -> Result<Response, WebError> {
    heatmap_of(&hub, device, seq).await
}

fn commands_rows(cmds: &[store::SentCommand], now: i64) -> String {
    if cmds.is_empty() {
        return "<tr><td colspan=\"4\" class=\"empty\">No command sent from here yet.</td></tr>"
            .into();
    }
    cmds.iter()
        .map(|c| {
            let result = match &c.result {
                Some((true, d)) => format!("<span class=\"badge ok\">ok</span> {}", esc(d)),
                Some((false, d)) => format!("<span class=\"badge bad\">refused</span> {}", esc(d)),
                None => "<span class=\"badge pending\">waiting</span>".into(),
            };
            format!(
                "<tr class=\"command\" data-id=\"{id}\"><td>{at}{by}</td><td>{cmd}</td><td><code>{payload}</code></td><td class=\"result\">{result}</td></tr>",
                id = esc(&c.id),
                at = ago(c.sent_at, now),
                by = c
                    .sent_by
                    .as_deref()
                    .map(|b| format!(" by <strong>{}</strong>", esc(b)))
                    .unwrap_or_default(),
                cmd = esc(&c.command),
                payload = esc(&c.payload),
            )
        })
        .collect()
}

async fn device_page(
    State(hub): Shared,
    Path(device): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Html<String>, WebError> {
    let d = device.clone();
    let (found, cmds, recent, open) = db(&hub, move |c| {
        let f = Filter {
            device: Some(d.clone()),
            ..Default::default()
        };
        Ok((
            store::device(c, &d)?,
            store::commands(c, &d, 20)?,
            store::verdicts(c, &f, 10)?,
            open_alert_count(c)?,
        ))
    })
    .await?;
    let Some((status, stats)) = found else {
        return Err(not_found(format!("device {device}: never seen")));
    };
    let pretty = |s: Option<String>| {
        s.and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .map(|v| esc(&serde_json::to_string_pretty(&v).unwrap_or_default()))
            .unwrap_or_else(|| "–".into())
    };
    let u = enc(&device);
    let notice = q
        .get("error")
        .map(|e| format!("<p class=\"error\">{}</p>", esc(e)))
        .unwrap_or_default();
    let recent: String = recent.iter().map(verdict_row).collect();
    let body = format!(
        "<h1>Device {d}</h1>{notice}<form class=\"command\" method=\"post\" action=\"/device/{u}/cmd\">\
<label>command <select name=\"command\"><option value=\"trigger\">trigger (inspect one part)</option><option value=\"pause\">pause</option>\
<option value=\"resume\">resume</option><option value=\"rebirth\">rebirth (re-send status)</option></select></label>\
<label>part id <input name=\"part_id\" maxlength=\"128\" placeholder=\"for trigger\"></label><button type=\"submit\">Send</button></form>\
<h2>Commands</h2><table class=\"grid\"><thead><tr><th>sent</th><th>command</th><th>payload</th><th>result</th></tr></thead>\
<tbody id=\"commands\" data-src=\"/fragment/commands/{u}\">{cmds}</tbody></table>\
<h2>Latest verdicts</h2><p><a href=\"/live?device={u}\">live</a> · <a href=\"/history?device={u}\">history</a></p>\
<table class=\"grid\">{VERDICT_HEAD}<tbody>{recent}</tbody></table>\
<div class=\"cols\"><div><h2>Status</h2><pre>{status}</pre></div><div><h2>Stats</h2><pre>{stats}</pre></div></div>",
        d = esc(&device),
        cmds = commands_rows(&cmds, now_ms()),
        status = pretty(status),
        stats = pretty(stats),
    );
    Ok(layout(&format!("Device {device}"), "", &body, open))
}

async fn commands_fragment(
    State(hub): Shared,
    Path(device): Path<String>,
) -> Result<Html<String>, WebError> {
    let cmds = db(&hub, move |c| store::commands(c, &device, 20)).await?;
    Ok(Html(commands_rows(&cmds, now_ms())))
}

async fn send_command(
    State(hub): Shared,
    who: Who,
    Path(device): Path<String>,
    Form(f): Form<HashMap<String, String>>,
) -> Result<Response, WebError> {
    let back = |err: Option<String>| {
        let mut to = format!("/device/{}", enc(&device));
        if let Some(e) = err {
            to.push_str(&format!("?error={}", enc(&e)));
        }
        Redirect::to(&to).into_response()
    };
    let command = f.get("command").map(String::as_str).unwrap_or("");
    let part_id = f.get("part_id").map(|s| s.trim()).unwrap_or("");
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = format!("sup-{}-{}", now_ms(), NEXT.fetch_add(1, Ordering::Relaxed));
    let payload = match command {
        "trigger" if part_id.is_empty() => return Ok(back(Some("trigger needs a part id".into()))),
        "trigger" if part_id.chars().count() > 128 => {
            return Ok(back(Some("part id: at most 128 characters".into())))
        }
        "trigger" => json!({"id": id, "part_id": part_id}),
        "pause" | "resume" | "rebirth" => json!({"id": id}),
        other => return Ok(back(Some(format!("unknown command {other:?}")))),
    }
    .to_string();
    let (done, rx) = tokio::sync::oneshot::channel();
    let out = Outgoing {
        topic: format!("{}/{}/cmd/{command}", hub.prefix, device),
        payload: payload.clone().into_bytes(),
        done,
    };
    let sent = match hub.commands.send(out).await {
        Ok(()) => rx
            .await
            .unwrap_or_else(|_| Err("the broker link stopped".into())),
        Err(_) => Err("the broker link stopped".into()),
    };
    if let Err(e) = sent {
        return Ok(back(Some(format!("{command} not sent: {e}"))));
    }
    let (d, c) = (device.clone(), command.to_string());
    let by = name_of(&who).map(str::to_string);
    db(&hub, move |conn| {
        store::record_command(conn, &id, &d, &c, &payload, by.as_deref(), now_ms())
    })
    .await?;
    Ok(back(None))
}

/// At most this many rows of each kind are sent to catch a view up (Live shows 200).
const CATCH_UP: usize = 200;

type SseItem = Result<SseEvent, Infallible>;

/// Server-sent events: `verdict`, `alert` and `cmd_result` carry rendered (escaped) rows,
/// `evidence` the key of the picture that arrived, `fleet` says the fleet changed. `?after=V.A`
/// (or the `Last-Event-ID` a reconnecting browser sends) makes the stream begin with the rows
/// stored since.
async fn events(
    State(hub): Shared,
    who: Who,
    Query(q): Query<HashMap<String, String>>,
    headers: axum::http::HeaderMap,
) -> Sse<tokio_stream::wrappers::ReceiverStream<SseItem>> {
    let from = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(Cursor::parse)
        .or_else(|| q.get("after").and_then(|s| Cursor::parse(s)));
    // Subscribed before the database is read: a row is either in what is read or still to come
    // (and then skipped if it was read after all).
    let rx = hub.events.subscribe();
    let (tx, out) = tokio::sync::mpsc::channel(64);
    let who = name_of(&who).map(str::to_string);
    tokio::spawn(stream_events(hub, rx, from, who, tx));
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(out)).keep_alive(KeepAlive::default())
}

fn verdict_event(v: &VerdictRow, cur: &mut Cursor) -> Option<SseEvent> {
    if v.id <= cur.verdict {
        return None;
    }
    cur.verdict = v.id;
    Some(
        SseEvent::default()
            .event("verdict")
            .id(cur.id())
            .data(verdict_row(v)),
    )
}

fn alert_event(a: &AlertRow, cur: &mut Cursor, now: i64, who: Option<&str>) -> Option<SseEvent> {
    if a.id <= cur.alert {
        return None;
    }
    cur.alert = a.id;
    Some(
        SseEvent::default()
            .event("alert")
            .id(cur.id())
            .data(alert_row(a, now, who)),
    )
}

/// Sends the rows stored after `cur` (from the database), oldest first; false once the client
/// is gone.
async fn catch_up(
    hub: &Arc<Hub>,
    cur: &mut Cursor,
    who: Option<&str>,
    tx: &tokio::sync::mpsc::Sender<SseItem>,
) -> bool {
    let from = *cur;
    let Ok((now, verdicts, alerts)) = db(hub, move |c| store::since(c, from, CATCH_UP)).await
    else {
        return !tx.is_closed();
    };
    *cur = now;
    let t = now_ms();
    let mut rows: Vec<SseEvent> = verdicts
        .iter()
        .filter_map(|v| verdict_event(v, cur))
        .collect();
    rows.extend(alerts.iter().filter_map(|a| alert_event(a, cur, t, who)));
    for ev in rows {
        if tx.send(Ok(ev)).await.is_err() {
            return false;
        }
    }
    true
}

async fn stream_events(
    hub: Arc<Hub>,
    mut rx: tokio::sync::broadcast::Receiver<Event>,
    from: Option<Cursor>,
    who: Option<String>,
    tx: tokio::sync::mpsc::Sender<SseItem>,
) {
    let who = who.as_deref();
    use tokio::sync::broadcast::error::RecvError;
    let mut cur = match from {
        Some(c) => c,
        // A view without a cursor (the fleet page) is shown everything from now on.
        None => match db(&hub, store::cursor).await {
            Ok(c) => c,
            Err(_) => return,
        },
    };
    if from.is_some() && !catch_up(&hub, &mut cur, who, &tx).await {
        return;
    }
    loop {
        let e = tokio::select! {
            e = rx.recv() => e,
            _ = tx.closed() => return,
        };
        let ev = match e {
            Ok(Event::Verdict(v)) => verdict_event(&v, &mut cur),
            Ok(Event::Alert(a)) => alert_event(&a, &mut cur, now_ms(), who),
            Ok(Event::Evidence { device, seq }) => Some(
                SseEvent::default()
                    .event("evidence")
                    .data(json!({"key": format!("{device}/{seq}")}).to_string()),
            ),
            Ok(Event::CmdResult(c)) => Some(
                SseEvent::default()
                    .event("cmd_result")
                    .data(json!({"device": c.device, "id": c.id}).to_string()),
            ),
            Ok(Event::Fleet) => Some(SseEvent::default().event("fleet").data("1")),
            // This client fell behind the broadcast: the rows come from the database instead,
            // and everything else is refreshed.
            Err(RecvError::Lagged(_)) => {
                let refresh = SseEvent::default().event("cmd_result").data("{}");
                if !catch_up(&hub, &mut cur, who, &tx).await || tx.send(Ok(refresh)).await.is_err()
                {
                    return;
                }
                Some(SseEvent::default().event("fleet").data("1"))
            }
            Err(RecvError::Closed) => return,
        };
        if let Some(ev) = ev {
            if tx.send(Ok(ev)).await.is_err() {
                return;
            }
        }
    }
}

fn db_bytes(path: &std::path::Path) -> u64 {
    ["", "-wal"]
        .iter()
        .filter_map(|ext| std::fs::metadata(format!("{}{ext}", path.display())).ok())
        .map(|m| m.len())
        .sum()
}

async fn metrics(State(hub): Shared) -> Result<Response, WebError> {
    let stale = hub.stale_after_ms;
    let (fleet, counts) = db(&hub, move |c| {
        Ok((store::fleet(c, now_ms(), stale)?, store::counts(c)?))
    })
    .await?;
    let m = &hub.metrics;
    let mut o = String::new();
    let _ = writeln!(o, "# HELP inspectd_supervisor_messages_total Messages accepted, by kind.\n# TYPE inspectd_supervisor_messages_total counter");
    for (i, k) in KINDS.iter().enumerate() {
        let _ = writeln!(
            o,
            "inspectd_supervisor_messages_total{{kind=\"{k}\"}} {}",
            m.received[i].load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(o, "# HELP inspectd_supervisor_dropped_total Messages dropped, by reason.\n# TYPE inspectd_supervisor_dropped_total counter");
    for r in Reject::ALL {
        let _ = writeln!(
            o,
            "inspectd_supervisor_dropped_total{{reason=\"{}\"}} {}",
            r.name(),
            m.dropped[r as usize].load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(o, "# HELP inspectd_supervisor_duplicates_total Redelivered messages stored once, by kind.\n# TYPE inspectd_supervisor_duplicates_total counter");
    for (i, k) in KINDS.iter().enumerate() {
        let _ = writeln!(
            o,
            "inspectd_supervisor_duplicates_total{{kind=\"{k}\"}} {}",
            m.duplicates[i].load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(o, "# HELP inspectd_supervisor_messages_per_second Messages received per second over the last 10 s.\n# TYPE inspectd_supervisor_messages_per_second gauge\ninspectd_supervisor_messages_per_second {:.2}", m.rate());
    let _ = writeln!(o, "# HELP inspectd_supervisor_devices Devices by state.\n# TYPE inspectd_supervisor_devices gauge");
    for s in ["online", "stale", "offline", "stopped", "unknown"] {
        let _ = writeln!(
            o,
            "inspectd_supervisor_devices{{state=\"{s}\"}} {}",
            fleet.iter().filter(|f| f.state == s).count()
        );
    }
    let _ = writeln!(o, "# HELP inspectd_supervisor_db_bytes Size of the database and its WAL.\n# TYPE inspectd_supervisor_db_bytes gauge\ninspectd_supervisor_db_bytes {}", db_bytes(&hub.db));
    let _ = writeln!(
        o,
        "# HELP inspectd_supervisor_rows Rows stored.\n# TYPE inspectd_supervisor_rows gauge"
    );
    for (i, t) in ["verdicts", "evidence", "open_alerts"].iter().enumerate() {
        let _ = writeln!(o, "inspectd_supervisor_rows{{table=\"{t}\"}} {}", counts[i]);
    }
    let _ = writeln!(o, "# HELP inspectd_supervisor_db_errors_total Failed database writes (retried).\n# TYPE inspectd_supervisor_db_errors_total counter\ninspectd_supervisor_db_errors_total {}", m.db_errors.load(Ordering::Relaxed));
    let _ = writeln!(o, "# HELP inspectd_supervisor_broker_connected 1 while connected to the broker.\n# TYPE inspectd_supervisor_broker_connected gauge\ninspectd_supervisor_broker_connected {}", u8::from(m.connected.load(Ordering::Relaxed)));
    let _ = writeln!(o, "# HELP inspectd_supervisor_broker_connects_total Connections made to the broker.\n# TYPE inspectd_supervisor_broker_connects_total counter\ninspectd_supervisor_broker_connects_total {}", m.connects.load(Ordering::Relaxed));
    let _ = writeln!(o, "# HELP inspectd_supervisor_uptime_seconds Seconds since start.\n# TYPE inspectd_supervisor_uptime_seconds gauge\ninspectd_supervisor_uptime_seconds {:.0}", m.started.elapsed().as_secs_f64());
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], o).into_response())
}

async fn api_fleet(State(hub): Shared) -> Result<Response, WebError> {
    let stale = hub.stale_after_ms;
    let rows = db(&hub, move |c| store::fleet(c, now_ms(), stale)).await?;
    let v: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"device": r.device, "state": r.state, "last_seen": rfc3339_ms(r.last_seen), "camera": r.camera,
                   "paused": r.paused, "model": r.model, "model_version": r.model_version, "fps": r.fps, "p95_ms": r.p95_ms,
                   "spool_depth": r.spool_depth, "inspected_1h": r.inspected, "defect_rate": r.defect_rate, "suspect_rate": r.suspect_rate})
        })
        .collect();
    Ok(axum::Json(v).into_response())
}

async fn api_stats(State(hub): Shared) -> Result<Response, WebError> {
    let counts = db(&hub, store::counts).await?;
    let m = &hub.metrics;
    let by = |a: &[std::sync::atomic::AtomicU64], names: &[&str]| -> Value {
        names
            .iter()
            .zip(a)
            .map(|(k, c)| ((*k).to_string(), json!(c.load(Ordering::Relaxed))))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let reasons: Vec<&str> = Reject::ALL.iter().map(|r| r.name()).collect();
    Ok(axum::Json(json!({
        "received": by(&m.received, &KINDS),
        "dropped": by(&m.dropped, &reasons),
        "duplicates": by(&m.duplicates, &KINDS),
        "stored": m.stored.load(Ordering::Relaxed),
        "rows": {"verdicts": counts[0], "evidence": counts[1], "open_alerts": counts[2]},
        "connected": m.connected.load(Ordering::Relaxed),
        "connects": m.connects.load(Ordering::Relaxed),
        "messages_per_second": m.rate(),
        "db_bytes": db_bytes(&hub.db),
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_neutralises_markup_and_urls_encode_everything_else() {
        assert_eq!(
            esc("<script>alert('x')</script>&\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;"
        );
        assert_eq!(enc("a b/<c>"), "a%20b%2F%3Cc%3E");
        let row = verdict_row(&VerdictRow {
            id: 1,
            device: "<script>d</script>".into(),
            seq: 3,
            ts: "t".into(),
            part_id: Some("\"><img src=x onerror=alert(1)>".into()),
            verdict: "suspect".into(),
            label: "<b>label</b>".into(),
            confidence: 0.5,
            reasons: vec!["<i>r</i>".into()],
            model: "m".into(),
            latency_ms: None,
            has_map: true,
            has_evidence: false,
        });
        assert!(
            !row.contains("<script>")
                && !row.contains("<b>")
                && !row.contains("<i>")
                && !row.contains("<img src=x"),
            "{row}"
        );
        assert!(
            row.contains("/picture/%3Cscript%3Ed%3C%2Fscript%3E/3"),
            "{row}"
        );
    }

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_field("line\nbreak"), "\"line\nbreak\"");
    }

    #[test]
    fn a_map_renders_as_a_jet_heatmap() {
        let mut t = inspectd_cam::tensor::Tensor::zeros(&[4, 4]);
        t.data_mut()[5] = 1.0;
        let png = inspectd_cam::heatmap::map_png(&t).unwrap();
        let out = render_heatmap(&png, 32).unwrap();
        let img = image::load_from_memory(&out).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (32, 32));
        // Cold corner blue, hot cell (row 1, col 1) red.
        assert_eq!(img.get_pixel(31, 31).0, inspectd_cam::heatmap::jet(0.0));
        let hot = img.get_pixel(12, 12).0;
        assert!(hot[0] > hot[2], "{hot:?}");
        assert!(render_heatmap(b"not a png", 32).is_err());
    }
}
