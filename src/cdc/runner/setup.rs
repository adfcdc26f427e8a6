//! Before a change stream starts: the server checked (wal_level, a replication connection),
//! the output plugin chosen (a named publication with pgoutput, or test_decoding), the slot
//! created, and what blocks a start named in the log.

use super::*;

/// The upstream can decode WAL for this database: `wal_level = logical`, not a standby.
/// Also learns the database's OID (tags carry it).
pub(super) async fn check_server(
    conn: &mut ReplConn,
    ctx: &AppContext,
    db: &str,
) -> Result<(), Stop> {
    let rows = conn
        .query(
            "SELECT current_setting('wal_level'), pg_catalog.pg_is_in_recovery()::text, \
             (SELECT oid::text FROM pg_catalog.pg_database WHERE datname = current_database())",
        )
        .await
        .map_err(failed("setup"))?;
    let row = rows.first().ok_or_else(|| Stop::Failed {
        reason: "setup",
        detail: "no row from the settings query".into(),
    })?;
    let text = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
    let wal_level = text(0);
    if wal_level != "logical" {
        return Err(Stop::Unavailable(format!(
            "the upstream has wal_level = {wal_level}; set wal_level = logical (restart \
             required), with max_replication_slots and max_wal_senders above zero"
        )));
    }
    if text(1) == "true" {
        return Err(Stop::Unavailable(
            "the upstream is a hot standby; pgmemo follows the change stream of the server it \
             reads from, and PostgreSQL 15 cannot decode on a standby: point upstream.url at \
             the primary"
                .into(),
        ));
    }
    if let Ok(oid) = text(2).parse::<u32>() {
        ctx.services.invalidator.learn_database(db, oid);
    }
    Ok(())
}

/// Which plugin to stream with (see the module header); warns once about a publication
/// left by an earlier pgmemo version.
pub(super) async fn choose_plugin(
    conn: &mut ReplConn,
    ctx: &AppContext,
    db: &str,
    said: &mut Said,
) -> Result<Plugin, Stop> {
    let config = ctx.config();
    let configured = config.invalidation.cdc_publication.as_deref();
    let names = match configured {
        Some(p) => format!(
            "{}, {}",
            quote_literal(LEGACY_PUBLICATION),
            quote_literal(p)
        ),
        None => quote_literal(LEGACY_PUBLICATION),
    };
    let rows = conn
        .query(&format!(
            "SELECT pubname::text, puballtables::text FROM pg_catalog.pg_publication \
             WHERE pubname IN ({names})"
        ))
        .await
        .map_err(failed("setup"))?;
    let found = |name: &str| {
        rows.iter()
            .find(|r| r.first().cloned().flatten().as_deref() == Some(name))
            .map(|r| r.get(1).cloned().flatten().as_deref() == Some("true"))
    };
    if configured != Some(LEGACY_PUBLICATION)
        && found(LEGACY_PUBLICATION) == Some(true)
        && !said.legacy_publication
    {
        said.legacy_publication = true;
        warn!(database = %db,
            "cdc: publication \"pgmemo\" FOR ALL TABLES exists in this database: an earlier \
             pgmemo version created it. While it exists, PostgreSQL refuses UPDATE and DELETE \
             on every table without a primary key or replica identity. pgmemo no longer uses \
             or needs it; remove it with: DROP PUBLICATION pgmemo;");
    }
    let Some(publication) = configured else {
        return Ok(Plugin::TestDecoding);
    };
    if found(publication).is_some() {
        return Ok(Plugin::Pgoutput {
            publication: publication.to_owned(),
        });
    }
    if config.invalidation.cdc == CdcMode::Auto {
        if !said.missing_publication {
            said.missing_publication = true;
            warn!(database = %db, publication,
                "cdc: the publication named in invalidation.cdc_publication does not exist; \
                 following the change stream with test_decoding instead (it needs no \
                 publication). Create the publication, or remove the setting");
        }
        return Ok(Plugin::TestDecoding);
    }
    Err(Stop::Unavailable(format!(
        "publication {publication:?} (invalidation.cdc_publication) does not exist in this \
         database; pgmemo never creates one. Create it (CREATE PUBLICATION ... FOR TABLE ...), \
         or remove invalidation.cdc_publication to follow the stream without a publication"
    )))
}

