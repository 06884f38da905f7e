//! One connection to the history, SQLite or PostgreSQL: the store's queries are written once,
//! in the SQL both dialects read (`?N` placeholders, `ON CONFLICT DO NOTHING`, `RETURNING`,
//! `IS NOT DISTINCT FROM`), and run through [`Db`], which hands PostgreSQL `$N` and converts
//! values both ways. Everything else (the schema, sizes, locks, notifications) is per backend.

use std::cell::RefCell;
use std::collections::HashMap;

use anyhow::{anyhow, bail, Context, Result};
use postgres::types::{IsNull, ToSql, Type};

/// A parameter, borrowed from the caller (no copies of payloads and maps).
#[derive(Clone, Copy, Debug)]
pub enum Param<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// What can be passed as a parameter (`params![a, b]`).
pub trait AsParam {
    fn as_param(&self) -> Param<'_>;
}

impl AsParam for i64 {
    fn as_param(&self) -> Param<'_> {
        Param::Int(*self)
    }
}
impl AsParam for usize {
    fn as_param(&self) -> Param<'_> {
        Param::Int(*self as i64)
    }
}
impl AsParam for u64 {
    fn as_param(&self) -> Param<'_> {
        Param::Int((*self).min(i64::MAX as u64) as i64)
    }
}
impl AsParam for bool {
    fn as_param(&self) -> Param<'_> {
        Param::Int(*self as i64)
    }
}
impl AsParam for f64 {
    fn as_param(&self) -> Param<'_> {
        Param::Real(*self)
    }
}
impl AsParam for str {
    fn as_param(&self) -> Param<'_> {
        Param::Text(self)
    }
}
impl AsParam for String {
    fn as_param(&self) -> Param<'_> {
        Param::Text(self)
    }
}
impl AsParam for [u8] {
    fn as_param(&self) -> Param<'_> {
        Param::Blob(self)
    }
}
impl AsParam for Vec<u8> {
    fn as_param(&self) -> Param<'_> {
        Param::Blob(self)
    }
}
impl<T: AsParam + ?Sized> AsParam for &T {
    fn as_param(&self) -> Param<'_> {
        (**self).as_param()
    }
}
impl<T: AsParam> AsParam for Option<T> {
    fn as_param(&self) -> Param<'_> {
        match self {
            Some(v) => v.as_param(),
            None => Param::Null,
        }
    }
}

/// `params![a, b, c]`: the parameters of one statement, `?1`, `?2`, `?3`.
#[macro_export]
macro_rules! params {
    ($($x:expr),* $(,)?) => {
        &[$($crate::store::AsParam::as_param(&$x)),*] as &[$crate::store::Param]
    };
}
pub use crate::params;

impl rusqlite::ToSql for Param<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            Param::Null => ValueRef::Null,
            Param::Int(i) => ValueRef::Integer(i),
            Param::Real(f) => ValueRef::Real(f),
            Param::Text(s) => ValueRef::Text(s.as_bytes()),
            Param::Blob(b) => ValueRef::Blob(b),
        }))
    }
}

impl ToSql for Param<'_> {
    /// To the type PostgreSQL inferred for the placeholder.
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match *self {
            Param::Null => Ok(IsNull::Yes),
            Param::Int(i) => match *ty {
                Type::INT8 => i.to_sql(ty, out),
                Type::INT4 => i32::try_from(i)?.to_sql(ty, out),
                Type::INT2 => i16::try_from(i)?.to_sql(ty, out),
                Type::FLOAT8 => (i as f64).to_sql(ty, out),
                Type::BOOL => (i != 0).to_sql(ty, out),
                _ => Err(format!("an integer for a {ty} parameter").into()),
            },
            Param::Real(f) => match *ty {
                Type::FLOAT8 => f.to_sql(ty, out),
                Type::FLOAT4 => (f as f32).to_sql(ty, out),
                _ => Err(format!("a real for a {ty} parameter").into()),
            },
            // PostgreSQL's text cannot hold U+0000 (SQLite's can): a hostile string keeps its
            // place with U+FFFD instead of failing its whole batch forever.
            Param::Text(s) if s.contains('\0') => s.replace('\0', "\u{FFFD}").to_sql(ty, out),
            Param::Text(s) => s.to_sql(ty, out),
            Param::Blob(b) => b.to_sql(ty, out),
        }
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    postgres::types::to_sql_checked!();
}

/// A value read back.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// One row read: its columns by position.
pub struct Row(Vec<Value>);

impl Row {
    pub fn get<T: FromValue>(&self, i: usize) -> Result<T> {
        let v = self
            .0
            .get(i)
            .ok_or_else(|| anyhow!("column {i} of {} read", self.0.len()))?;
        T::from_value(v).with_context(|| format!("column {i}"))
    }
}

/// A Rust type read from a column.
pub trait FromValue: Sized {
    fn from_value(v: &Value) -> Result<Self>;
}

