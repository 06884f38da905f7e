//! The supervisor's web UI: server-rendered pages, one small script (ours, served from here) for
//! live updates over server-sent events. Pages are maud templates: every value spliced into one
//! is HTML-escaped by construction (text and attribute values alike). A device name that goes
//! into a URL is also percent-encoded first, with `enc`: that is URL syntax, not HTML.

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
use maud::{html, Markup, DOCTYPE};
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::Registry;
use serde_json::{json, Value};

use super::access::Operator;
use super::ingest::{Reject, KINDS};
use super::store::{self, AlertGroup, AlertRow, Cursor, Event, Filter, FleetRow, VerdictRow};
use super::{Hub, Outgoing};
use inspectd_contract::limits::MAX_PART_ID_BYTES;
use inspectd_contract::timefmt::{now_ms, parse_ms, rfc3339_ms};
use inspectd_contract::{topic, v1};

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
        .route("/fragment/alerts", get(alerts_fragment))
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
        let body = html! { p.error { (self.1) } };
        let page = layout(&self.0.to_string(), "", body, 0);
        (self.0, page).into_response()
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
    f: impl FnOnce(&store::Db) -> anyhow::Result<T> + Send + 'static,
) -> Result<T, WebError> {
    let hub = hub.clone();
    tokio::task::spawn_blocking(move || hub.db.with(f))
        .await
        .map_err(|e| WebError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .map_err(WebError::from)
}

fn layout(title: &str, page: &str, body: Markup, open_alerts: i64) -> Html<String> {
    const NAV: [(&str, &str, &str); 4] = [
        ("fleet", "/", "Fleet"),
        ("live", "/live", "Live"),
        ("alerts", "/alerts", "Alerts"),
        ("history", "/history", "History"),
    ];
    let doc = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width";
                title { (title) " · inspectd supervisor" }
                link rel="stylesheet" href="/static/app.css";
            }
            body data-page=(page) {
                header {
                    span.brand { "inspectd supervisor" }
                    nav {
                        @for (id, href, name) in NAV {
                            a.here[id == page] href=(href) {
                                (name)
                                @if id == "alerts" {
                                    " "
                                    span #alert-count.count.hot[open_alerts > 0] { (open_alerts) }
                                }
                            }
                        }
                    }
                    span #conn.conn title="live updates: not connected" {}
                }
                // Filled from the live stream's `link` event: the supervisor's own broker link.
                div #link-banner.banner role="alert" hidden {}
                main { (body) }
                script src="/static/app.js" {}
            }
        }
    };
    Html(doc.into_string())
}

