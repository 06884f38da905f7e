//! The live views' cursor: a page or an event stream resumes after the last row it saw.

use anyhow::Result;

use super::db::Db;

use super::queries::{alerts_after, verdicts_after, AlertRow, VerdictRow};

/// Where a live view stands: the last verdict row and the last alert row it shows. Pages put it
/// in `data-cursor`, the event stream in each row event's id (`V.A`), so a stream that starts
/// after the page was rendered, or reconnects (`Last-Event-ID`), first sends what the view missed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub verdict: i64,
    pub alert: i64,
}

impl Cursor {
    pub fn parse(s: &str) -> Option<Cursor> {
        let (v, a) = s.trim().split_once('.')?;
        Some(Cursor {
            verdict: v.parse().ok().filter(|v| *v >= 0)?,
            alert: a.parse().ok().filter(|a| *a >= 0)?,
        })
    }

    pub fn id(&self) -> String {
        format!("{}.{}", self.verdict, self.alert)
    }

    /// This cursor, for a database whose newest rows are `head`: a part ahead of it comes from
    /// another database (the supervisor was started afresh) and starts over.
    fn within(self, head: Cursor) -> Cursor {
        let part = |mine: i64, last: i64| if mine > last { 0 } else { mine };
        Cursor {
            verdict: part(self.verdict, head.verdict),
            alert: part(self.alert, head.alert),
        }
    }
}

/// Where the database stands: its last verdict row and last alert row.
pub fn cursor(conn: &Db) -> Result<Cursor> {
    conn.query_row(
        "SELECT (SELECT coalesce(max(id), 0) FROM verdicts), (SELECT coalesce(max(id), 0) FROM alerts)",
        &[],
        |r| {
            Ok(Cursor {
                verdict: r.get(0)?,
                alert: r.get(1)?,
            })
        },
    )?
    .ok_or_else(|| anyhow::anyhow!("no cursor row"))
}

/// What a view at `from` is missing: the newest `limit` verdicts and open alerts stored since,
/// oldest first, and the cursor they count from.
pub fn since(
    conn: &Db,
    from: Cursor,
    limit: usize,
) -> Result<(Cursor, Vec<VerdictRow>, Vec<AlertRow>)> {
    conn.snapshot(|tx| {
        let from = from.within(cursor(tx)?);
        Ok((
            from,
            verdicts_after(tx, from.verdict, limit)?,
            alerts_after(tx, from.alert, limit)?,
        ))
    })
}