impl FromValue for i64 {
    fn from_value(v: &Value) -> Result<Self> {
        match v {
            Value::Int(i) => Ok(*i),
            other => bail!("an integer expected, {other:?} read"),
        }
    }
}
impl FromValue for f64 {
    fn from_value(v: &Value) -> Result<Self> {
        match v {
            Value::Real(f) => Ok(*f),
            Value::Int(i) => Ok(*i as f64),
            other => bail!("a number expected, {other:?} read"),
        }
    }
}
impl FromValue for bool {
    fn from_value(v: &Value) -> Result<Self> {
        Ok(i64::from_value(v)? != 0)
    }
}
impl FromValue for String {
    fn from_value(v: &Value) -> Result<Self> {
        match v {
            Value::Text(s) => Ok(s.clone()),
            other => bail!("text expected, {other:?} read"),
        }
    }
}
impl FromValue for Vec<u8> {
    fn from_value(v: &Value) -> Result<Self> {
        match v {
            Value::Blob(b) => Ok(b.clone()),
            other => bail!("bytes expected, {other:?} read"),
        }
    }
}
impl<T: FromValue> FromValue for Option<T> {
    fn from_value(v: &Value) -> Result<Self> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

/// A PostgreSQL connection and its prepared statements (by their `?N` text).
pub struct Pg {
    /// Always `Some` until dropped.
    client: RefCell<Option<postgres::Client>>,
    statements: RefCell<HashMap<String, postgres::Statement>>,
}

impl Drop for Pg {
    /// The blocking client owns a small tokio runtime, which must not be dropped on an async
    /// worker (tokio panics): it goes on a thread of its own.
    fn drop(&mut self) {
        self.statements.get_mut().clear();
        if let Some(c) = self.client.get_mut().take() {
            if let Err(e) = std::thread::Builder::new()
                .name("supervisor-pg-close".into())
                .spawn(move || drop(c))
            {
                tracing::warn!("closing a PostgreSQL connection: {e}");
            }
        }
    }
}

/// A connection to either backend. Used by one thread at a time (the writer's, or one web
/// request's blocking task).
pub enum Db {
    Sqlite(rusqlite::Connection),
    Postgres(Box<Pg>),
}

/// The transaction-wide lock every writing supervisor takes (PostgreSQL): writers of several
/// instances take turns, batch by batch, as SQLite's one writer does. Row ids then grow in
/// commit order (the live views' cursors rely on that), and the read-then-write steps (seq gaps,
/// conflicts, a box's state) see each other's results.
pub const WRITE_LOCK: i64 = 0x1d5e_c7d0_0001;
/// The lock around migrations (several instances starting at once).
pub const MIGRATE_LOCK: i64 = 0x1d5e_c7d0_0002;

/// `?N` to `$N` (outside quotes).
fn dollars(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut quoted = false;
    for c in sql.chars() {
        match c {
            '\'' => {
                quoted = !quoted;
                out.push(c);
            }
            '?' if !quoted => out.push('$'),
            c => out.push(c),
        }
    }
    out
}

fn pg_value(row: &postgres::Row, i: usize) -> Result<Value> {
    let ty = row.columns()[i].type_();
    let v = match *ty {
        Type::INT8 => row.try_get::<_, Option<i64>>(i)?.map(Value::Int),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(i)?
            .map(|v| Value::Int(v.into())),
        Type::INT2 => row
            .try_get::<_, Option<i16>>(i)?
            .map(|v| Value::Int(v.into())),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(i)?
            .map(|v| Value::Int(v.into())),
        Type::FLOAT8 => row.try_get::<_, Option<f64>>(i)?.map(Value::Real),
        Type::FLOAT4 => row
            .try_get::<_, Option<f32>>(i)?
            .map(|v| Value::Real(v.into())),
        Type::TEXT | Type::VARCHAR | Type::NAME | Type::BPCHAR => {
            row.try_get::<_, Option<String>>(i)?.map(Value::Text)
        }
        Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(i)?.map(Value::Blob),
        Type::VOID => None,
        ref t => bail!("column {i}: type {t} not read by the store"),
    };
    Ok(v.unwrap_or(Value::Null))
}

fn sqlite_value(v: rusqlite::types::ValueRef) -> Value {
    use rusqlite::types::ValueRef;
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::Int(i),
        ValueRef::Real(f) => Value::Real(f),
        ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Value::Blob(b.to_vec()),
    }
}

impl Pg {
    pub fn new(client: postgres::Client) -> Pg {
        Pg {
            client: RefCell::new(Some(client)),
            statements: RefCell::new(HashMap::new()),
        }
    }

    /// The client itself (notifications, plain statements).
    pub fn client(&self) -> Result<std::cell::RefMut<'_, postgres::Client>> {
        std::cell::RefMut::filter_map(self.client.borrow_mut(), Option::as_mut)
            .map_err(|_| anyhow!("the PostgreSQL connection is closed"))
    }

    /// Whether the server closed this connection (it is not worth keeping).
    pub fn is_closed(&self) -> bool {
        self.client().map_or(true, |c| c.is_closed())
    }

    fn statement(&self, sql: &str) -> Result<postgres::Statement> {
        if let Some(s) = self.statements.borrow().get(sql) {
            return Ok(s.clone());
        }
        let s = self
            .client()?
            .prepare(&dollars(sql))
            .with_context(|| format!("preparing {sql}"))?;
        self.statements
            .borrow_mut()
            .insert(sql.to_string(), s.clone());
        Ok(s)
    }
}