/// Creates the temporary slot; returns its consistent point. Creation waits for every
/// transaction with an XID that is open at the time: past `limit`, the blockers are
/// logged, the creation is cancelled, and the caller retries with backoff.
pub(super) async fn create_slot(
    conn: &mut ReplConn,
    ctx: &AppContext,
    db: &str,
    slot: &str,
    plugin: &Plugin,
    limit: Duration,
) -> Result<Lsn, Stop> {
    let name = match plugin {
        Plugin::Pgoutput { .. } => "pgoutput",
        Plugin::TestDecoding => "test_decoding",
    };
    let command =
        format!("CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL {name} NOEXPORT_SNAPSHOT");
    match tokio::time::timeout(limit, conn.query(&command)).await {
        Ok(Ok(rows)) => rows
            .first()
            .and_then(|r| r.get(1).cloned().flatten())
            .and_then(|t| t.parse::<Lsn>().ok())
            .ok_or_else(|| Stop::Failed {
                reason: "slot",
                detail: "CREATE_REPLICATION_SLOT returned no consistent point".into(),
            }),
        // The plugin's library is missing (some distributions ship test_decoding in a
        // separate contrib package).
        Ok(Err(e)) if e.code() == Some("58P01") => Err(Stop::Unavailable(format!(
            "the server cannot load the {name} output plugin ({e}); install PostgreSQL's \
             contrib modules, or create a publication and name it in \
             invalidation.cdc_publication"
        ))),
        Ok(Err(e)) => Err(failed("slot")(e)),
        Err(_) => {
            let blockers = blockers(ctx, db).await;
            warn!(database = %db, waited = ?limit, blockers = %blockers,
                "cdc: creating the replication slot waits for open write transactions; \
                 serving uncached and retrying");
            if let Some((_, packet)) = conn.cancel_request() {
                let _ = ctx.upstream.forward_cancel(&packet, limit).await;
            }
            Err(Stop::Failed {
                reason: "slot_timeout",
                detail: format!("open write transactions: {blockers}"),
            })
        }
    }
}

/// The backends holding a transaction ID (what slot creation waits for), for the log.
pub(super) async fn blockers(ctx: &AppContext, db: &str) -> String {
    let client = match side_client(ctx, db).await {
        Ok(c) => c,
        Err(e) => return format!("(could not list them: {e})"),
    };
    let q = "SELECT pid::text || ' ' || coalesce(usename, '?') || '@' || coalesce(datname, '?') \
             || ' ' || coalesce(state, '?') || ' since ' || coalesce(xact_start::text, '?') \
             || ': ' || left(coalesce(query, ''), 120) \
             FROM pg_catalog.pg_stat_activity \
             WHERE backend_xid IS NOT NULL AND pid <> pg_catalog.pg_backend_pid() \
             ORDER BY xact_start LIMIT 20";
    match client.query(q, &[]).await {
        Ok(rows) => {
            let list: Vec<String> = rows.iter().filter_map(|r| r.try_get(0).ok()).collect();
            if list.is_empty() {
                "(none found)".into()
            } else {
                list.join("; ")
            }
        }
        Err(e) => format!("(could not list them: {e})"),
    }
}

/// A plain side connection to `db` as pgmemo's role (its driver runs as a task that ends
/// with the client).
pub(super) async fn side_client(
    ctx: &AppContext,
    db: &str,
) -> Result<tokio_postgres::Client, String> {
    side_client_named(ctx, db, "pgmemo-cdc-monitor").await
}

pub(super) async fn side_client_named(
    ctx: &AppContext,
    db: &str,
    application_name: &str,
) -> Result<tokio_postgres::Client, String> {
    let mut config = ctx.services.catalog.connect_config().clone();
    config.dbname(db).application_name(application_name);
    let timeout = ctx.config().upstream.connect_timeout;
    let catalog = &ctx.services.catalog;
    match catalog.open_side(&config, timeout).await {
        Ok((client, connection)) => {
            ctx.tasks.spawn("cdc-side-connection", async move {
                let _ = connection.await;
            });
            Ok(client)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// `"name"`, with embedded quotes doubled.
pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'`, with embedded quotes doubled (standard_conforming_strings is always on in
/// supported servers).
pub(super) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}