fn open_alert_count(conn: &store::Db) -> anyhow::Result<i64> {
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

/// An absolute time: `<time datetime=…>` that the page's script shows in the browser's own zone,
/// with the zone named; without script it reads as UTC. A device's own time string is shown as
/// sent when it does not parse.
fn when_ms(ms: i64) -> Markup {
    let utc = rfc3339_ms(ms);
    let text = format!("{} UTC", utc.replace('T', " ").trim_end_matches('Z'));
    html! { time datetime=(utc) { (text) } }
}

fn when(ts: &str) -> Markup {
    match parse_ms(ts) {
        Some(ms) => when_ms(ms),
        None => html! { (ts) },
    }
}

/// A value from the box's latest stats: greyed, with its age, when it is not current.
fn stat_cell(text: String, r: &FleetRow, current: bool, now: i64) -> Markup {
    html! {
        @match (current, r.stats_at) {
            (false, Some(at)) if text != "–" => {
                td.old title={ "last known, from " (rfc3339_ms(at)) } { (text) " " span.age { (ago(at, now)) } }
            }
            _ => { td { (text) } }
        }
    }
}

/// The fleet's rows; `lost` is since when the supervisor has no broker: the boxes' states are
/// then unknown, not theirs to blame.
pub fn fleet_rows(rows: &[FleetRow], now: i64, lost: Option<i64>) -> Markup {
    html! {
        @if rows.is_empty() {
            tr { td colspan="11" class="empty" { "No device has reported yet." } }
        }
        @for r in rows {
            @let state = if lost.is_some() { "unknown" } else { r.state.as_str() };
            @let current = lost.is_none() && r.stats_fresh && r.state == "online";
            tr class={ "device state-" (state) @if r.critical { " critical" } } data-device=(r.device) data-state=(state)
                data-open-alerts=(r.open_alerts) {
                td { a href={ "/device/" (enc(&r.device)) } { (r.device) } }
                td {
                    @if let Some(since) = lost {
                        span.badge.unknown title={ "last known: " (r.state) } { "unknown" }
                        " " span.age { "since " (when_ms(since)) }
                    } @else {
                        span class={ "badge " (r.state) } { (r.state) }
                    }
                    @if r.paused { " " span.badge.paused { "paused" } }
                    @if r.open_alerts > 0 {
                        " " a.alerts href={ "/alerts?device=" (enc(&r.device)) } {
                            span class={ "sev " @if r.critical { "critical" } @else { "warning" } } { (r.open_alerts) " open" }
                        }
                    }
                }
                td title=(rfc3339_ms(r.last_seen)) { (ago(r.last_seen, now)) }
                td {
                    @if r.model.is_empty() { "–" } @else { (r.model) " " (r.model_version) }
                }
                td {
                    // A box with named cameras: each by name, the lost ones marked.
                    @for (i, c) in r.cameras.iter().enumerate() {
                        @if i > 0 { " " }
                        @if c.camera == "lost" {
                            span.badge.bad.camera title=(c.source) { (c.name) " lost" }
                        } @else {
                            span.camera title={ (c.source) ", " (c.trigger) } { (c.name) }
                        }
                    }
                    @if r.cameras.is_empty() {
                        @match r.camera.as_deref() {
                            Some("lost") => { span.badge.bad { "camera lost" } }
                            Some(c) => { (c) }
                            None => { "–" }
                        }
                    }
                }
                (stat_cell(r.fps.map_or("–".into(), |v| format!("{v:.1}")), r, current, now))
                (stat_cell(r.p95_ms.map_or("–".into(), |v| format!("{v:.1} ms")), r, current, now))
                (stat_cell(r.spool_depth.map_or("–".into(), |v| v.to_string()), r, current, now))
                td { (r.inspected) }
                td { (pct(r.defect_rate)) }
                td { (pct(r.suspect_rate)) }
            }
        }
    }
}

/// Since when the supervisor has been without its broker, if it is.
fn link_lost(hub: &Hub) -> Option<i64> {
    let (up, since) = hub.metrics.link();
    (!up).then_some(since)
}

async fn fleet_page(State(hub): Shared) -> Result<Html<String>, WebError> {
    let stale = hub.stale_after_ms;
    let (rows, open) = db(&hub, move |c| {
        Ok((store::fleet(c, now_ms(), stale)?, open_alert_count(c)?))
    })
    .await?;
    let lost = link_lost(&hub);
    let body = html! {
        h1 { "Fleet" }
        p.hint {
            "State from each box's status and last will; " em { "stale" }
            ": online but silent for " (stale / 1000) " s; " em { "stopped" } ": a clean stop. "
            "Boxes needing attention first. Parts (1 h): verdicts stored in the last hour; the rates are their shares. "
            "Greyed values are a box's last known, with their age."
        }
        table.grid {
            thead { tr {
                th { "device" } th { "state" } th { "last seen" } th { "model" } th { "camera" }
                th { "fps" } th { "p95 latency" } th { "spool" } th { "parts (1 h)" }
                th { "defect rate" } th { "suspect rate" }
            } }
            tbody #fleet data-src="/fragment/fleet" { (fleet_rows(&rows, now_ms(), lost)) }
        }
    };
    Ok(layout("Fleet", "fleet", body, open))
}

async fn fleet_fragment(State(hub): Shared) -> Result<Html<String>, WebError> {
    let stale = hub.stale_after_ms;
    let rows = db(&hub, move |c| store::fleet(c, now_ms(), stale)).await?;
    Ok(Html(
        fleet_rows(&rows, now_ms(), link_lost(&hub)).into_string(),
    ))
}

fn picture_url(device: &str, seq: i64) -> String {
    format!("/picture/{}/{seq}", enc(device))
}

/// The picture of a defect or suspect verdict, linked to its page.
fn evidence_link(device: &str, seq: i64) -> Markup {
    let src = picture_url(device, seq);
    html! {
        a href={ "/verdict/" (enc(device)) "/" (seq) } {
            img.evidence loading="lazy" alt={ "evidence " (device) " #" (seq) }
                data-key={ (device) "/" (seq) } data-src=(src) src=(src);
        }
    }
}

/// One verdict row (Live and History); defect and suspect rows carry the picture.
pub fn verdict_row(v: &VerdictRow) -> Markup {
    let u = enc(&v.device);
    html! {
        tr class={ "verdict v-" (v.verdict) } data-device=(v.device) data-seq=(v.seq) {
            td { (when(&v.ts)) }
            td { a href={ "/device/" (u) } { (v.device) } }
            td { a href={ "/verdict/" (u) "/" (v.seq) } { (v.seq) } }
            td { (v.part_id.as_deref().unwrap_or("")) }
            td { span class={ "badge " (v.verdict) } { (v.verdict) } }
            td { (v.label) }
            td.num { (format!("{:.3}", v.confidence)) }
            td { ul.reasons { @for r in &v.reasons { li { (r) } } } }
            td {
                @if v.verdict != "ok" && (v.has_evidence || v.has_map) {
                    (evidence_link(&v.device, v.seq))
                }
            }
        }
    }
}

fn verdict_head() -> Markup {
    html! {
        thead { tr {
            th { "time" } th { "device" } th { "seq" } th { "part" } th { "verdict" } th { "label" }
            th title="the decision's probability: P(defect) for a defect or suspect defect, P(ok) for an ok part" { "P(verdict)" } th { "reasons" } th { "evidence" }
        } }
    }
}

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
        c.snapshot(|t| {
            Ok((
                store::verdicts(t, &f, 50)?,
                open_alert_count(t)?,
                store::cursor(t)?,
            ))
        })
    })
    .await?;
    let body = html! {
        h1 { "Live" }
        p.hint {
            "Newest first"
            @if let Some(d) = &device {
                " for " strong { (d) } " (" a href="/live" { "all devices" } ")"
            }
            "; new verdicts appear as they arrive. Defect and suspect rows show the frame with the heatmap."
        }
        table.grid.live data-device=(device.as_deref().unwrap_or("")) data-cursor=(cursor.id()) {
            (verdict_head())
            tbody #live { @for v in &rows { (verdict_row(v)) } }
        }
    };
    Ok(layout("Live", "live", body, open))
}