fn refs<'a>(p: &'a [Param<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    p.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

impl Db {
    pub fn is_postgres(&self) -> bool {
        matches!(self, Db::Postgres(_))
    }

    /// Runs a statement; returns the rows it changed.
    pub fn execute(&self, sql: &str, p: &[Param]) -> Result<usize> {
        match self {
            Db::Sqlite(c) => Ok(c
                .prepare_cached(sql)?
                .execute(rusqlite::params_from_iter(p.iter()))?),
            Db::Postgres(pg) => {
                let st = pg.statement(sql)?;
                Ok(pg.client()?.execute(&st, &refs(p))? as usize)
            }
        }
    }

    /// Every row of a query, each through `f`.
    pub fn query<T>(
        &self,
        sql: &str,
        p: &[Param],
        mut f: impl FnMut(&Row) -> Result<T>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        match self {
            Db::Sqlite(c) => {
                let mut st = c.prepare_cached(sql)?;
                let n = st.column_count();
                let mut rows = st.query(rusqlite::params_from_iter(p.iter()))?;
                while let Some(r) = rows.next()? {
                    let row = Row((0..n)
                        .map(|i| r.get_ref(i).map(sqlite_value))
                        .collect::<rusqlite::Result<_>>()?);
                    out.push(f(&row)?);
                }
            }
            Db::Postgres(pg) => {
                let st = pg.statement(sql)?;
                let rows = pg.client()?.query(&st, &refs(p))?;
                for r in rows {
                    let row = Row((0..r.len())
                        .map(|i| pg_value(&r, i))
                        .collect::<Result<_>>()?);
                    out.push(f(&row)?);
                }
            }
        }
        Ok(out)
    }

    /// The first row of a query, if there is one.
    pub fn query_row<T>(
        &self,
        sql: &str,
        p: &[Param],
        f: impl FnMut(&Row) -> Result<T>,
    ) -> Result<Option<T>> {
        Ok(self.query(sql, p, f)?.into_iter().next())
    }

    /// The first column of the one row a query returns (a count, a sum).
    pub fn one<T: FromValue>(&self, sql: &str, p: &[Param]) -> Result<T> {
        self.query_row(sql, p, |r| r.get(0))?
            .ok_or_else(|| anyhow!("no row from {sql}"))
    }

    /// Whether a query returns a row.
    pub fn exists(&self, sql: &str, p: &[Param]) -> Result<bool> {
        Ok(!self.query(sql, p, |_| Ok(()))?.is_empty())
    }

    /// Statements without parameters (schema, `BEGIN`).
    pub fn batch(&self, sql: &str) -> Result<()> {
        match self {
            Db::Sqlite(c) => c.execute_batch(sql)?,
            Db::Postgres(pg) => pg.client()?.batch_execute(sql)?,
        }
        Ok(())
    }

    fn within<T>(&self, begin: &str, f: impl FnOnce(&Db) -> Result<T>) -> Result<T> {
        self.batch(begin)?;
        match f(self).and_then(|v| self.batch("COMMIT").map(|_| v)) {
            Ok(v) => Ok(v),
            Err(e) => {
                let _ = self.batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// `f` in one transaction: committed if it returns Ok, rolled back otherwise.
    pub fn tx<T>(&self, f: impl FnOnce(&Db) -> Result<T>) -> Result<T> {
        self.within("BEGIN", f)
    }

    /// A writing transaction of the supervisor: on PostgreSQL it first takes [`WRITE_LOCK`].
    pub fn write<T>(&self, f: impl FnOnce(&Db) -> Result<T>) -> Result<T> {
        self.tx(|t| {
            if t.is_postgres() {
                t.query(
                    "SELECT pg_advisory_xact_lock(?1)",
                    params![WRITE_LOCK],
                    |_| Ok(()),
                )?;
            }
            f(t)
        })
    }

    /// Reads that must see one state of the database (a page's rows and its cursor).
    pub fn snapshot<T>(&self, f: impl FnOnce(&Db) -> Result<T>) -> Result<T> {
        match self {
            Db::Sqlite(_) => self.within("BEGIN", f),
            Db::Postgres(_) => self.within("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", f),
        }
    }

    /// The SQLite connection (its schema and pragmas), if this is one.
    pub fn sqlite(&self) -> Option<&rusqlite::Connection> {
        match self {
            Db::Sqlite(c) => Some(c),
            Db::Postgres(_) => None,
        }
    }

    /// The PostgreSQL connection, if this is one.
    pub fn postgres(&self) -> Option<&Pg> {
        match self {
            Db::Sqlite(_) => None,
            Db::Postgres(pg) => Some(pg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_dollars_outside_quotes() {
        assert_eq!(
            dollars("SELECT '?1', x FROM t WHERE a = ?1 AND b IS NOT DISTINCT FROM ?12"),
            "SELECT '?1', x FROM t WHERE a = $1 AND b IS NOT DISTINCT FROM $12"
        );
    }
}
