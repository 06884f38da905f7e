//! The supervisor's history, in SQLite (WAL; one box or the demo) or PostgreSQL (several
//! supervisors on one database): verdicts de-duplicated by (device, seq), evidence, alerts with
//! who acknowledged them, command results, device status and stats samples. One writer thread
//! per supervisor applies messages in batches, one transaction per batch; web requests read
//! through their own connections and write only acknowledgements and sent commands.
//!
//! Split by concern: `db` (one connection to either backend, the SQL both read), `schema`
//! (SQLite's tables, open), `pg` (PostgreSQL's URL, TLS and migrations), `apply` (the writer
//! and retention), `fleet`, `queries` (the pages' reads and their few writes), `cursor` (live
//! views).

mod apply;
mod cursor;
mod db;
mod fleet;
mod pg;
mod queries;
mod schema;

pub use apply::*;
pub use cursor::*;
pub use db::*;
pub use fleet::*;
pub use pg::{is_url, pgpass_lookup, PgTarget, TlsMode};
pub use queries::*;
pub use schema::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::classify;
    use rusqlite::Connection;
    use serde_json::{json, Value};

    /// Each test runs on both backends: a fresh SQLite file, and a fresh database on this test
    /// process's PostgreSQL cluster (`crate::pgtest`).
    #[derive(Clone, Copy)]
    enum Backend {
        Sqlite,
        Postgres,
    }

    fn db(b: Backend, name: &str) -> Db {
        match b {
            Backend::Sqlite => {
                let p = std::env::temp_dir().join(format!(
                    "inspectd-store-{}-{name}.sqlite",
                    std::process::id()
                ));
                for ext in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{ext}", p.display()));
                }
                open(&Target::Sqlite(p)).unwrap()
            }
            Backend::Postgres => {
                let url = crate::pgtest::cluster().create_db(&format!("store_{name}"));
                open(&Target::parse(std::path::Path::new(&url), None, false).unwrap()).unwrap()
            }
        }
    }

    /// `#[test]`s of both backends for each test function given.
    macro_rules! on_both {
        ($($name:ident),* $(,)?) => {
            mod sqlite {
                $( #[test] fn $name() { super::$name(super::Backend::Sqlite) } )*
            }
            mod postgres {
                $( #[test] fn $name() { super::$name(super::Backend::Postgres) } )*
            }
        };
    }

    on_both!(
        a_redelivered_verdict_is_stored_once,
        a_live_view_catches_up_from_its_cursor,
        history_filters_combine,
        retention_keeps_the_newest_and_open_alerts,
        repeated_alerts_group_page_and_acknowledge_by_group_or_device,
        a_lost_box_raises_one_critical_alert_and_a_clean_stop_none,
        a_seq_stored_again_with_other_content_is_kept_as_a_conflict_and_alerted,
        seq_gaps_count_what_is_missing_and_close_when_it_arrives_late,
        statuses_alternating_between_two_instances_raise_one_duplicate_device_alert,
        parts_in_the_last_hour_are_the_verdicts_stored_in_it,
        a_fleet_row_has_the_latest_status_and_stats_and_older_statuses_do_not_win,
        hostile_strings_are_stored_and_read_back,
    );

    fn item(topic: &str, v: Value) -> Item {
        Item {
            msg: classify("inspect", topic, v.to_string().as_bytes())
                .unwrap()
                .unwrap(),
            retained: false,
        }
    }

    fn verdict(dev: &str, seq: u64, kind: &str, ts: &str) -> Item {
        let reasons = if kind == "suspect" {
            json!(["marginal"])
        } else {
            json!([])
        };
        item(
            &format!("inspect/{dev}/verdict"),
            json!({"schema": "inspect.verdict/1", "device": dev, "seq": seq, "ts": ts, "verdict": kind,
                   "label": if kind == "ok" { "ok" } else { "scratch" }, "confidence": 0.9, "reasons": reasons,
                   "part_id": format!("P{seq}")}),
        )
    }

    fn store(conn: &mut Db, items: &[Item], now: i64) -> Applied {
        conn.write(|tx| apply(tx, items, now)).unwrap()
    }

    fn a_redelivered_verdict_is_stored_once(b: Backend) {
        let mut c = db(b, "dup");
        let a = store(
            &mut c,
            &[
                verdict("a", 1, "ok", "2026-11-26T10:00:00Z"),
                verdict("a", 1, "ok", "2026-11-26T10:00:00Z"),
                verdict("b", 1, "ok", "2026-11-26T10:00:00Z"),
            ],
            1000,
        );
        assert_eq!((a.stored, a.duplicates.clone()), (2, vec!["verdict"]));
        // Other content under a stored seq is no redelivery: kept aside as a conflict.
        let a = store(
            &mut c,
            &[verdict("a", 1, "defect", "2026-11-26T10:00:00Z")],
            2000,
        );
        assert_eq!((a.conflicts, a.duplicates.len()), (1, 0));
        assert_eq!(counts(&c).unwrap()[0], 2);
        assert_eq!(
            verdict_of(&c, "a", 1).verdict,
            "ok",
            "the first delivery stays"
        );
    }

    fn verdict_of(c: &Db, d: &str, s: i64) -> VerdictRow {
        super::verdict(c, d, s).unwrap().unwrap().0
    }

    #[test]
    fn a_database_from_before_logins_gains_who_sent_each_command() {
        let p =
            std::env::temp_dir().join(format!("inspectd-store-{}-old.sqlite", std::process::id()));
        let _ = std::fs::remove_file(&p);
        let old = Connection::open(&p).unwrap();
        old.execute_batch(
            "CREATE TABLE commands (id TEXT PRIMARY KEY, device TEXT NOT NULL, command TEXT NOT NULL,
             payload TEXT NOT NULL, sent_at INTEGER NOT NULL);
             INSERT INTO commands VALUES ('c1', 'a', 'pause', '{}', 1000);",
        )
        .unwrap();
        drop(old);
        let c = Db::Sqlite(open_sqlite(&p).unwrap());
        record_command(&c, "c2", "a", "resume", "{}", Some("anna"), 2000).unwrap();
        let sent = commands(&c, "a", 10).unwrap();
        let by: Vec<(&str, Option<&str>)> = sent
            .iter()
            .map(|s| (s.id.as_str(), s.sent_by.as_deref()))
            .collect();
        assert_eq!(by, [("c2", Some("anna")), ("c1", None)]);
        drop(c);
        open_sqlite(&p).unwrap(); // and opens again
    }

    fn a_live_view_catches_up_from_its_cursor(b: Backend) {
        let mut c = db(b, "cursor");
        let t = "2026-11-26T10:00:00Z";
        assert_eq!(cursor(&c).unwrap(), Cursor::default());
        store(
            &mut c,
            &[verdict("a", 1, "ok", t), verdict("b", 1, "ok", t)],
            1000,
        );
        let Cursor {
            verdict: v0,
            alert: a0,
        } = cursor(&c).unwrap();
        assert_eq!(a0, 0);
        let alert = |ts: &str| {
            item(
                "inspect/b/alert",
                json!({"schema": "inspect.alert/1", "ts": ts, "kind": "suspect", "message": "m", "seq": 2}),
            )
        };
        let applied = store(
            &mut c,
            &[
                verdict("a", 2, "ok", t),
                verdict("b", 2, "suspect", t),
                verdict("a", 2, "ok", t),
                alert("t1"),
            ],
            2000,
        );
        let ids: Vec<i64> = applied
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Verdict(v) => Some(v.id),
                _ => None,
            })
            .collect();
        let after = verdicts_after(&c, v0, 10).unwrap();
        assert_eq!(
            after
                .iter()
                .map(|v| (v.device.as_str(), v.seq))
                .collect::<Vec<_>>(),
            [("a", 2), ("b", 2)],
            "oldest first, the duplicate not at all"
        );
        assert_eq!(after.iter().map(|v| v.id).collect::<Vec<_>>(), ids);
        assert_eq!(
            verdicts_after(&c, 0, 1).unwrap()[0].seq,
            2,
            "the newest when limited"
        );
        let Cursor {
            verdict: v1,
            alert: a1,
        } = cursor(&c).unwrap();
        assert_eq!(v1, ids[1]);
        assert!(verdicts_after(&c, v1, 10).unwrap().is_empty());
        let alerts = alerts_after(&c, a0, 10).unwrap();
        assert_eq!((alerts.len(), alerts[0].id), (1, a1));
        assert!(alerts_after(&c, a1, 10).unwrap().is_empty());
        // A cursor from another, longer database starts over, part by part.
        let (from, v, a) = since(
            &c,
            Cursor {
                verdict: v1 + 5,
                alert: a1,
            },
            10,
        )
        .unwrap();
        assert_eq!((from.verdict, from.alert, v.len(), a.len()), (0, a1, 4, 0));
    }

    /// What a box (or whoever publishes under its name) may send: markup, SQL, placeholders of
    /// both dialects, right-to-left overrides, a 4096-character alert of multi-byte characters
    /// (over a B-tree entry's size), and a NUL (which PostgreSQL's text cannot hold).
    fn hostile_strings_are_stored_and_read_back(b: Backend) {
        let mut c = db(b, "hostile");
        let dev = "<script>x<b onclick=y>'; DROP TABLE verdicts; --?1$1\u{202e}";
        let label = "lab'el\"?2 $2 %s \\ 𝄞";
        let long = "é".repeat(4096);
        let v = item(
            &format!("inspect/{dev}/verdict"),
            json!({"schema": "inspect.verdict/1", "device": dev, "seq": 1, "ts": "2026-11-26T10:00:00Z",
                   "verdict": "defect", "label": label, "confidence": 0.9, "reasons": [],
                   "part_id": "P\u{0}1"}),
        );
        let a = item(
            &format!("inspect/{dev}/alert"),
            json!({"schema": "inspect.alert/1", "ts": "t1", "kind": "k'?", "message": long, "seq": 1}),
        );
        let applied = store(&mut c, &[v, a], 1000);
        assert_eq!(applied.stored, 2);
        let got = verdict_of(&c, dev, 1);
        assert_eq!((got.device.as_str(), got.label.as_str()), (dev, label));
        let part = got.part_id.unwrap();
        match b {
            Backend::Sqlite => assert_eq!(part, "P\u{0}1"),
            Backend::Postgres => assert_eq!(part, "P\u{fffd}1", "U+0000 kept as U+FFFD"),
        }
        let rows = verdicts(
            &c,
            &Filter {
                device: Some(dev.into()),
                label: Some(label.into()),
                ..Default::default()
            },
            10,
        )
        .unwrap();
        assert_eq!(rows.len(), 1);
        let al = open_alerts_of(&c, dev, "k'?");
        assert_eq!((al.len(), al[0].message.chars().count()), (1, 4096));
        // The same long alert again is a duplicate, not an error.
        let again = item(
            &format!("inspect/{dev}/alert"),
            json!({"schema": "inspect.alert/1", "ts": "t1", "kind": "k'?", "message": "é".repeat(4096), "seq": 1}),
        );
        assert_eq!(store(&mut c, &[again], 2000).duplicates, vec!["alert"]);
    }

    #[test]
    fn on_postgresql_evidence_goes_to_files_with_its_path_in_the_row_and_retention_deletes_both() {
        let mut c = db(Backend::Postgres, "evidence_dir");
        let dir = std::env::temp_dir().join(format!("inspectd-evidence-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let opt = ApplyOptions {
            evidence_dir: Some(dir.clone()),
            ..Default::default()
        };
        // A device id that would climb out of the folder if used as a path as it is.
        let dev = ".. a%b";
        let jpeg = |tag: u8| vec![0xFF, 0xD8, 0xFF, 0xE0, tag, 1, 2, 3];
        let ev = |tag: u8| Item {
            msg: classify("inspect", &format!("inspect/{dev}/evidence/1"), &jpeg(tag))
                .unwrap()
                .unwrap(),
            retained: false,
        };
        let store_with = |c: &mut Db, items: &[Item], now: i64| {
            c.write(|tx| apply_with(tx, items, now, &opt)).unwrap()
        };
        let a = store_with(
            &mut c,
            &[verdict(dev, 1, "defect", "2026-11-26T10:00:00Z"), ev(7)],
            1000,
        );
        assert_eq!(a.stored, 2);
        let (in_row, path): (bool, String) = c
            .query_row(
                "SELECT jpeg IS NOT NULL, path FROM evidence WHERE device = ?1 AND seq = 1",
                params![dev],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap()
            .unwrap();
        assert_eq!((in_row, path.as_str()), (false, "%2E%2E%20a%25b/1.jpg"));
        let file = dir.join(&path);
        assert_eq!(std::fs::read(&file).unwrap(), jpeg(7));
        assert_eq!(evidence(&c, dev, 1, Some(&dir)).unwrap(), Some(jpeg(7)));
        assert!(verdict_of(&c, dev, 1).has_evidence);
        assert_eq!(counts(&c).unwrap()[1], 1);
        // Again (a redelivery): a duplicate, the file as it was.
        assert_eq!(
            store_with(&mut c, &[ev(8)], 2000).duplicates,
            vec!["evidence"]
        );
        assert_eq!(std::fs::read(&file).unwrap(), jpeg(7));
        // Retention: the verdict goes, its evidence row and file with it.
        let n = enforce_with(
            &c,
            Retention {
                days: 1,
                max_verdicts: 100,
            },
            1000 + 2 * 86_400_000,
            Some(&dir),
        )
        .unwrap();
        assert_eq!(n, 1);
        assert_eq!(counts(&c).unwrap()[1], 0);
        assert!(!file.exists() && !file.parent().unwrap().exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A share group: every instance receives every status (a plain subscription) and may store
    /// it late, after newer ones another instance stored.
    #[test]
    fn on_postgresql_with_a_share_group_each_status_is_applied_once_whoever_stores_it() {
        let c = db(Backend::Postgres, "statuses_once");
        let opt = ApplyOptions {
            statuses_once: true,
            ..Default::default()
        };
        let by = |items: &[Item], now: i64| c.write(|tx| apply_with(tx, items, now, &opt)).unwrap();
        let online = || {
            status(
                "a",
                "online",
                json!({"instance": "i1", "ts": "2026-11-26T10:00:09Z"}),
            )
        };
        let will = || {
            status(
                "a",
                "offline",
                json!({"instance": "i1", "ts": "2026-11-26T10:00:09Z"}),
            )
        };
        // Instance A stores online then the last will; B stores its copies late.
        assert_eq!(by(&[online()], 1000).stored, 1);
        assert_eq!(by(&[will()], 2000).stored, 1);
        let b = by(&[online(), will()], 3000);
        assert_eq!((b.stored, b.duplicates.len()), (0, 2));
        assert_eq!(fleet(&c, 3000, 30_000).unwrap()[0].state, "offline");
        assert_eq!(offline_alerts(&c, "a"), 1);
    }

    #[test]
    fn cursors_parse_from_their_ids_only() {
        let c = Cursor {
            verdict: 12,
            alert: 3,
        };
        assert_eq!(Cursor::parse(&c.id()), Some(c));
        for bad in ["", "12", "12.", ".3", "-1.3", "12.x", "1.2.3"] {
            assert_eq!(Cursor::parse(bad), None, "{bad}");
        }
    }

    fn history_filters_combine(b: Backend) {
        let mut c = db(b, "filter");
        let items: Vec<Item> = (0..10)
            .map(|i| {
                verdict(
                    if i % 2 == 0 { "a" } else { "b" },
                    i,
                    if i % 3 == 0 { "defect" } else { "ok" },
                    &format!("2026-11-26T10:00:{i:02}Z"),
                )
            })
            .collect();
        store(&mut c, &items, 1);
        let f = |f: Filter| {
            verdicts(&c, &f, 100)
                .unwrap()
                .iter()
                .map(|v| v.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(f(Filter::default()), (0..10).rev().collect::<Vec<_>>());
        assert_eq!(
            f(Filter {
                device: Some("a".into()),
                verdict: Some("defect".into()),
                ..Default::default()
            }),
            vec![6, 0]
        );
        assert_eq!(
            f(Filter {
                label: Some("scratch".into()),
                ..Default::default()
            }),
            vec![9, 6, 3, 0]
        );
        assert_eq!(
            f(Filter {
                part_id: Some("P4".into()),
                ..Default::default()
            }),
            vec![4]
        );
        let t = |s| inspectd_contract::timefmt::parse_ms(s);
        assert_eq!(
            f(Filter {
                from_ms: t("2026-11-26T10:00:03Z"),
                to_ms: t("2026-11-26T10:00:06Z"),
                ..Default::default()
            }),
            vec![5, 4, 3]
        );
    }

    fn retention_keeps_the_newest_and_open_alerts(b: Backend) {
        let mut c = db(b, "retention");
        let items: Vec<Item> = (0..20)
            .map(|i| verdict("a", i, "ok", "2026-11-26T10:00:00Z"))
            .collect();
        store(&mut c, &items, 10 * 86_400_000);
        store(
            &mut c,
            &[
                item(
                    "inspect/a/alert",
                    json!({"schema": "inspect.alert/1", "ts": "t1", "kind": "camera_lost", "message": "m"}),
                ),
                item(
                    "inspect/a/alert",
                    json!({"schema": "inspect.alert/1", "ts": "t2", "kind": "suspect", "message": "m"}),
                ),
            ],
            0,
        );
        let (open, _) = alerts(&c, 10).unwrap();
        assert!(ack(&c, open[0].id, "ops", 1).unwrap());
        assert!(!ack(&c, open[0].id, "ops", 2).unwrap(), "acknowledged once");
        let n = enforce(
            &c,
            Retention {
                days: 5,
                max_verdicts: 15,
            },
            12 * 86_400_000,
        )
        .unwrap();
        assert_eq!(n, 5);
        let left: Vec<i64> = verdicts(&c, &Filter::default(), 100)
            .unwrap()
            .iter()
            .map(|v| v.seq)
            .collect();
        assert_eq!(left.len(), 15);
        assert!(!left.contains(&4) && left.contains(&5));
        let (open, acked) = alerts(&c, 10).unwrap();
        assert_eq!(
            (open.len(), acked.len()),
            (1, 0),
            "the open alert is kept, the old acknowledged one goes"
        );
    }

    fn status(dev: &str, state: &str, extra: Value) -> Item {
        let mut v =
            json!({"schema": "inspect.status/1", "state": state, "ts": "2026-11-26T10:00:00Z"});
        for (k, x) in extra.as_object().unwrap() {
            v[k] = x.clone();
        }
        item(&format!("inspect/{dev}/status"), v)
    }

    fn offline_alerts(c: &Db, dev: &str) -> i64 {
        alert_groups(
            c,
            &AlertFilter {
                device: Some(dev.into()),
                kind: Some(DEVICE_OFFLINE.into()),
                severity: Some("critical".into()),
                page: 0,
            },
        )
        .unwrap()
        .0
        .first()
        .map_or(0, |g| g.count)
    }

    fn repeated_alerts_group_page_and_acknowledge_by_group_or_device(b: Backend) {
        let mut c = db(b, "groups");
        let alert = |dev: &str, i: usize, kind: &str, sev: &str| {
            item(
                &format!("inspect/{dev}/alert"),
                json!({"schema": "inspect.alert/1", "ts": format!("t{i}"), "kind": kind,
                       "severity": sev, "message": format!("m {i}")}),
            )
        };
        // 60 devices with one info alert each; device d0 also 5 suspect warnings and an error
        // (critical), device d1 a camera warning.
        let mut items: Vec<Item> = (0..60)
            .map(|d| alert(&format!("d{d}"), 0, "note", "info"))
            .collect();
        items.extend((1..6).map(|i| alert("d0", i, "suspect", "warning")));
        items.push(alert("d0", 9, "model_error", "error"));
        items.push(alert("d1", 1, "camera_lost", "warning"));
        store(&mut c, &items, 1000);
        let page = |f: AlertFilter| alert_groups(&c, &f).unwrap();
        let (p0, total) = page(AlertFilter::default());
        assert_eq!((p0.len(), total), (GROUPS_PER_PAGE, 63));
        assert_eq!(
            (p0[0].newest.kind.as_str(), p0[0].newest.severity.as_str()),
            ("model_error", "critical"),
            "critical first"
        );
        let (p1, _) = page(AlertFilter {
            page: 1,
            ..Default::default()
        });
        assert_eq!(p1.len(), 13);
        let (mine, n) = page(AlertFilter {
            device: Some("d0".into()),
            severity: Some("warning".into()),
            ..Default::default()
        });
        assert_eq!((n, mine[0].count), (1, 5));
        assert_eq!(
            (mine[0].first_ts.as_str(), mine[0].last_ts.as_str()),
            ("t1", "t5")
        );
        // One click on the group: its 5 alerts; then the rest of d0 at once.
        assert_eq!(
            ack_scope(&c, mine[0].newest.id, AckScope::Group, "ops", 2000).unwrap(),
            5
        );
        let d0_info = p0
            .iter()
            .chain(&p1)
            .find(|g| g.newest.device == "d0" && g.newest.kind == "note")
            .unwrap();
        let newest_d0 = d0_info.newest.id.max(p0[0].newest.id);
        assert_eq!(
            ack_scope(&c, newest_d0, AckScope::Device, "ops", 2000).unwrap(),
            2
        );
        assert_eq!(counts(&c).unwrap()[2], 67 - 7);
    }

    fn a_lost_box_raises_one_critical_alert_and_a_clean_stop_none(b: Backend) {
        let mut c = db(b, "offline");
        store(
            &mut c,
            &[
                status("a", "online", json!({})),
                status("b", "online", json!({})),
            ],
            1000,
        );
        // a's last will, twice (a replay): one alert. b stops cleanly.
        store(&mut c, &[status("a", "offline", json!({}))], 2000);
        store(&mut c, &[status("a", "offline", json!({}))], 3000);
        store(
            &mut c,
            &[
                status("b", "stopping", json!({})),
                status("b", "offline", json!({"stopped": true})),
            ],
            2000,
        );
        assert_eq!((offline_alerts(&c, "a"), offline_alerts(&c, "b")), (1, 0));
        let f = fleet(&c, 3000, 30_000).unwrap();
        let states: Vec<(&str, &str)> = f
            .iter()
            .map(|r| (r.device.as_str(), r.state.as_str()))
            .collect();
        assert_eq!(states, [("a", "offline"), ("b", "stopped")], "lost first");
        // A box gone silent: one alert once past the stale time, not again until heard from.
        store(&mut c, &[status("s", "online", json!({}))], 10_000);
        c.write(|tx| {
            assert!(sweep_silent(tx, 20_000, 30_000).unwrap().is_empty());
            assert_eq!(sweep_silent(tx, 41_000, 30_000).unwrap().len(), 2);
            assert!(sweep_silent(tx, 50_000, 30_000).unwrap().is_empty());
            Ok(())
        })
        .unwrap();
        assert_eq!(offline_alerts(&c, "s"), 1);
        // Its will after that: no second alert.
        store(&mut c, &[status("s", "offline", json!({}))], 60_000);
        assert_eq!(offline_alerts(&c, "s"), 1);
    }

    fn verdict_at(dev: &str, seq: u64, kind: &str, label: &str) -> Item {
        item(
            &format!("inspect/{dev}/verdict"),
            json!({"schema": "inspect.verdict/1", "device": dev, "seq": seq, "ts": "2026-11-26T10:00:00Z",
                   "verdict": kind, "label": label, "confidence": 0.9,
                   "reasons": if kind == "suspect" { json!(["marginal"]) } else { json!([]) }}),
        )
    }

    fn open_alerts_of(c: &Db, dev: &str, kind: &str) -> Vec<AlertRow> {
        alerts(c, 0)
            .unwrap()
            .0
            .into_iter()
            .filter(|a| a.device == dev && a.kind == kind)
            .collect()
    }

    fn a_seq_stored_again_with_other_content_is_kept_as_a_conflict_and_alerted(b: Backend) {
        let mut c = db(b, "conflict");
        store(&mut c, &[verdict_at("a", 1, "ok", "ok")], 1000);
        // The same verdict again: a silent duplicate. Another content under seq 1: a conflict,
        // once however often it comes.
        let a = store(
            &mut c,
            &[
                verdict_at("a", 1, "ok", "ok"),
                verdict_at("a", 1, "defect", "scratch"),
                verdict_at("a", 1, "defect", "scratch"),
            ],
            2000,
        );
        assert_eq!(a.duplicates, vec!["verdict", "verdict"]);
        assert_eq!(a.conflicts, 1);
        assert_eq!(
            verdict_of(&c, "a", 1).verdict,
            "ok",
            "the first stays stored"
        );
        let kept = conflicts(&c, "a", 10).unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!((kept[0].seq, kept[0].received), (1, 2000));
        assert!(kept[0].raw.contains("\"scratch\""), "{}", kept[0].raw);
        assert_eq!(kept[0].stored_verdict.as_deref(), Some("ok"));
        let al = open_alerts_of(&c, "a", SEQ_CONFLICT);
        assert_eq!(al.len(), 1);
        assert_eq!((al[0].severity.as_str(), al[0].seq), ("warning", Some(1)));
        assert!(al[0].message.contains("seq 1"), "{}", al[0].message);
        // A second conflicting seq: a second alert, grouped with the first.
        store(&mut c, &[verdict_at("a", 2, "ok", "ok")], 3000);
        store(&mut c, &[verdict_at("a", 2, "suspect", "dent")], 3000);
        let (groups, _) = alert_groups(
            &c,
            &AlertFilter {
                kind: Some(SEQ_CONFLICT.into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!((groups.len(), groups[0].count), (1, 2));
        assert_eq!(conflict_count(&c).unwrap(), 2);
        // Retention: conflicts go with the history they belong to.
        enforce(
            &c,
            Retention {
                days: 1,
                max_verdicts: 100,
            },
            3000 + 86_400_000 + 1,
        )
        .unwrap();
        assert_eq!(conflict_count(&c).unwrap(), 0);
    }

    fn gaps_of(c: &Db, dev: &str) -> (i64, Option<(i64, i64)>) {
        let g = seq_gaps(c, dev).unwrap();
        (g.missing, g.latest.map(|g| (g.from, g.to)))
    }

    fn seq_gaps_count_what_is_missing_and_close_when_it_arrives_late(b: Backend) {
        let mut c = db(b, "gaps");
        let v = |s| verdict_at("a", s, "ok", "ok");
        // The first verdict seen starts the count: nothing before it is missing.
        store(&mut c, &[v(10), v(11), v(14)], 1000);
        assert_eq!(gaps_of(&c, "a"), (2, Some((12, 13))));
        store(&mut c, &[v(20)], 2000);
        assert_eq!(gaps_of(&c, "a"), (7, Some((15, 19))));
        // Late arrivals (a spool resend) fill gaps, in any order; a duplicate changes nothing.
        store(&mut c, &[v(17), v(12), v(12)], 3000);
        assert_eq!(gaps_of(&c, "a"), (5, Some((18, 19))));
        store(&mut c, &[v(15), v(16), v(13), v(18), v(19)], 4000);
        assert_eq!(gaps_of(&c, "a"), (0, None));
        // Older than the first seen: not a gap, and no gap is opened by it.
        store(&mut c, &[v(3)], 5000);
        assert_eq!(gaps_of(&c, "a"), (0, None));
        // Retention deleting old rows does not open gaps; gaps of other devices are their own.
        store(
            &mut c,
            &[
                v(22),
                verdict_at("b", 1, "ok", "ok"),
                verdict_at("b", 4, "ok", "ok"),
            ],
            6000,
        );
        enforce(
            &c,
            Retention {
                days: 30,
                max_verdicts: 2,
            },
            7000,
        )
        .unwrap();
        assert_eq!(gaps_of(&c, "a"), (1, Some((21, 21))));
        assert_eq!(gaps_of(&c, "b"), (2, Some((2, 3))));
        let all = seq_missing(&c).unwrap();
        assert_eq!(all, vec![("a".to_string(), 1), ("b".to_string(), 2)]);
        store(&mut c, &[v(21)], 8000);
        assert_eq!(gaps_of(&c, "a"), (0, None));
    }

    fn statuses_alternating_between_two_instances_raise_one_duplicate_device_alert(b: Backend) {
        let mut c = db(b, "twins");
        let online = |inst: &str| status("a", "online", json!({"instance": inst}));
        let will = |inst: &str| status("a", "offline", json!({"instance": inst}));
        // A crash and a restart: a new instance, the old one's will late. Not a duplicate.
        store(&mut c, &[online("i1")], 1000);
        store(&mut c, &[online("i2"), will("i1")], 2000);
        store(&mut c, &[online("i2")], 3000);
        assert!(open_alerts_of(&c, "a", DUPLICATE_DEVICE_ID).is_empty());
        // The predecessor's late will is not the box's: still online, nothing raised.
        assert_eq!(fleet(&c, 3000, 30_000).unwrap()[0].state, "online");
        assert_eq!(offline_alerts(&c, "a"), 0);
        // i1 online again after i2: two live processes share the id.
        store(&mut c, &[online("i1")], 4000);
        let al = open_alerts_of(&c, "a", DUPLICATE_DEVICE_ID);
        assert_eq!(al.len(), 1);
        assert_eq!(al[0].severity, "critical");
        assert!(
            al[0].message.contains("i1") && al[0].message.contains("i2"),
            "{}",
            al[0].message
        );
        // More alternation: the open alert stands, no new one.
        store(&mut c, &[online("i2"), online("i1"), online("i2")], 5000);
        assert_eq!(open_alerts_of(&c, "a", DUPLICATE_DEVICE_ID).len(), 1);
        // Statuses without an instance (older boxes) never look like two.
        store(
            &mut c,
            &[
                status("b", "online", json!({})),
                status("b", "online", json!({})),
            ],
            1000,
        );
        assert!(open_alerts_of(&c, "b", DUPLICATE_DEVICE_ID).is_empty());
    }

    fn parts_in_the_last_hour_are_the_verdicts_stored_in_it(b: Backend) {
        let mut c = db(b, "parts");
        let hour = 3_600_000;
        let t0 = 10 * hour;
        // Counters of a box that inspects more than it publishes, and restarts (or has a twin).
        let st = |ok: i64| {
            item(
                "inspect/a/stats",
                json!({"schema": "inspect.stats/1", "verdicts": {"ok": ok, "defect": 0, "suspect": 0}}),
            )
        };
        store(&mut c, &[st(100), st(3), st(150)], t0);
        store(&mut c, &[verdict_at("a", 1, "ok", "ok")], t0 - hour - 1);
        store(
            &mut c,
            &[
                verdict_at("a", 2, "ok", "ok"),
                verdict_at("a", 3, "defect", "scratch"),
                verdict_at("a", 4, "suspect", "dent"),
                verdict_at("a", 5, "ok", "ok"),
            ],
            t0,
        );
        let f = fleet(&c, t0 + 1000, 30_000).unwrap();
        assert_eq!(f[0].inspected, 4);
        assert_eq!(
            (f[0].defect_rate, f[0].suspect_rate),
            (Some(0.25), Some(0.25))
        );
    }

    fn a_fleet_row_has_the_latest_status_and_stats_and_older_statuses_do_not_win(b: Backend) {
        let mut c = db(b, "fleet");
        let st = |ok: i64, d: i64| {
            item(
                "inspect/a/stats",
                json!({"schema": "inspect.stats/1", "fps": 4.5, "verdicts": {"ok": ok, "defect": d, "suspect": 0},
            "latency_ms": {"total": {"p95": 9.5}}, "spool": {"depth": 3}}),
            )
        };
        store(
            &mut c,
            &[item(
                "inspect/a/status",
                json!({"schema": "inspect.status/1", "state": "online", "model": {"name": "m", "version": "2"}, "camera": "ok"}),
            )],
            1_000_000,
        );
        store(&mut c, &[st(0, 0)], 1_000_000);
        store(&mut c, &[st(6, 2)], 1_005_000);
        let f = fleet(&c, 1_010_000, 30_000).unwrap();
        assert_eq!(f.len(), 1);
        let r = &f[0];
        assert_eq!(
            (r.state.as_str(), r.model.as_str(), r.model_version.as_str()),
            ("online", "m", "2")
        );
        // Parts are the verdicts stored (none here), not the box's counters.
        assert_eq!(
            (r.fps, r.p95_ms, r.spool_depth, r.inspected),
            (Some(4.5), Some(9.5), Some(3), 0)
        );
        assert_eq!(r.defect_rate, None);
        assert_eq!(fleet(&c, 1_040_000, 30_000).unwrap()[0].state, "stale");
        store(
            &mut c,
            &[item(
                "inspect/a/status",
                json!({"schema": "inspect.status/1", "state": "offline", "ts": "2026-11-26T10:00:02Z"}),
            )],
            1_041_000,
        );
        assert_eq!(fleet(&c, 1_041_000, 30_000).unwrap()[0].state, "offline");
        // An older status arriving late (a redelivery) changes nothing.
        let a = store(
            &mut c,
            &[item(
                "inspect/a/status",
                json!({"schema": "inspect.status/1", "state": "online", "ts": "2026-11-26T10:00:01Z"}),
            )],
            1_042_000,
        );
        assert_eq!(a.duplicates, vec!["status"]);
        assert_eq!(fleet(&c, 1_042_000, 30_000).unwrap()[0].state, "offline");
        // The last will carries the time its connection began: it applies all the same.
        store(
            &mut c,
            &[item(
                "inspect/a/status",
                json!({"schema": "inspect.status/1", "state": "online", "ts": "2026-11-26T10:00:09Z"}),
            )],
            1_043_000,
        );
        store(
            &mut c,
            &[item(
                "inspect/a/status",
                json!({"schema": "inspect.status/1", "state": "offline", "ts": "2026-11-26T10:00:08Z"}),
            )],
            1_044_000,
        );
        assert_eq!(fleet(&c, 1_044_000, 30_000).unwrap()[0].state, "offline");
        // A box that keeps talking after an offline is alive.
        store(&mut c, &[st(7, 2)], 1_050_000);
        assert_eq!(fleet(&c, 1_050_000, 30_000).unwrap()[0].state, "online");
    }
}