/// An alert's row; `who` (the logged-in operator) acknowledges without typing a name.
pub fn alert_row(a: &AlertRow, now: i64, who: Option<&str>) -> Markup {
    html! {
        tr class={ "alert kind-" (a.kind) " sev-" (a.severity) } data-id=(a.id) data-device=(a.device) {
            td { (when(&a.ts)) }
            td { a href={ "/device/" (enc(&a.device)) } { (a.device) } }
            td { span class={ "badge " (a.kind) } { (a.kind) } }
            td { span class={ "sev " (a.severity) } { (a.severity) } }
            td { (a.message) }
            td {
                @if let (Some(seq), true) = (a.seq, a.has_picture) {
                    (evidence_link(&a.device, seq))
                }
            }
            td {
                @match (&a.acked_by, a.acked_at) {
                    (Some(by), Some(at)) => {
                        "acknowledged by " strong { (by) } " at " (when_ms(at)) " (" (ago(at, now)) ")"
                    }
                    _ => {
                        form.ack method="post" action={ "/alerts/" (a.id) "/ack" } {
                            // Logged in, the name is the login's; otherwise it is typed.
                            @match who {
                                Some(name) => { button type="submit" { "Acknowledge as " (name) } }
                                None => {
                                    input name="by" placeholder="your name" required maxlength="64";
                                    button type="submit" { "Acknowledge" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn alert_head() -> Markup {
    html! {
        thead { tr {
            th { "time" } th { "device" } th { "kind" } th { "severity" } th { "message" }
            th { "evidence" } th {}
        } }
    }
}

fn group_head() -> Markup {
    html! {
        thead { tr {
            th { "last / first" } th { "device" } th { "kind" } th { "severity" } th { "message" }
            th { "count" } th { "evidence" } th {}
        } }
    }
}

/// The name field of an acknowledgement: none when logged in (the login's name is used).
fn ack_name(who: Option<&str>) -> Markup {
    html! {
        @if who.is_none() {
            input name="by" placeholder="your name" required maxlength="64";
        }
    }
}

/// One row for repeated open alerts (same device, kind and severity): the newest stands for
/// them, with how many and since when; one click acknowledges them all, or the whole device.
pub fn alert_group_row(g: &AlertGroup, who: Option<&str>) -> Markup {
    let a = &g.newest;
    html! {
        tr class={ "alert group kind-" (a.kind) " sev-" (a.severity) } data-id=(a.id) data-device=(a.device)
            data-kind=(a.kind) data-severity=(a.severity) data-count=(g.count) {
            td {
                (when(&g.last_ts))
                @if g.count > 1 { br; span.first { "since " (when(&g.first_ts)) } }
            }
            td { a href={ "/device/" (enc(&a.device)) } { (a.device) } }
            td { span class={ "badge " (a.kind) } { (a.kind) } }
            td { span class={ "sev " (a.severity) } { (a.severity) } }
            td { (a.message) }
            td.count { (g.count) }
            td {
                @if let (Some(seq), true) = (a.seq, a.has_picture) {
                    (evidence_link(&a.device, seq))
                }
            }
            td {
                // One form, one name: the second button widens the scope to the whole device.
                form.ack method="post" action={ "/alerts/" (a.id) "/ack" } {
                    input type="hidden" name="scope" value="group";
                    (ack_name(who))
                    button type="submit" {
                        "Acknowledge"
                        @if g.count > 1 { " all " (g.count) }
                        @if let Some(n) = who { " as " (n) }
                    }
                    button.ack-device type="submit" name="whole_device" value="1" {
                        "Acknowledge all of " (a.device)
                    }
                }
            }
        }
    }
}

fn alert_filter_of(q: &HashMap<String, String>) -> store::AlertFilter {
    let get = |k: &str| {
        q.get(k)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    store::AlertFilter {
        device: get("device"),
        kind: get("kind"),
        severity: get("severity"),
        page: q
            .get("page")
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
            .min(100_000),
    }
}

/// The query string of a filter, for links and the live fragment.
fn alert_query(f: &store::AlertFilter, page: usize) -> String {
    let mut q = format!("page={page}");
    for (k, v) in [
        ("device", &f.device),
        ("kind", &f.kind),
        ("severity", &f.severity),
    ] {
        if let Some(v) = v {
            let _ = write!(q, "&{k}={}", enc(v));
        }
    }
    q
}

fn alert_groups_rows(groups: &[AlertGroup], who: Option<&str>) -> Markup {
    html! {
        @if groups.is_empty() {
            tr { td colspan="8" class="empty" { "No open alerts." } }
        }
        @for g in groups { (alert_group_row(g, who)) }
    }
}

async fn alerts_page(
    State(hub): Shared,
    who: Who,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Html<String>, WebError> {
    let f = alert_filter_of(&q);
    let ff = f.clone();
    let ((groups, total), done, facets, open, cursor) = db(&hub, move |c| {
        c.snapshot(|t| {
            Ok((
                store::alert_groups(t, &ff)?,
                store::alerts_acked(t, 100)?,
                store::alert_facets(t)?,
                open_alert_count(t)?,
                store::cursor(t)?,
            ))
        })
    })
    .await?;
    let now = now_ms();
    let name = name_of(&who);
    let pages = total.div_ceil(store::GROUPS_PER_PAGE).max(1);
    let select = |label: &str, key: &str, values: &[String], cur: &Option<String>| {
        html! {
            label { (label) " "
                select name=(key) {
                    option value="" { "any" }
                    @for v in values { option value=(v) selected[cur.as_deref() == Some(v.as_str())] { (v) } }
                }
            }
            " "
        }
    };
    let body = html! {
        h1 { "Alerts" }
        p.hint {
            "Open alerts, critical first; repeats of one device, kind and severity are one row with their count. "
            "Acknowledging a row acknowledges every alert it counts."
        }
        form.filters method="get" action="/alerts" {
            (select("device", "device", &facets[0], &f.device))
            (select("kind", "kind", &facets[1], &f.kind))
            (select("severity", "severity", &facets[2], &f.severity))
            button type="submit" { "Filter" }
            " " a href="/alerts" { "clear" }
        }
        table.grid.alerts data-cursor=(cursor.id()) {
            (group_head())
            tbody #alerts data-src={ "/fragment/alerts?" (alert_query(&f, f.page)) } { (alert_groups_rows(&groups, name)) }
        }
        p.pager {
            (total) " groups · page " (f.page + 1) " of " (pages) " "
            @if f.page > 0 { a rel="prev" href={ "/alerts?" (alert_query(&f, f.page - 1)) } { "← newer" } " " }
            @if f.page + 1 < pages { a rel="next" href={ "/alerts?" (alert_query(&f, f.page + 1)) } { "older →" } }
        }
        h2 { "Acknowledged" }
        table.grid.alerts.done {
            (alert_head())
            tbody { @for a in &done { (alert_row(a, now, name)) } }
        }
    };
    Ok(layout("Alerts", "alerts", body, open))
}

async fn alerts_fragment(
    State(hub): Shared,
    who: Who,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Html<String>, WebError> {
    let f = alert_filter_of(&q);
    let (groups, _) = db(&hub, move |c| store::alert_groups(c, &f)).await?;
    Ok(Html(
        alert_groups_rows(&groups, name_of(&who)).into_string(),
    ))
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
    let scope = match f.get("scope").map(String::as_str) {
        _ if f.get("whole_device").is_some_and(|v| v == "1") => store::AckScope::Device,
        None | Some("" | "one") => store::AckScope::One,
        Some("group") => store::AckScope::Group,
        Some("device") => store::AckScope::Device,
        Some(s) => {
            return Err(WebError(
                StatusCode::BAD_REQUEST,
                format!("acknowledge: scope {s:?} is none of one, group, device"),
            ))
        }
    };
    let done = db(&hub, move |c| store::ack_scope(c, id, scope, &by, now_ms())).await?;
    if done == 0 {
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
    let val = |k: &str| q.get(k).map(String::as_str).unwrap_or("");
    let opt = |cur: &Option<String>, v: &str, name: &str| {
        html! { option value=(v) selected[cur.as_deref() == Some(v)] { (name) } }
    };
    let verdicts = [
        ("", "any verdict"),
        ("ok", "ok"),
        ("defect", "defect"),
        ("suspect", "suspect"),
    ];
    let query: String = q
        .iter()
        .filter(|(k, v)| !v.is_empty() && k.as_str() != "limit")
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect::<Vec<_>>()
        .join("&");
    let body = html! {
        h1 { "History" }
        form.filters method="get" action="/history" {
            label { "device " select name="device" {
                (opt(&f.device, "", "all devices"))
                @for d in &devices { (opt(&f.device, &d.device, &d.device)) }
            } }
            label { "verdict " select name="verdict" {
                @for (v, n) in verdicts { (opt(&f.verdict, v, n)) }
            } }
            label { "label " input name="label" value=(val("label")); }
            label { "part id " input name="part_id" value=(val("part_id")); }
            label { "from (UTC) " input type="datetime-local" step="1" name="from" value=(val("from")); }
            label { "to (UTC) " input type="datetime-local" step="1" name="to" value=(val("to")); }
            button type="submit" { "Filter" }
            " "
            a.button href={ "/history.csv?" (query) } { "Export CSV" }
        }
        p.hint {
            (rows.len()) " verdicts shown (newest first, at most " (limit)
            "; the CSV has up to 100000)."
        }
        table.grid {
            (verdict_head())
            tbody #history { @for v in &rows { (verdict_row(v)) } }
        }
    };
    Ok(layout("History", "history", body, open))
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
    // The scores as the contract has them (the stored payload passed the ingest's checks).
    let typed = serde_json::from_value::<v1::Verdict>(raw.clone()).ok();
    // One name for each meaning (older boxes send only `confidence`: shown as such).
    let (p_defect, p_label) = typed
        .as_ref()
        .map_or((None, None), |t| (t.p_defect, t.p_label));
    let mut scores: Vec<(String, f64)> = typed
        .map(|t| t.scores.into_iter().collect())
        .unwrap_or_default();
    scores.sort_by(|a, b| b.1.total_cmp(&a.1));
    let scores: Vec<Markup> = scores
        .iter()
        .map(|(k, v)| html! { tr { td { (k) } td.num { (format!("{v:.4}")) } } })
        .collect();
    let u = enc(&device);
    let pretty = serde_json::to_string_pretty(&raw).unwrap_or_default();
    let body = html! {
        h1 {
            "Verdict " span class={ "badge " (v.verdict) } { (v.verdict) } " " (v.label)
        }
        p.probabilities {
            @match (p_defect, p_label) {
                (Some(d), Some(l)) => {
                    "P(defect) " strong { (format!("{d:.3}")) }
                    " · P(" (v.label) ") " strong { (format!("{l:.3}")) }
                }
                _ => { "confidence " strong { (format!("{:.3}", v.confidence)) } }
            }
        }
        p {
            a href={ "/device/" (u) } { (device) }
            " · seq " (seq) " · " (when(&v.ts)) " · part " (v.part_id.as_deref().unwrap_or("–"))
            " · model " (v.model)
        }
        @if v.verdict == "ok" {
            p.hint.no-evidence { "no defect evidence (an ok verdict carries no picture)" }
        } @else {
            div.pictures {
                figure {
                    img.big.wide[v.has_evidence] alt="evidence" src=(picture_url(&device, seq));
                    figcaption {
                        @if v.has_evidence {
                            "the frame as captured | with the heatmap, "
                            span.roi { "ROI" } " and " span.ignore { "ignore zones" }
                            " (from the device)"
                        }
                        @else { "heatmap rendered from the map (no evidence picture)" }
                    }
                }
                @if v.has_map {
                    figure {
                        img.big alt="heatmap" src={ "/heatmap/" (u) "/" (seq) };
                        figcaption { "class activation map" }
                    }
                }
            }
            (heat_legend())
        }
        h2 { "Reasons" }
        ul.reasons { @for r in &v.reasons { li { (r) } } }
        h2 { "Scores" }
        table.grid.narrow { @for row in &scores { (row) } }
        h2 { "Message" }
        pre { (pretty) }
    };
    Ok(layout(&format!("{device} #{seq}"), "", body, open))
}

/// Heatmaps rendered at once. Each render is bounded (the map decode refuses more than
/// [`inspectd_cam::heatmap::MAX_MAP_SIDE`] a side, the output is 192×192), so this caps the memory
/// renders take together, and keeps them from taking every blocking thread.
const MAX_RENDERS: usize = 2;
static RENDERS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_RENDERS);
/// How long a render waits for its turn before the answer is 503.
const RENDER_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Renders a CAM map (8-bit grayscale PNG at feature resolution) as the devices draw it: heat
/// above the floor over a dark square, contours and the legend bar.
pub fn render_heatmap(map_png: &[u8], side: usize) -> anyhow::Result<Vec<u8>> {
    let map = inspectd_cam::heatmap::map_from_png(map_png)?;
    inspectd_cam::heatmap::png(&inspectd_cam::heatmap::map_image(&map, side as u32))
}

/// The heatmaps' colour key in HTML: the bar drawn into every picture, with its numbers.
fn heat_legend() -> Markup {
    use inspectd_cam::heatmap::{heat_alpha, jet, CONTOURS, FLOOR, LEGEND_BACKGROUND};
    // The same blend as the pictures': jet at its opacity over the legend's dark background.
    let stops: Vec<String> = (0..=10)
        .map(|i| {
            let v = i as f32 / 10.0;
            let a = heat_alpha(v);
            let c: Vec<String> = jet(v)
                .iter()
                .zip(LEGEND_BACKGROUND)
                .map(|(&c, b)| format!("{}", (b as f32 * (1.0 - a) + c as f32 * a).round()))
                .collect();
            format!("rgb({}) {}%", c.join(","), i * 10)
        })
        .collect();
    let levels: Vec<String> = CONTOURS.iter().map(|c| format!("{c}")).collect();
    html! {
        p.legend {
            "map value 0 "
            span.bar style={ "background:linear-gradient(to right," (stops.join(",")) ")" } {}
            " 1 · nothing drawn below " (FLOOR) ", opacity rising with the value; white contours at "
            (levels.join(" and "))
        }
    }
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
    let dir = hub.evidence_dir.clone();
    if let Some(jpg) = db(&hub, move |c| store::evidence(c, &d, seq, dir.as_deref())).await? {
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

fn commands_rows(cmds: &[store::SentCommand], now: i64) -> Markup {
    html! {
        @if cmds.is_empty() {
            tr { td colspan="4" class="empty" { "No command sent from here yet." } }
        }
        @for c in cmds {
            tr.command data-id=(c.id) {
                td {
                    (ago(c.sent_at, now))
                    @if let Some(b) = &c.sent_by { " by " strong { (b) } }
                }
                td { (c.command) }
                td { code { (c.payload) } }
                td.result {
                    @match &c.result {
                        Some((true, d)) => { span.badge.ok { "ok" } " " (d) }
                        Some((false, d)) => { span.badge.bad { "refused" } " " (d) }
                        None => { span.badge.pending { "waiting" } }
                    }
                }
            }
        }
    }
}

async fn device_page(
    State(hub): Shared,
    Path(device): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Html<String>, WebError> {
    let d = device.clone();
    let (found, cmds, recent, open, integrity) = db(&hub, move |c| {
        let f = Filter {
            device: Some(d.clone()),
            ..Default::default()
        };
        let now = now_ms();
        let integrity = Integrity {
            parts_1h: store::verdicts_received(c, &d, now - 3_600_000)?,
            gaps: store::seq_gaps(c, &d)?,
            conflicts: store::device_conflicts(c, &d)?,
            recent_conflicts: store::conflicts(c, &d, 10)?,
        };
        Ok((
            store::device(c, &d)?,
            store::commands(c, &d, 20)?,
            store::verdicts(c, &f, 10)?,
            open_alert_count(c)?,
            integrity,
        ))
    })
    .await?;
    let Some((status, stats)) = found else {
        return Err(not_found(format!("device {device}: never seen")));
    };
    let pretty = |s: Option<String>| {
        s.and_then(|s| serde_json::from_str::<Value>(&s).ok())
            .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
            .unwrap_or_else(|| "–".into())
    };
    let u = enc(&device);
    let body = html! {
        h1 { "Device " (device) }
        @if let Some(e) = q.get("error") { p.error { (e) } }
        form.command method="post" action={ "/device/" (u) "/cmd" } {
            label { "command " select name="command" {
                option value="trigger" { "trigger (inspect one part)" }
                option value="pause" { "pause" }
                option value="resume" { "resume" }
                option value="rebirth" { "rebirth (re-send status)" }
            } }
            label { "part id " input name="part_id" maxlength=(MAX_PART_ID_BYTES) placeholder="for trigger"; }
            label { "camera " input name="camera" maxlength="32" placeholder="trigger: camera name"; }
            button type="submit" { "Send" }
        }
        h2 { "Commands" }
        table.grid {
            thead { tr { th { "sent" } th { "command" } th { "payload" } th { "result" } } }
            tbody #commands data-src={ "/fragment/commands/" (u) } { (commands_rows(&cmds, now_ms())) }
        }
        (integrity_section(&device, &integrity, now_ms()))
        h2 { "Latest verdicts" }
        p {
            a href={ "/live?device=" (u) } { "live" } " · "
            a href={ "/history?device=" (u) } { "history" }
        }
        table.grid {
            (verdict_head())
            tbody { @for v in &recent { (verdict_row(v)) } }
        }
        div.cols {
            div { h2 { "Status" } pre { (pretty(status)) } }
            div { h2 { "Stats" } pre { (pretty(stats)) } }
        }
    };
    Ok(layout(&format!("Device {device}"), "", body, open))
}

/// What the device page says about the completeness and consistency of a box's verdicts.
struct Integrity {
    parts_1h: i64,
    gaps: store::SeqGaps,
    conflicts: i64,
    recent_conflicts: Vec<store::ConflictRow>,
}

/// Verdicts stored in the last hour, seqs never received, and seqs that came with two contents.
fn integrity_section(device: &str, i: &Integrity, now: i64) -> Markup {
    let u = enc(device);
    // What a conflicting payload says (it passed the contract check when it came).
    let said = |raw: &str| -> String {
        let v: Value = serde_json::from_str(raw).unwrap_or_default();
        format!(
            "{} {} ({})",
            v["verdict"].as_str().unwrap_or("?"),
            v["label"].as_str().unwrap_or("?"),
            v["ts"].as_str().unwrap_or("?")
        )
    };
    html! {
        h2 { "Integrity" }
        section #integrity data-parts-1h=(i.parts_1h) data-seq-missing=(i.gaps.missing) data-conflicts=(i.conflicts) {
            p #parts-1h { "Parts (1 h): " strong { (i.parts_1h) } " verdicts stored in the last hour." }
            p #seq-missing {
                "Missing seqs: " strong { (i.gaps.missing) }
                @if let Some(h) = i.gaps.highest { " (highest received " (h) ")" }
                @if let Some(g) = &i.gaps.latest {
                    "; most recent gap: "
                    @if g.from == g.to { "seq " (g.from) } @else { "seq " (g.from) "–" (g.to) }
                    " (" (g.to - g.from + 1) " missing, noticed " span title=(rfc3339_ms(g.noticed)) { (ago(g.noticed, now)) } ")"
                }
                "."
            }
            p.hint {
                "Counted from the first verdict this supervisor stored for the box; a seq that arrives late "
                "(a spool resend) closes its gap. A box that crashed skips up to 1024 seqs it never used."
            }
            p #seq-conflicts {
                "Seq conflicts: " strong { (i.conflicts) }
                " (a seq stored again with other content; the first stays in history, the others are kept here)."
            }
            @if !i.recent_conflicts.is_empty() {
                table.grid.conflicts {
                    thead { tr { th { "seq" } th { "received" } th { "stored" } th { "conflicting" } } }
                    tbody {
                        @for c in &i.recent_conflicts {
                            tr.conflict data-seq=(c.seq) {
                                td { a href={ "/verdict/" (u) "/" (c.seq) } { (c.seq) } }
                                td title=(rfc3339_ms(c.received)) { (ago(c.received, now)) }
                                td {
                                    @match (&c.stored_verdict, &c.stored_label) {
                                        (Some(v), Some(l)) => { (v) " " (l) }
                                        _ => { "–" }
                                    }
                                }
                                td { (said(&c.raw)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

async fn commands_fragment(
    State(hub): Shared,
    Path(device): Path<String>,
) -> Result<Html<String>, WebError> {
    let cmds = db(&hub, move |c| store::commands(c, &device, 20)).await?;
    Ok(Html(commands_rows(&cmds, now_ms()).into_string()))
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
    let plain = || v1::Plain {
        id: Some(id.clone()),
    };
    let cmd = match command {
        "trigger" if part_id.is_empty() => return Ok(back(Some("trigger needs a part id".into()))),
        // The device's limit, in the contract's unit (bytes, not characters).
        "trigger" if part_id.len() > MAX_PART_ID_BYTES => {
            return Ok(back(Some(format!(
                "part id: at most {MAX_PART_ID_BYTES} bytes (UTF-8)"
            ))))
        }
        "trigger" => v1::Command::Trigger(v1::Trigger {
            // A box with several triggered cameras needs the one to inspect with.
            camera: f
                .get("camera")
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty()),
            id: Some(id.clone()),
            part_id: part_id.to_string(),
        }),
        "pause" => v1::Command::Pause(plain()),
        "resume" => v1::Command::Resume(plain()),
        "rebirth" => v1::Command::Rebirth(plain()),
        other => return Ok(back(Some(format!("unknown command {other:?}")))),
    };
    let payload = String::from_utf8(cmd.to_json()).unwrap_or_default();
    let (done, rx) = tokio::sync::oneshot::channel();
    let out = Outgoing {
        topic: topic::topic(&hub.prefix, &device, topic::Leaf::Cmd(cmd.name())),
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

/// `link`: whether the supervisor is connected to the broker, and since when.
fn link_event(hub: &Hub) -> SseEvent {
    let (up, since) = hub.metrics.link();
    SseEvent::default()
        .event("link")
        .data(json!({"up": up, "since": rfc3339_ms(since)}).to_string())
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
            .data(verdict_row(v).into_string()),
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
            .data(alert_row(a, now, who).into_string()),
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
    // First the supervisor's own state: the page shows whether it still hears the broker.
    if tx.send(Ok(link_event(&hub))).await.is_err() {
        return;
    }
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
            Ok(Event::Link) => Some(link_event(&hub)),
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

/// One label and its value, for a family of series.
type Label = [(&'static str, &'static str); 1];

/// A counter family with one series per `(label value, count)`.
fn counters(
    label: &'static str,
    values: impl IntoIterator<Item = (&'static str, u64)>,
) -> Family<Label, Counter> {
    let f = Family::<Label, Counter>::default();
    for (v, n) in values {
        f.get_or_create(&[(label, v)]).inc_by(n);
    }
    f
}

/// A gauge family with one series per `(label value, level)`.
fn gauges(
    label: &'static str,
    values: impl IntoIterator<Item = (&'static str, i64)>,
) -> Family<Label, Gauge> {
    let f = Family::<Label, Gauge>::default();
    for (v, n) in values {
        f.get_or_create(&[(label, v)]).set(n);
    }
    f
}

async fn metrics(State(hub): Shared) -> Result<Response, WebError> {
    let stale = hub.stale_after_ms;
    let h = hub.clone();
    let (fleet, counts, conflicts, missing, db_bytes) = db(&hub, move |c| {
        Ok((
            store::fleet(c, now_ms(), stale)?,
            store::counts(c)?,
            store::conflict_count(c)?,
            store::seq_missing(c)?,
            store::db_bytes(c, &h.db.target)?,
        ))
    })
    .await?;
    let m = &hub.metrics;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    // A registry per scrape, filled from the counters the supervisor keeps anyway. Counter names
    // are registered without `_total`: the encoder appends it.
    let mut r = Registry::default();
    let by_kind = |a: &[std::sync::atomic::AtomicU64]| -> Vec<(&'static str, u64)> {
        KINDS.iter().copied().zip(a.iter().map(load)).collect()
    };
    r.register(
        "inspectd_supervisor_messages",
        "Messages accepted, by kind",
        counters("kind", by_kind(&m.received)),
    );
    r.register(
        "inspectd_supervisor_dropped",
        "Messages dropped, by reason",
        counters(
            "reason",
            Reject::ALL
                .iter()
                .map(|r| (r.name(), load(&m.dropped[*r as usize]))),
        ),
    );
    r.register(
        "inspectd_supervisor_duplicates",
        "Redelivered messages stored once, by kind",
        counters("kind", by_kind(&m.duplicates)),
    );
    r.register(
        "inspectd_supervisor_seq_conflicts",
        "Verdicts whose device and seq were stored with other content (kept as conflicts)",
        ConstCounter::new(load(&m.conflicts)),
    );
    let seq_missing = Family::<[(&'static str, String); 1], Gauge>::default();
    for (device, n) in missing {
        seq_missing.get_or_create(&[("device", device)]).set(n);
    }
    r.register(
        "inspectd_supervisor_seq_missing",
        "Seqs never received, per device (counted from the first verdict stored; late ones close their gap)",
        seq_missing,
    );
    r.register(
        "inspectd_supervisor_messages_per_second",
        "Messages received per second over the last 10 s",
        ConstGauge::new(m.rate()),
    );
    let states = ["online", "stale", "offline", "stopped", "unknown"];
    r.register(
        "inspectd_supervisor_devices",
        "Devices by state",
        gauges(
            "state",
            states.map(|s| (s, fleet.iter().filter(|f| f.state == s).count() as i64)),
        ),
    );
    r.register(
        "inspectd_supervisor_db_bytes",
        "Size of the database (SQLite: the file and its WAL; PostgreSQL: the database)",
        ConstGauge::new(db_bytes),
    );
    r.register(
        "inspectd_supervisor_rows",
        "Rows stored",
        gauges(
            "table",
            ["verdicts", "evidence", "open_alerts", "conflicts"]
                .into_iter()
                .zip(counts.into_iter().chain([conflicts])),
        ),
    );
    r.register(
        "inspectd_supervisor_db_errors",
        "Failed database writes (retried)",
        ConstCounter::new(load(&m.db_errors)),
    );
    r.register(
        "inspectd_supervisor_broker_connected",
        "1 while connected to the broker",
        ConstGauge::new(i64::from(m.connected.load(Ordering::Relaxed))),
    );
    r.register(
        "inspectd_supervisor_broker_connects",
        "Connections made to the broker",
        ConstCounter::new(load(&m.connects)),
    );
    r.register(
        "inspectd_supervisor_uptime_seconds",
        "Seconds since start",
        ConstGauge::new(m.started.elapsed().as_secs()),
    );
    let mut o = String::new();
    prometheus_text::encode(&mut o, &r).map_err(|e| anyhow::anyhow!("metrics: {e}"))?;
    Ok(([(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)], o).into_response())
}

async fn api_fleet(State(hub): Shared) -> Result<Response, WebError> {
    let stale = hub.stale_after_ms;
    let rows = db(&hub, move |c| store::fleet(c, now_ms(), stale)).await?;
    let v: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({"device": r.device, "state": r.state, "last_seen": rfc3339_ms(r.last_seen), "camera": r.camera,
                   "cameras": r.cameras,
                   "paused": r.paused, "model": r.model, "model_version": r.model_version, "fps": r.fps, "p95_ms": r.p95_ms,
                   "spool_depth": r.spool_depth, "stats_at": r.stats_at.map(rfc3339_ms), "stats_fresh": r.stats_fresh,
                   "open_alerts": r.open_alerts, "inspected_1h": r.inspected, "defect_rate": r.defect_rate, "suspect_rate": r.suspect_rate})
        })
        .collect();
    Ok(axum::Json(v).into_response())
}

async fn api_stats(State(hub): Shared) -> Result<Response, WebError> {
    let h = hub.clone();
    let (counts, db_bytes) = db(&hub, move |c| {
        Ok((store::counts(c)?, store::db_bytes(c, &h.db.target)?))
    })
    .await?;
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
        "conflicts": m.conflicts.load(Ordering::Relaxed),
        "stored": m.stored.load(Ordering::Relaxed),
        "rows": {"verdicts": counts[0], "evidence": counts[1], "open_alerts": counts[2]},
        "connected": m.connected.load(Ordering::Relaxed),
        "connects": m.connects.load(Ordering::Relaxed),
        "messages_per_second": m.rate(),
        "db_bytes": db_bytes,
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_neutralises_markup_and_urls_encode_everything_else() {
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
        })
        .into_string();
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
        // Attribute values cannot be closed early either.
        assert!(
            row.contains("data-device=\"&lt;script&gt;d&lt;/script&gt;\""),
            "{row}"
        );
        assert!(
            row.contains("<td>&quot;&gt;&lt;img src=x onerror=alert(1)&gt;</td>"),
            "{row}"
        );
    }

    #[test]
    fn the_fleet_shows_a_boxs_named_cameras_and_marks_the_lost_one() {
        let cam = |name: &str, state: &str| v1::CameraState {
            camera: state.into(),
            name: name.into(),
            source: format!("replay /srv/{name}"),
            trigger: "continuous".into(),
        };
        let row = FleetRow {
            device: "line4".into(),
            state: "online".into(),
            camera: Some("lost".into()),
            cameras: vec![cam("top", "ok"), cam("dock<1>", "lost")],
            ..Default::default()
        };
        let html = fleet_rows(std::slice::from_ref(&row), 0, None).into_string();
        assert!(html.contains(">top</span>"), "{html}");
        assert!(
            html.contains("badge bad camera") && html.contains("dock&lt;1&gt; lost"),
            "{html}"
        );
        assert!(
            !html.contains("camera lost"),
            "named cameras replace the box-wide cell: {html}"
        );
        // A box with one unnamed camera shows its state as before.
        let one = FleetRow {
            cameras: vec![],
            ..row
        };
        assert!(fleet_rows(&[one], 0, None)
            .into_string()
            .contains("camera lost"));
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
    fn a_map_renders_as_heat_over_a_dark_square() {
        let mut t = inspectd_cam::tensor::Tensor::zeros(&[4, 4]);
        t.data_mut()[5] = 1.0;
        let png = inspectd_cam::heatmap::map_png(&t).unwrap();
        let out = render_heatmap(&png, 32).unwrap();
        let img = image::load_from_memory(&out).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (32, 32));
        // Cold corner left dark (nothing drawn below the floor), hot cell (row 1, col 1) red.
        assert_eq!(
            img.get_pixel(31, 0).0,
            inspectd_cam::heatmap::LEGEND_BACKGROUND
        );
        // The hot cell is coloured (red over blue) somewhere inside; its contour lines are white.
        let hot = (8..16)
            .flat_map(|y| (8..16).map(move |x| (x, y)))
            .map(|(x, y)| img.get_pixel(x, y).0)
            .filter(|p| u16::from(p[0]) > u16::from(p[2]) + 40)
            .count();
        assert!(hot > 8, "{hot} red pixels in the hot cell");
        assert!(render_heatmap(b"not a png", 32).is_err());
    }
}
