//! Comparable forms of what a client sees (rows as raw binary values, simple-query
//! messages, server errors field by field), so a test can assert that a result through
//! pgmemo equals the result on a direct connection.

use std::error::Error;

use tokio_postgres::error::{DbError, ErrorPosition};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, Row, SimpleQueryMessage, Statement};

/// One column value exactly as received in binary format (None = SQL NULL).
/// Accepts every type, so rows of any shape can be compared byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Raw(pub Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Raw(Some(raw.to_vec())))
    }

    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn Error + Sync + Send>> {
        Ok(Raw(None))
    }

    fn accepts(_: &Type) -> bool {
        true
    }
}

/// Every row as its raw binary column values.
pub fn raw_rows(rows: &[Row]) -> Vec<Vec<Raw>> {
    rows.iter()
        .map(|row| (0..row.len()).map(|i| row.get::<_, Raw>(i)).collect())
        .collect()
}

/// A statement's description: parameter type OIDs and (name, type OID, typmod) per
/// column. Table OIDs are left out: tables recreated between runs get new OIDs.
pub fn describe(stmt: &Statement) -> (Vec<u32>, Vec<(String, u32, i32)>) {
    (
        stmt.params().iter().map(Type::oid).collect(),
        stmt.columns()
            .iter()
            .map(|c| (c.name().to_string(), c.type_().oid(), c.type_modifier()))
            .collect(),
    )
}

/// A simple-query message in comparable form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimpleMsg {
    Columns(Vec<String>),
    Row(Vec<Option<String>>),
    Complete(u64),
}

pub fn simple_msgs(messages: &[SimpleQueryMessage]) -> Vec<SimpleMsg> {
    messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::RowDescription(cols) => Some(SimpleMsg::Columns(
                cols.iter().map(|c| c.name().to_string()).collect(),
            )),
            SimpleQueryMessage::Row(row) => Some(SimpleMsg::Row(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            )),
            SimpleQueryMessage::CommandComplete(n) => Some(SimpleMsg::Complete(*n)),
            _ => None,
        })
        .collect()
}

/// All fields of a server error (ErrorResponse or NoticeResponse).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFields {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    pub position: Option<String>,
    pub where_: Option<String>,
    pub schema: Option<String>,
    pub table: Option<String>,
    pub column: Option<String>,
    pub datatype: Option<String>,
    pub constraint: Option<String>,
    pub file: Option<String>,
    pub line: Option<u32>,
    pub routine: Option<String>,
}

impl From<&DbError> for ErrorFields {
    fn from(e: &DbError) -> Self {
        ErrorFields {
            severity: e.severity().to_string(),
            code: e.code().code().to_string(),
            message: e.message().to_string(),
            detail: e.detail().map(str::to_string),
            hint: e.hint().map(str::to_string),
            position: e.position().map(|p| match p {
                ErrorPosition::Original(n) => format!("original {n}"),
                ErrorPosition::Internal { position, query } => {
                    format!("internal {position} in {query}")
                }
            }),
            where_: e.where_().map(str::to_string),
            schema: e.schema().map(str::to_string),
            table: e.table().map(str::to_string),
            column: e.column().map(str::to_string),
            datatype: e.datatype().map(str::to_string),
            constraint: e.constraint().map(str::to_string),
            file: e.file().map(str::to_string),
            line: e.line(),
            routine: e.routine().map(str::to_string),
        }
    }
}

/// The server error inside `e` as comparable fields; panics if `e` is not a server error
/// (a broken connection must fail the comparison loudly, not compare equal).
pub fn error_fields(e: &tokio_postgres::Error) -> ErrorFields {
    match e.as_db_error() {
        Some(db) => ErrorFields::from(db),
        None => panic!("expected a server error, got: {e} ({e:?})"),
    }
}

/// Outcome of one simple query, comparable across connections.
pub type SimpleOutcome = Result<Vec<SimpleMsg>, Box<ErrorFields>>;

pub async fn simple_outcome(client: &Client, sql: &str) -> SimpleOutcome {
    match client.simple_query(sql).await {
        Ok(messages) => Ok(simple_msgs(&messages)),
        Err(e) => Err(Box::new(error_fields(&e))),
    }
}

/// Runs each statement on `direct` then on `proxied` and asserts identical outcomes.
pub async fn assert_same_simple(direct: &Client, proxied: &Client, statements: &[&str]) {
    for sql in statements {
        let want = simple_outcome(direct, sql).await;
        let got = simple_outcome(proxied, sql).await;
        assert_eq!(got, want, "through pgmemo vs direct for {sql:?}");
    }
}

/// Outcome of one typed (extended-protocol, binary) query, comparable across connections.
pub type RawOutcome = Result<Vec<Vec<Raw>>, Box<ErrorFields>>;

pub fn raw_outcome(result: Result<Vec<Row>, tokio_postgres::Error>) -> RawOutcome {
    match result {
        Ok(rows) => Ok(raw_rows(&rows)),
        Err(e) => Err(Box::new(error_fields(&e))),
    }
}
